//! The controller's work queue: the part of kube-runtime's `Controller` stowage uses,
//! over keys instead of cached objects.
//!
//! kube-runtime's `Controller` keeps a reflector store of whole objects per reconciler and
//! hands each reconcile an `Arc` of one. stowage's objects live in the [`ClusterIndex`]'s
//! compact rows instead (see `cache::rows`), so the queue only holds keys; a reconcile reads
//! its object from the index when it runs. The guarantees are the ones `Controller` gives:
//!
//! * a key is queued at most once however often it is added (changes coalesce);
//! * a key is never reconciled twice at the same time: added while running, it runs again
//!   right after;
//! * `requeue(d)` runs it again after `d` unless something adds it sooner; the earliest
//!   wake-up wins;
//! * at most `workers` reconciles run at once;
//! * [`Queue::run`] stops taking work when `stop` turns true and returns once the
//!   reconciles already running have finished.
//!
//! [`ClusterIndex`]: crate::cache::ClusterIndex

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Capacity kept by a drained queue; beyond it, memory is given back.
const SHRINK_ABOVE: usize = 1024;

/// What a reconcile asks of the queue when it is done (named apart from kube's `Action`,
/// which the agent's reconciler returns to kube's `Controller`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    requeue_after: Option<Duration>,
}

impl Next {
    /// Run again after `duration` (sooner if the object changes).
    pub fn requeue(duration: Duration) -> Self {
        Self {
            requeue_after: Some(duration),
        }
    }

