//! The extender over HTTP on loopback, as kube-scheduler calls it with `nodeCacheCapable: true`:
//! latency of filter and prioritize for one pod with 2 claims at 100, 1,000 and 5,000 nodes on
//! one keep-alive connection, and requests per second at concurrency 16.
//!
//! Run: `cargo bench --bench extender_http`. Target: p99 under 2 ms at 5,000 nodes.
//! Options (after `--`): `--nodes 100,1000,5000`, `--requests 3000`, `--seconds 5`
//! (`--seconds 0` skips the requests-per-second run), `--keep-best N` (the extender's
//! `--extender-keep-best`, 20 by default as shipped: filter then answers the 20 best).
//!
//! Load mode: `--clients 64 --duration 30` runs, per node count, that many clients for that
//! many seconds instead of the latency run, each on its own keep-alive connection sending
//! filter and then prioritize (as kube-scheduler does for one pod) without pause, and prints
//! errors and p50/p99/max latency per verb. The clients run on their own thread and tokio
//! runtime; the server, in every mode, on a thread and single-threaded runtime of its own
//! (`serve::serve_on_own_thread`), as `stowage extender` and `stowage controller` serve it,
//! large bodies answered on tokio's blocking pool. An error is
//! a failed connection, a status other than 200, or a 200 whose body is not a successful
//! answer (filter: `"Error":""` at the end; prioritize: a JSON array).
//!
//! Churn: `--volumes 50000 --churn 1000` (with load mode) fills the index with that many
//! LocalVolumes and a bound claim for each, and while the clients run a thread of its own
//! changes it `--churn` times a second under the write lock, as the reflectors do during a
//! burst: each claim it makes goes unbound with a selected node (a reservation), gets its
//! LocalVolume, is bound, and is deleted with its volume (5 changes). It prints the changes
//! it managed per second, so a slow index shows as a rate below the one asked for.
//!
//! Hostile mode: `--hostile 4` serves the router as `stowage extender` does (its own thread
//! and single-threaded runtime, `serve::serve_on_own_thread`) over the largest `--nodes`
//! cluster, and measures a small filter request (one pod, one node name) on one keep-alive
//! connection, first alone and then while that many clients, each on its own thread, send
//! bodies at the default body limit without pause (tiny node names by the hundred thousand,
//! managedFields, ephemeral volumes, as many names as a request may have, and bodies over
//! the limit). It prints the small request's p50/p99/max latency in both phases, and this
//! process's VmRSS before the clients start and its VmHWM while they run (the peak is reset
//! through `/proc/self/clear_refs` once the bodies are built). Target: p99 ≤ 10 ms and peak
//! ≤ 2 × idle.
//!
//! The router is the one `stowage extender` serves (`extender_app`, metrics included), on
//! 127.0.0.1 in this process; the client is a minimal HTTP/1.1 client over a tokio
//! `TcpStream`, so its own cost stays small next to the server's.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::io::ErrorKind;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use parking_lot::RwLock;
use serde_json::{Value, json};
use stowage::api::local_volume::{ClaimRef, LocalVolume, LocalVolumeSpec, OnDelete};
use stowage::api::names;
use stowage::api::storage_node::{PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus};
use stowage::cache::ClusterIndex;
use stowage::extender_role::{BodyLimit, KeepBest, extender_app};
use stowage::ledger::FitOptions;
use stowage_testkit::fixtures::{pod, pvc, storage_class};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GI: u64 = 1 << 30;
const CONCURRENCY: usize = 16;

struct Options {
    nodes: Vec<usize>,
    requests: Option<usize>,
    seconds: u64,
    /// Load mode when above 0: concurrent clients.
    clients: usize,
    /// Load mode: seconds the clients run.
    duration: u64,
    /// LocalVolumes in the index, each with a bound claim (0: 4 per node, no claims).
    volumes: usize,
    /// Load mode: index changes per second while the clients run.
    churn: u32,
    /// Hostile mode when above 0: clients sending bodies at the limit.
    hostile: usize,
    /// The extender's `--extender-keep-best`.
    keep_best: usize,
}

