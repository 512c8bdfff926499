//! Watch streams: newline-delimited `WatchEvent`s, resumable from any resourceVersion still in
//! the history, with bookmarks, timeouts, selector transitions and fault-driven early closes.

use std::{collections::VecDeque, io, sync::Arc, time::Duration};

use axum::body::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::{
    sync::broadcast::{self, error::TryRecvError},
    time::Instant,
};

use super::{
    Shared,
    kinds::Endpoint,
    ops::to_served,
    selectors::Selectors,
    status::ApiError,
    store::{Change, ChangeType},
};

/// How objects are represented on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repr {
    Full,
    /// `PartialObjectMetadata` (kube-rs `metadata_watcher`, `list_metadata`).
    Metadata,
}

/// Turns a served object into the requested representation.
pub(crate) fn represent(obj: Value, repr: Repr) -> Value {
    match repr {
        Repr::Full => obj,
        Repr::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    }
}

/// One line of a watch stream: `{"type":…,"object":…}` and a newline, around an object
/// already encoded as JSON.
fn line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A parsed watch request.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub ep: Endpoint,
    pub ns: Option<String>,
    pub selectors: Selectors,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub repr: Repr,
}

impl WatchRequest {
    fn line(&self, event_type: &str, object: Value) -> Bytes {
        line(event_type, &serde_json::to_vec(&object).unwrap_or_default())
    }

    /// The event (if any) this watcher sees for a change, honouring selector transitions:
    /// an object that starts matching is ADDED, one that stops matching is DELETED.
    fn render(&self, change: &Change) -> Option<Bytes> {
        if change.storage != self.ep.storage
            || self.ns.as_ref().is_some_and(|ns| *ns != change.key.0)
        {
            return None;
        }
        let now = self.selectors.matches(&change.object);
        let before = change
            .prev
            .as_ref()
            .is_some_and(|p| self.selectors.matches(p));
        let event_type = match change.kind {
            ChangeType::Added => now.then_some("ADDED"),
            ChangeType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
            ChangeType::Deleted => now.then_some("DELETED"),
        }?;
        let object = change.served(&self.ep.api_version(), self.repr, |object| {
            serde_json::to_vec(&represent(to_served(&self.ep, object), self.repr))
                .unwrap_or_default()
        });
        Some(line(event_type, &object))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.line(
            "BOOKMARK",
            json!({"kind": self.ep.kind, "apiVersion": self.ep.api_version(), "metadata": meta}),
        )
    }
}

/// When a watch that asked for bookmarks gets its next one, as kube-apiserver's
/// `cacheWatcher.nextBookmarkTime` schedules them: `every` after `now`, or 2 s before the
/// watch's timeout if that is sooner; none once that moment has passed.
fn bookmark_due(now: Instant, every: Duration, timeout_at: Instant) -> Option<Instant> {
    let before_timeout = timeout_at.checked_sub(Duration::from_secs(2))?;
    let next = (now + every).min(before_timeout);
    (next > now).then_some(next)
}

struct Watcher {
    shared: Arc<Shared>,
    req: WatchRequest,
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// The watch's starting point: only changes after it are sent, and bookmarks only once
    /// something newer has been committed (kube-apiserver's cacheWatcher drops events, and
    /// bookmarks, at or below the resourceVersion it started from; a watch from a version
    /// the server has not reached yet just waits for it, checked on 1.19.16).
    start_rv: u64,
    last_rv: u64,
    deadline: Instant,
    /// Whether the deadline is a fault (counted) rather than `timeoutSeconds`.
    deadline_is_fault: bool,
    /// When `timeoutSeconds` ends the watch (the pre-timeout bookmark is due 2 s before).
    timeout_at: Instant,
    next_bookmark: Option<Instant>,
    close: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
}

impl Watcher {
    fn push_change(&mut self, change: &Change) {
        self.last_rv = self.last_rv.max(change.rv);
        if change.rv <= self.start_rv {
            return;
        }
        if let Some(line) = self.req.render(change) {
            self.pending.push_back(line);
        }
    }