    /// Run again only when the object (or one that maps to it) changes.
    pub fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// The requeue delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// A deduplicating, delaying work queue of keys `K`.
#[derive(Debug)]
pub struct Queue<K> {
    state: Mutex<State<K>>,
    /// Wakes a worker: a key became ready, or the queue stops.
    work: Notify,
    /// Wakes the timer task: a new earliest deadline.
    timer: Notify,
}

#[derive(Debug)]
struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`.
    queued: HashSet<K>,
    running: HashSet<K>,
    /// Keys added while running: they go back to `ready` when their reconcile ends.
    again: HashSet<K>,
    /// Deadline → keys; and each delayed key's deadline.
    timers: BTreeMap<(Instant, u64), K>,
    deadline: HashMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K> Default for State<K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            running: HashSet::new(),
            again: HashSet::new(),
            timers: BTreeMap::new(),
            deadline: HashMap::new(),
            seq: 0,
        }
    }
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            work: Notify::new(),
            timer: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Queue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State<K>> {
        self.state.lock()
    }

    /// Queues `key` now (a pending delay is dropped: it runs now instead).
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if let Some(at) = state.deadline.remove(&key) {
            state.timers.remove(&at);
        }
        if state.running.contains(&key) {
            state.again.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
            drop(state);
            self.work.notify_one();
        }
    }

    /// Queues `key` after `delay`, unless it is queued already or due sooner.
    pub fn add_after(&self, key: K, delay: Duration) {
        let at = Instant::now() + delay;
        let mut state = self.lock();
        if state.queued.contains(&key) || state.again.contains(&key) {
            return;
        }
        if let Some(&(current, seq)) = state.deadline.get(&key) {
            if current <= at {
                return;
            }
            state.timers.remove(&(current, seq));
        }
        state.seq += 1;
        let slot = (at, state.seq);
        state.timers.insert(slot, key.clone());
        state.deadline.insert(key, slot);
        let earliest = state.timers.keys().next() == Some(&slot);
        drop(state);
        if earliest {
            self.timer.notify_one();
        }
    }

    /// Keys queued, running or delayed (for tests and metrics).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.queued.len() + state.running.len() + state.deadline.len()
    }

    /// Keys queued and not yet running.
    pub fn waiting(&self) -> usize {
        self.lock().ready.len()
    }

    /// Keys being reconciled now.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// Whether nothing is queued, running or delayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next ready key, now marked running.
    fn take(&self) -> Option<K> {
        let mut state = self.lock();
        let Some(key) = state.ready.pop_front() else {
            // Drained: give back what a burst (every object, at start or on becoming
            // leader) grew the queue to.
            if state.ready.capacity() > SHRINK_ABOVE {
                state.ready.shrink_to(SHRINK_ABOVE);
                state.queued.shrink_to(SHRINK_ABOVE);
            }
            return None;
        };
        state.queued.remove(&key);
        state.running.insert(key.clone());
        Some(key)
    }

    /// Marks `key`'s reconcile done and applies `action`.
    fn done(&self, key: K, action: Next) {
        let rerun = {
            let mut state = self.lock();
            state.running.remove(&key);
            state.again.remove(&key)
        };
        if rerun {
            self.add(key);
        } else if let Some(delay) = action.requeue_after {
            self.add_after(key, delay);
        }
    }

    /// Moves every key whose deadline has passed to `ready`; returns the next deadline.
    fn fire_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut state = self.lock();
            while let Some((&slot, _)) = state.timers.first_key_value() {
                if slot.0 > now {
                    break;
                }
                if let Some(key) = state.timers.remove(&slot) {
                    state.deadline.remove(&key);
                    due.push(key);
                }
            }
            if state.deadline.capacity() > SHRINK_ABOVE && state.deadline.len() < SHRINK_ABOVE {
                state.deadline.shrink_to(SHRINK_ABOVE);
            }
            state.timers.keys().next().map(|(at, _)| *at)
        };
        for key in due {
            self.add(key);
        }
        next
    }

    /// Runs `reconcile` on queued keys with up to `workers` at once until `stop` turns true
    /// (never, if its sender is dropped first), then waits for the reconciles running.
    pub async fn run<F, Fut>(
        self: Arc<Self>,
        workers: usize,
        stop: watch::Receiver<bool>,
        reconcile: F,
    ) where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Next> + Send,
    {
        let reconcile = Arc::new(reconcile);
        let timer = {
            let queue = self.clone();
            async move {
                loop {
                    let notified = queue.timer.notified();
                    match queue.fire_due() {
                        Some(at) => {
                            tokio::select! {
                                () = tokio::time::sleep_until(at) => {}
                                () = notified => {}
                            }
                        }
                        None => notified.await,
                    }
                }
            }
        };
        let workers = (0..workers.max(1)).map(|_| {
            let queue = self.clone();
            let reconcile = reconcile.clone();
            let mut stop = stop.clone();
            async move {
                // A dropped sender never stops the queue.
                let mut stoppable = true;
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    let notified = queue.work.notified();
                    if let Some(key) = queue.take() {
                        let action = reconcile(key.clone()).await;
                        queue.done(key, action);
                        continue;
                    }
                    if stoppable {
                        tokio::select! {
                            () = notified => {}
                            changed = stop.changed() => stoppable = changed.is_ok(),
                        }
                    } else {
                        notified.await;
                    }
                }
            }
        });
        let all = futures::future::join_all(workers);
        tokio::select! {
            _ = all => {}
            () = timer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Log = Arc<Mutex<Vec<(u32, &'static str)>>>;

    fn start(
        queue: &Arc<Queue<u32>>,
        workers: usize,
        log: &Log,
        busy: Duration,
        action: Next,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop) = watch::channel(false);
        let log = log.clone();
        let task = tokio::spawn(queue.clone().run(workers, stop, move |k| {
            let log = log.clone();
            async move {
                log.lock().push((k, "start"));
                tokio::time::sleep(busy).await;
                log.lock().push((k, "end"));
                action
            }
        }));
        (stop_tx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_many_times_runs_once() {
        let queue = Arc::new(Queue::new());
        for _ in 0..10 {
            queue.add(7);
        }
        queue.add(8);
        let log = Log::default();
        let (stop, task) = start(
            &queue,
            4,
            &log,
            Duration::from_millis(10),
            Next::await_change(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let starts: Vec<u32> = log
            .lock()
            .iter()
            .filter(|e| e.1 == "start")
            .map(|e| e.0)
            .collect();
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert!(starts.contains(&7) && starts.contains(&8));
        assert!(queue.is_empty());
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_running_runs_again_after_not_beside() {
        let queue = Arc::new(Queue::new());
        let log = Log::default();
        let (stop, task) = start(
            &queue,
            4,
            &log,
            Duration::from_millis(100),
            Next::await_change(),
        );
        queue.add(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        queue.add(1);
        queue.add(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = log.lock().clone();
        assert_eq!(
            events,
            vec![(1, "start"), (1, "end"), (1, "start"), (1, "end")]
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_runs_again_after_the_delay_and_the_earliest_wins() {
        let queue = Arc::new(Queue::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let counter = runs.clone();
        let task = tokio::spawn(queue.clone().run(2, stop, move |_k: u32| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Next::requeue(Duration::from_secs(10))
            }
        }));
        queue.add(5);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A later deadline does not push the pending one back; an earlier one pulls it in.
        queue.add_after(5, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        queue.add_after(5, Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // And `add` runs it now, dropping the delay.
        queue.add(5);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_workers_run_at_once() {
        let queue = Arc::new(Queue::new());
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let (n, p) = (now.clone(), peak.clone());
        let task = tokio::spawn(queue.clone().run(3, stop, move |_k: u32| {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Next::await_change()
            }
        }));
        for k in 0..30 {
            queue.add(k);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert!(queue.is_empty());
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stop_lets_running_reconciles_finish_and_starts_nothing_new() {
        let queue = Arc::new(Queue::new());
        let log = Log::default();
        let (stop, task) = start(
            &queue,
            1,
            &log,
            Duration::from_millis(100),
            Next::await_change(),
        );
        queue.add(1);
        queue.add(2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let events = log.lock().clone();
        assert_eq!(events, vec![(1, "start"), (1, "end")]);
    }
}