fn options() -> Options {
    let mut opts = Options {
        nodes: vec![100, 1_000, 5_000],
        requests: None,
        seconds: 5,
        clients: 0,
        duration: 30,
        volumes: 0,
        churn: 0,
        hostile: 0,
        keep_best: KeepBest::default().nodes,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => {
                let list = args.next().expect("--nodes N,N,...");
                opts.nodes = list
                    .split(',')
                    .map(|n| n.parse().expect("a node count"))
                    .collect();
            }
            "--requests" => {
                opts.requests = Some(args.next().expect("--requests N").parse().unwrap())
            }
            "--seconds" => opts.seconds = args.next().expect("--seconds N").parse().unwrap(),
            "--clients" => opts.clients = args.next().expect("--clients N").parse().unwrap(),
            "--hostile" => opts.hostile = args.next().expect("--hostile N").parse().unwrap(),
            "--duration" => {
                opts.duration = args.next().expect("--duration SECONDS").parse().unwrap()
            }
            "--volumes" => opts.volumes = args.next().expect("--volumes N").parse().unwrap(),
            "--churn" => opts.churn = args.next().expect("--churn RATE").parse().unwrap(),
            "--keep-best" => opts.keep_best = args.next().expect("--keep-best N").parse().unwrap(),
            // `cargo bench` passes `--bench`; filters are not used here.
            _ => {}
        }
    }
    opts
}

/// A cluster of `n` nodes: pool `default` (btrfs, 500Gi-4Ti, 0-95 % allocated) on every node,
/// pool `fast` (hostpath, 200Gi) on every other one, 4 LocalVolumes per node (or `volumes`
/// spread over the nodes, each with its bound claim), every 50th node's agent silent for 5
/// minutes, and the pod's two claims (50Gi and 20Gi, class `local`).
fn cluster(n: usize, volumes: usize, now: Timestamp) -> ClusterIndex {
    let per_node = if volumes == 0 { 4 } else { volumes.div_ceil(n) };
    let mut index = ClusterIndex::new();
    index.apply_storage_class(
        storage_class("local")
            .provisioner(names::PROVISIONER_LOCAL)
            .wait_for_first_consumer()
            .build(),
    );
    let fresh = now.to_string();
    let stale = (now - SignedDuration::from_secs(300)).to_string();
    for i in 0..n {
        let name = node_name(i);
        let capacity = (500 * GI) << (i % 4);
        let allocated = capacity / 100 * ((i as u64 * 37) % 96);
        let mut pools = vec![PoolStatus {
            name: "default".into(),
            driver: "btrfs".into(),
            path: "/var/lib/stowage/default".into(),
            capacity_bytes: capacity,
            allocatable_bytes: capacity - capacity / 20,
            allocated_bytes: allocated,
            available_bytes: capacity - allocated,
            volumes: per_node as u64,
            ready: true,
            ..Default::default()
        }];
        if i % 2 == 0 {
            pools.push(PoolStatus {
                name: "fast".into(),
                driver: "hostpath".into(),
                path: "/mnt/nvme/stowage".into(),
                capacity_bytes: 200 * GI,
                allocatable_bytes: 190 * GI,
                available_bytes: 150 * GI,
                ready: true,
                ..Default::default()
            });
        }
        let mut sn = StorageNode::new(&name, StorageNodeSpec {});
        let mut status = StorageNodeStatus {
            pools,
            heartbeat_time: Some(if i % 50 == 49 {
                stale.clone()
            } else {
                fresh.clone()
            }),
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        };
        status.refresh_totals();
        sn.status = Some(status);
        index.apply_storage_node(sn);
        for v in 0..per_node {
            let uid = format!("{i:05}-{v}");
            let claim = format!("data-{uid}");
            index.apply_local_volume(local_volume(
                &uid,
                &claim,
                &name,
                allocated / per_node as u64,
            ));
            if volumes > 0 {
                let mut pvc: PersistentVolumeClaim = pvc("apps", &claim)
                    .size("1Gi")
                    .class("local")
                    .selected_node(&name)
                    .volume_name(&format!("pvc-{uid}"))
                    .phase("Bound")
                    .build();
                pvc.metadata.uid = Some(uid);
                index.apply_claim(pvc);
            }
        }
    }
    for (claim, size) in [("data-db-0", "50Gi"), ("wal-db-0", "20Gi")] {
        let claim: PersistentVolumeClaim = pvc("bench", claim).size(size).class("local").build();
        index.apply_claim(claim);
    }
    index
}

