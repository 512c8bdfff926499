//! Ports and plain HTTP for tests that run the real `stowage` binary.
//!
//! A role process is told which port to listen on (`--listen 127.0.0.1:PORT`), so the port
//! has to be chosen before the process starts. Binding port 0 and closing the socket again
//! is racy: the kernel may hand the same port to the next caller, in this process or in
//! another test process running beside it, and the second role then fails with "Address
//! already in use". [`free_port`] instead reserves a port:
//!
//! ```text
//!   candidate in 20000..32000 (below Linux's ephemeral range 32768.., so no outgoing
//!   connection of any process is given it meanwhile)
//!     └─ lock <tmp>/stowage-test-ports/<port>.lock without waiting   held by another
//!          │                                                          test process → next
//!          └─ bind 127.0.0.1:<port> succeeds                         in use → next
//!               └─ the lock is kept until this process exits: no other test process
//!                  takes the port, and this process never hands it out twice
//! ```

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// Ports reserved by this process, with the lock file of each (held until exit).
fn reserved() -> &'static Mutex<(HashSet<u16>, Vec<File>)> {
    static RESERVED: OnceLock<Mutex<(HashSet<u16>, Vec<File>)>> = OnceLock::new();
    RESERVED.get_or_init(|| Mutex::new((HashSet::new(), Vec::new())))
}

const FIRST: u16 = 20_000;
const END: u16 = 32_000;

/// A TCP port on 127.0.0.1 that nothing listens on and that no other caller of
/// `free_port`, in this process or another, is given while this process lives.
///
/// # Panics
/// When no port in 20000..32000 can be reserved, or the lock directory cannot be made:
/// a test cannot run without one.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("stowage-test-ports");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating the port lock directory {}: {e}", dir.display()));
    let mut guard = reserved().lock().unwrap_or_else(|e| e.into_inner());
    let start = fastrand::u16(FIRST..END);
    for offset in 0..(END - FIRST) {
        let port = FIRST + (start - FIRST + offset) % (END - FIRST);
        if guard.0.contains(&port) {
            continue;
        }
        let Ok(file) = File::create(dir.join(format!("{port}.lock"))) else {
            continue;
        };
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        guard.0.insert(port);
        guard.1.push(file);
        return port;
    }
    panic!("no free TCP port in {FIRST}..{END} on 127.0.0.1");
}

/// `GET path` on 127.0.0.1:port over a fresh connection: the status code and the body
/// (de-chunked), or `None` if nothing answers within 5 s or the answer is not HTTP.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((code, body))
}

/// `POST path` of `body` (JSON) to 127.0.0.1:port over a fresh connection that the client
/// closes, the body sent from a thread of its own while the answer is read (a server may
/// answer 413 before it reads the body); the status, or `None` when the connection failed or
/// nothing answered within `timeout`. Only the status line is kept, so a hostile body's
/// answer costs the caller nothing (benchmarks measure the server's memory, not theirs).
pub fn post_status(
    port: u16,
    path: &str,
    body: std::sync::Arc<Vec<u8>>,
    timeout: Duration,
) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut writer = stream.try_clone().ok()?;
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    // "HTTP/1.1 200": the first 12 bytes; the rest is read and dropped.
    let mut status = [0u8; 12];
    let mut got = 0;
    let mut buf = [0u8; 16 * 1024];
    while let Ok(read) = stream.read(&mut buf) {
        if read == 0 {
            break;
        }
        let take = read.min(status.len() - got);
        status[got..got + take].copy_from_slice(&buf[..take]);
        got += take;
    }
    let _ = sender.join();
    std::str::from_utf8(status.get(9..12)?).ok()?.parse().ok()
}

/// [`http_get`] from async code (on a blocking thread).
pub async fn get(port: u16, path: impl Into<String>) -> Option<(u16, String)> {
    let path = path.into();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .ok()
        .flatten()
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Requests and seconds per verb (`filter`, `prioritize`) of the extender histogram
/// (`stowage_extender_request_duration_seconds`) that the process on `port` serves at
/// `/metrics`; empty if it does not answer.
pub async fn extender_time(port: u16) -> Vec<(String, u64, f64)> {
    let Some((200, body)) = get(port, "/metrics").await else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64, f64)> = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("stowage_extender_request_duration_seconds_") else {
            continue;
        };
        let (kind, rest) = rest.split_once('{').unwrap_or((rest, ""));
        let Some(verb) = rest
            .split_once("verb=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v.to_string())
        else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let slot = match out.iter_mut().find(|(v, _, _)| *v == verb) {
            Some(slot) => slot,
            None => {
                out.push((verb, 0, 0.0));
                out.last_mut()
                    .unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        match kind {
            "count" => slot.1 = value as u64,
            "sum" => slot.2 = value,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice_and_are_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((FIRST..END).contains(&port));
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn a_port_locked_by_another_holder_is_skipped() {
        let port = free_port();
        // Another process holding the lock looks like this: the file is locked elsewhere.
        let other = File::open(
            std::env::temp_dir()
                .join("stowage-test-ports")
                .join(format!("{port}.lock")),
        )
        .unwrap();
        assert!(
            flock(&other, FlockOperation::NonBlockingLockExclusive).is_err(),
            "the reservation holds the lock"
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
        assert_eq!(dechunk("3\r\nab"), None);
    }
}