    async fn step(&mut self) {
        enum Next {
            Stop(bool),
            Change(Result<Arc<Change>, broadcast::error::RecvError>),
            Bookmark,
        }
        let Self {
            next_bookmark,
            close,
            shutdown,
            rx,
            deadline,
            deadline_is_fault,
            ..
        } = self;
        let bookmark_tick = async {
            match next_bookmark {
                Some(at) => tokio::time::sleep_until(*at).await,
                None => std::future::pending::<()>().await,
            }
        };
        let next = tokio::select! {
            _ = close.changed() => Next::Stop(true),
            _ = shutdown.changed() => Next::Stop(false),
            _ = tokio::time::sleep_until(*deadline) => Next::Stop(*deadline_is_fault),
            r = rx.recv() => Next::Change(r),
            _ = bookmark_tick => Next::Bookmark,
        };
        match next {
            Next::Stop(fault) => {
                if fault {
                    self.shared.faults.note_closed_watch();
                }
                self.done = true;
            }
            Next::Change(Ok(c)) => self.push_change(&c),
            // Lagging this far behind: the real server would drop the watcher too; the
            // client resumes from its last resourceVersion.
            Next::Change(Err(_)) => self.done = true,
            Next::Bookmark => {
                // Everything committed so far must be sent before a bookmark that claims it.
                loop {
                    match self.rx.try_recv() {
                        Ok(c) => self.push_change(&c),
                        Err(TryRecvError::Empty) => break,
                        Err(_) => {
                            self.done = true;
                            return;
                        }
                    }
                }
                if self.last_rv > self.start_rv {
                    let line = self.req.bookmark(self.last_rv, false);
                    self.pending.push_back(line);
                }
                self.next_bookmark = bookmark_due(
                    Instant::now(),
                    self.shared.bookmark_interval,
                    self.timeout_at,
                );
            }
        }
    }
}

/// Starts a watch: computes the initial events under the lock and subscribes before it is
/// released, so no change falls between the two.
pub(crate) fn start(
    shared: Arc<Shared>,
    req: WatchRequest,
) -> Result<impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static, ApiError> {
    let mut pending = VecDeque::new();
    let (rx, last_rv, start_rv) = {
        let state = shared.lock();
        let current = state.store.rv();
        let rv = req.resource_version.as_deref().filter(|s| !s.is_empty());
        let initial = rv.is_none() || rv == Some("0") || req.send_initial_events;
        let mut start_rv = current;
        if initial {
            let items = state.store.list(&req.ep.storage, req.ns.as_deref());
            for (_, obj) in items.into_iter().filter(|(_, o)| req.selectors.matches(o)) {
                pending.push_back(req.line("ADDED", represent(to_served(&req.ep, obj), req.repr)));
            }
            if req.send_initial_events {
                pending.push_back(req.bookmark(current, true));
            }
        } else if let Some(rv) = rv {
            let rv: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            start_rv = start_rv.max(rv);
            match state.store.changes_since(rv) {
                Some(changes) => {
                    for c in changes {
                        if let Some(line) = req.render(&c) {
                            pending.push_back(line);
                        }
                    }
                }
                None => {
                    let gone = ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        state.store.floor() + 1
                    ));
                    let line = req.line("ERROR", gone.to_status());
                    return Ok(futures::future::Either::Left(futures::stream::iter([Ok(
                        line,
                    )])));
                }
            }
        }
        (state.store.subscribe(), current, start_rv)
    };
    let now = Instant::now();
    let timeout_at = now + req.timeout;
    let mut deadline = timeout_at;
    let mut deadline_is_fault = false;
    if let Some(every) = shared.faults.close_every()
        && now + every < deadline
    {
        deadline = now + every;
        deadline_is_fault = true;
    }
    let next_bookmark = req
        .bookmarks
        .then(|| bookmark_due(now, shared.bookmark_interval, timeout_at))
        .flatten();
    let watcher = Watcher {
        close: shared.faults.close_signal(),
        shutdown: shared.shutdown.clone(),
        shared,
        req,
        pending,
        rx,
        start_rv,
        last_rv,
        deadline,
        deadline_is_fault,
        timeout_at,
        next_bookmark,
        done: false,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        loop {
            if let Some(line) = w.pending.pop_front() {
                return Some((Ok(line), w));
            }
            if w.done {
                return None;
            }
            w.step().await;
        }
    });
    Ok(futures::future::Either::Right(stream))
}