fn local_volume(uid: &str, claim: &str, node: &str, size: u64) -> LocalVolume {
    LocalVolume::new(
        &format!("pvc-{uid}"),
        LocalVolumeSpec {
            node_name: node.to_string(),
            pool: "default".into(),
            size_bytes: size,
            claim: ClaimRef {
                namespace: "apps".into(),
                name: claim.to_string(),
                uid: uid.to_string(),
            },
            on_delete: OnDelete::Delete,
        },
    )
}

/// Changes `index` `rate` times a second until `stop`, each under the write lock: claims
/// made, given a selected node, their LocalVolume, bound, and deleted with the volume. The
/// changes made and the seconds taken.
fn churn(
    index: Arc<RwLock<ClusterIndex>>,
    n: usize,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> (u64, f64) {
    let started = Instant::now();
    let mut done: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = started + Duration::from_secs_f64(done as f64 / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let cycle = done / 5;
        let uid = format!("churn-{cycle:010}");
        let claim = format!("churn-{cycle}");
        let node = node_name((cycle as usize * 7_919) % n);
        let unbound = || {
            let mut pvc: PersistentVolumeClaim = pvc("churn", &claim)
                .size("10Gi")
                .class("local")
                .selected_node(&node)
                .build();
            pvc.metadata.uid = Some(uid.clone());
            pvc
        };
        let mut index = index.write();
        match done % 5 {
            0 => index.apply_claim(unbound()),
            1 => index.apply_local_volume(local_volume(&uid, &claim, &node, 10 * GI)),
            2 => {
                let mut bound = unbound();
                bound.spec.as_mut().unwrap().volume_name = Some(format!("pvc-{uid}"));
                index.apply_claim(bound);
            }
            3 => index.delete_claim("churn", &claim),
            _ => index.delete_local_volume(&format!("pvc-{uid}")),
        }
        drop(index);
        done += 1;
    }
    (done, started.elapsed().as_secs_f64())
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// The pod as kube-scheduler encodes it: from the informer cache, so without `apiVersion`
/// and `kind`.
fn pod_json() -> Value {
    let pod: Pod = pod("bench", "db-0")
        .claims(["data-db-0", "wal-db-0"])
        .build();
    let mut value = serde_json::to_value(pod).unwrap();
    let object = value.as_object_mut().unwrap();
    object.remove("apiVersion");
    object.remove("kind");
    value
}

/// `POST path` exactly as Go's net/http writes it for the scheduler's extender client.
fn request(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\
         Content-Length: {}\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(1 << 20),
        }
    }

    /// Sends `request` and reads the whole response; the status and the body.
    async fn call(&mut self, request: &[u8]) -> (u16, &[u8]) {
        let (status, body) = self.try_call(request).await.unwrap();
        (status, &self.buf[body])
    }

    /// [`Conn::call`] that reports I/O errors and malformed answers instead of panicking:
    /// the status and where the body is in `self.buf`.
    async fn try_call(&mut self, request: &[u8]) -> std::io::Result<(u16, Range<usize>)> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let (head_end, length) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let length = content_length(&self.buf[..end]).ok_or_else(|| {
                    std::io::Error::new(ErrorKind::InvalidData, "no Content-Length")
                })?;
                break (end + 4, length);
            }
            self.read_more().await?;
        };
        while self.buf.len() < head_end + length {
            self.read_more().await?;
        }
        let status = self
            .buf
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "no status line"))?;
        Ok((status, head_end..head_end + length))
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        let read = self.stream.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + read);
        if read == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(head).ok()?.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
    /// CPU time of the whole process (server and client, every thread) per request: unlike
    /// the wall-clock figures, it does not grow while the request waits for a busy CPU.
    cpu: Duration,
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (clock ticks,
/// 100 per second on Linux), or `None` where that file does not exist.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

async fn latency(addr: std::net::SocketAddr, request: &[u8], count: usize) -> Latency {
    let mut conn = Conn::open(addr).await;
    for _ in 0..count / 10 {
        assert_eq!(conn.call(request).await.0, 200);
    }
    let mut samples = Vec::with_capacity(count);
    let cpu_before = process_cpu().unwrap_or_default();
    for _ in 0..count {
        let started = Instant::now();
        let (status, _) = conn.call(request).await;
        samples.push(started.elapsed());
        assert_eq!(status, 200);
    }
    let cpu = process_cpu().unwrap_or_default().saturating_sub(cpu_before);
    samples.sort();
    Latency {
        cpu: cpu / u32::try_from(count).unwrap(),
        p50: samples[count / 2],
        p99: samples[count * 99 / 100],
        max: samples[count - 1],
        mean: samples.iter().sum::<Duration>() / u32::try_from(count).unwrap(),
    }
}

async fn throughput(addr: std::net::SocketAddr, request: Arc<Vec<u8>>, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (request, done) = (request.clone(), done.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                while Instant::now() < deadline {
                    assert_eq!(conn.call(&request).await.0, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// What the load clients saw of one verb.
#[derive(Default)]
struct VerbLoad {
    samples: Vec<Duration>,
    errors: u64,
}

impl VerbLoad {
    fn merge(&mut self, other: VerbLoad) {
        self.samples.extend(other.samples);
        self.errors += other.errors;
    }
}

/// Whether a 200's body is a successful answer of `verb`.
fn answer_ok(verb: usize, body: &[u8]) -> bool {
    if verb == 0 {
        body.ends_with(br#""Error":""}"#)
    } else {
        body.starts_with(b"[") && body.ends_with(b"]")
    }
}

/// `clients` connections sending filter then prioritize until `duration` has passed; per
/// verb, the latencies of the answered requests and the errors.
async fn load_clients(
    addr: std::net::SocketAddr,
    requests: Arc<[Vec<u8>; 2]>,
    clients: usize,
    duration: Duration,
) -> [VerbLoad; 2] {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut seen: [VerbLoad; 2] = Default::default();
                let mut conn: Option<Conn> = None;
                while Instant::now() < deadline {
                    for (verb, request) in requests.iter().enumerate() {
                        let c = match &mut conn {
                            Some(c) => c,
                            None => match TcpStream::connect(addr).await {
                                Ok(stream) => {
                                    let _ = stream.set_nodelay(true);
                                    conn.insert(Conn {
                                        stream,
                                        buf: Vec::with_capacity(1 << 20),
                                    })
                                }
                                Err(_) => {
                                    seen[verb].errors += 1;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        let started = Instant::now();
                        match c.try_call(request).await {
                            Ok((200, body)) if answer_ok(verb, &c.buf[body.clone()]) => {
                                seen[verb].samples.push(started.elapsed());
                            }
                            Ok(_) => seen[verb].errors += 1,
                            Err(_) => {
                                seen[verb].errors += 1;
                                conn = None;
                            }
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut total: [VerbLoad; 2] = Default::default();
    for task in tasks {
        let [filter, prioritize] = task.await.unwrap();
        total[0].merge(filter);
        total[1].merge(prioritize);
    }
    total
}

/// Load mode for one cluster size: prints one row per verb.
async fn load(
    addr: std::net::SocketAddr,
    n: usize,
    requests: [(Vec<u8>, usize); 2],
    clients: usize,
    duration: u64,
) {
    let candidates = [requests[0].1, requests[1].1];
    let sizes = [requests[0].0.len(), requests[1].0.len()];
    let bodies = Arc::new([requests[0].0.clone(), requests[1].0.clone()]);
    let cpu_before = process_cpu().unwrap_or_default();
    let started = Instant::now();
    // The clients get their own thread and runtime, so the server keeps its 2 workers.
    let client_thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(load_clients(
                addr,
                bodies,
                clients,
                Duration::from_secs(duration),
            ))
    });
    let results = tokio::task::spawn_blocking(move || client_thread.join().unwrap())
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu().unwrap_or_default().saturating_sub(cpu_before);
    let answered: usize = results.iter().map(|r| r.samples.len()).sum();
    for (verb, mut seen) in results.into_iter().enumerate() {
        seen.samples.sort();
        let count = seen.samples.len();
        let pct = |p: usize| {
            seen.samples
                .get((count * p / 100).min(count.saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "| {n} | {} | {} | {} KiB | {clients} | {duration} | {count} | {:.0} | **{}** | {} | {} | **{}** | {} |",
            ["filter", "prioritize"][verb],
            candidates[verb],
            sizes[verb] / 1024,
            count as f64 / elapsed,
            seen.errors,
            ms(pct(50)),
            ms(pct(99)),
            ms(seen.samples.last().copied().unwrap_or_default()),
            ms(cpu / u32::try_from(answered.max(1)).unwrap()),
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn self_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap()
}

/// Bodies of `size` bytes that cost a decoder the most: (verb path, body).
fn hostile_bodies(size: usize) -> Vec<(&'static str, Arc<Vec<u8>>)> {
    let pod = pod_json().to_string();
    let fill = |prefix: String, suffix: &str, item: &dyn Fn(usize) -> String| {
        let mut out = prefix.into_bytes();
        let mut i = 0;
        while out.len() + suffix.len() < size {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item(i).as_bytes());
            i += 1;
        }
        out.extend_from_slice(suffix.as_bytes());
        Arc::new(out)
    };
    let names = fill(format!(r#"{{"Pod": {pod}, "NodeNames": ["#), "]}", &|i| {
        format!(r#""{i:x}""#)
    });
    let managed = fill(
        r#"{"NodeNames": ["node-00001"], "Pod": {"metadata": {"name": "x", "managedFields": ["#
            .to_string(),
        "]}}}",
        &|i| {
            format!(r#"{{"manager": "m{i}", "fieldsV1": {{"f:a": {{}}, "f:b": {{"k:x": {{}}}}}}}}"#)
        },
    );
    let volumes = fill(
        r#"{"NodeNames": ["node-00001"], "Pod": {"metadata": {"name": "x"}, "spec": {"volumes": ["#
            .to_string(),
        "]}}}",
        &|_| r#"{"name":"v","ephemeral":{}}"#.to_string(),
    );
    let at_cap: Vec<String> = (0..stowage_extender::MAX_CANDIDATES)
        .map(|i| format!("{i:x}"))
        .collect();
    let at_cap = Arc::new(
        json!({"Pod": pod_json(), "NodeNames": at_cap})
            .to_string()
            .into_bytes(),
    );
    let mut over = names.as_ref().clone();
    over.resize(size * 2, b' ');
    vec![
        ("/filter", names.clone()),
        ("/prioritize", names),
        ("/filter", managed),
        ("/filter", volumes),
        ("/filter", at_cap.clone()),
        ("/prioritize", at_cap),
        ("/filter", Arc::new(over)),
    ]
}

/// The extender's router over `index`, served on 127.0.0.1 as stowage serves it (a thread
/// and single-threaded runtime of its own): its address, the switch that stops it, and its
/// task.
async fn serve(
    index: Arc<RwLock<ClusterIndex>>,
    keep_best: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let registry = prometheus::Registry::new();
    let app = extender_app(
        index,
        FitOptions::default(),
        "",
        BodyLimit::default(),
        KeepBest { nodes: keep_best },
        &registry,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = stowage::serve::serve_on_own_thread("http", listener, app, stopped).unwrap();
    (addr, stop, server)
}

/// Hostile mode (see the module documentation).
async fn hostile(opts: Options) {
    let n = opts.nodes.last().copied().unwrap_or(5_000);
    let now = Timestamp::now();
    let index = Arc::new(RwLock::new(cluster(n, opts.volumes, now)));
    let (addr, stop, server) = serve(index, opts.keep_best).await;

    let bodies = Arc::new(hostile_bodies(stowage_extender::DEFAULT_BODY_LIMIT - 4096));
    let small = request(
        "/filter",
        &json!({"Pod": pod_json(), "Nodes": null, "NodeNames": ["node-00001"]}),
    );
    let count = opts.requests.unwrap_or(2_000);
    let alone = latency(addr, &small, count).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = self_kib("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").unwrap();

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..opts.hostile)
        .map(|c| {
            let (bodies, running, sent) = (bodies.clone(), running.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut i = c;
                while running.load(Ordering::Relaxed) {
                    let (path, body) = &bodies[i % bodies.len()];
                    stowage_testkit::net::post_status(
                        addr.port(),
                        path,
                        body.clone(),
                        Duration::from_secs(60),
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attacked = latency(addr, &small, count).await;
    running.store(false, Ordering::Relaxed);
    let clients_done = tokio::task::spawn_blocking(move || {
        for client in clients {
            client.join().unwrap();
        }
    });
    clients_done.await.unwrap();
    let peak = self_kib("VmHWM");
    stop.send_replace(true);
    server.await.unwrap().unwrap();

    println!(
        "| nodes | hostile clients | hostile bodies | small p50 ms | small p99 ms | small max ms | idle VmRSS MiB | peak VmHWM MiB | peak / idle |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (clients, lat, bodies) in [
        (0, &alone, 0),
        (opts.hostile, &attacked, sent.load(Ordering::Relaxed)),
    ] {
        let rss = if clients == 0 {
            "| | |".to_string()
        } else {
            format!(
                "| {:.1} | {:.1} | {:.2} |",
                idle as f64 / 1024.0,
                peak as f64 / 1024.0,
                peak as f64 / idle as f64
            )
        };
        println!(
            "| {n} | {clients} | {bodies} | {} | **{}** | {} {rss}",
            ms(lat.p50),
            ms(lat.p99),
            ms(lat.max),
        );
    }
}

async fn run(opts: Options) {
    if opts.hostile > 0 {
        hostile(opts).await;
        return;
    }
    if opts.clients > 0 {
        println!(
            "| nodes | verb | candidates | body | clients | s | answered | req/s | errors | p50 ms | p99 ms | max ms | CPU ms/req |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        println!(
            "| nodes | verb | candidates | body | p50 ms | p99 ms | mean ms | CPU ms/req | req/s at {CONCURRENCY} |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for &n in &opts.nodes {
        let now = Timestamp::now();
        let index = Arc::new(RwLock::new(cluster(n, opts.volumes, now)));
        let (addr, stop, _server) = serve(index.clone(), opts.keep_best).await;

        let names: Vec<String> = (0..n).map(node_name).collect();
        let filter = request(
            "/filter",
            &json!({"Pod": pod_json(), "Nodes": null, "NodeNames": names}),
        );
        // The scheduler asks prioritize about the nodes that passed filter.
        let mut conn = Conn::open(addr).await;
        let (status, body) = conn.call(&filter).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
        let result: Value = serde_json::from_slice(body).unwrap();
        let passed = result["NodeNames"].as_array().unwrap().clone();
        let failed = result["FailedAndUnresolvableNodes"]
            .as_object()
            .unwrap()
            .len();
        assert!(
            !passed.is_empty() && failed > 0,
            "{n} nodes: a mix must fail and pass"
        );
        let prioritize = request(
            "/prioritize",
            &json!({"Pod": pod_json(), "Nodes": null, "NodeNames": passed}),
        );
        let (status, body) = conn.call(&prioritize).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));

        if opts.clients > 0 {
            let stop_churn = Arc::new(AtomicBool::new(false));
            let churner = (opts.churn > 0).then(|| {
                let (index, stop, rate) = (index.clone(), stop_churn.clone(), opts.churn);
                std::thread::spawn(move || churn(index, n, rate, stop))
            });
            load(
                addr,
                n,
                [(filter, n), (prioritize, passed.len())],
                opts.clients,
                opts.duration,
            )
            .await;
            stop_churn.store(true, Ordering::Relaxed);
            if let Some(churner) = churner {
                let (changes, seconds) = churner.join().unwrap();
                println!(
                    "churn: {changes} changes in {seconds:.1} s = {:.0}/s (asked {}), {} volumes",
                    changes as f64 / seconds,
                    opts.churn,
                    opts.volumes,
                );
            }
            let _ = stop.send(true);
            continue;
        }
        let count = opts.requests.unwrap_or(match n {
            0..=1_000 => 3_000,
            _ => 2_000,
        });
        for (verb, request, candidates) in [
            ("filter", filter, n),
            ("prioritize", prioritize, passed.len()),
        ] {
            let lat = latency(addr, &request, count).await;
            let rps = if opts.seconds > 0 {
                throughput(addr, Arc::new(request.clone()), opts.seconds).await
            } else {
                0.0
            };
            println!(
                "| {n} | {verb} | {candidates} | {} KiB | {} | {} | {} | {} | {rps:.0} |",
                request.len() / 1024,
                ms(lat.p50),
                ms(lat.p99),
                ms(lat.mean),
                ms(lat.cpu)
            );
        }
        let _ = stop.send(true);
    }
}

fn main() {
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(opts));
}
