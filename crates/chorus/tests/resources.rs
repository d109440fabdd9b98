//! What an outsider can hold of a real `chorus serve` process over HTTP is bounded:
//! connections, time to send a request head or body, announced body sizes, and the
//! memory of bodies in flight. Each refusal leaves the digest unchanged.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn address(node: &NodeProcess) -> String {
    node.url.trim_start_matches("http://").to_owned()
}

/// Reads what the node answers on `stream` until it closes the connection (or the
/// deadline passes, which fails the test).
fn read_until_closed(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Goal: a client cannot hold a connection, a request head or a body open for long,
/// nor make the node wait for a body it announced too large, nor open more
/// connections than the cap. Method: raw sockets against a node with 1 s time-outs
/// and a cap of 8 connections.
#[test]
fn slow_idle_and_oversize_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        &dir.path().join("data"),
        &[
            "--header-timeout-ms",
            "1000",
            "--body-timeout-ms",
            "1000",
            "--connections-max",
            "8",
            "--body-bytes-max",
            "4096",
        ],
    );
    let at = address(&node);
    let before = digest(&node.url);

    // A body announced larger than the limit is refused at once, naming the flag.
    let mut huge = TcpStream::connect(&at).unwrap();
    write!(
        huge,
        "PUT /v1/docs/c/k HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n"
    )
    .unwrap();
    let answer = read_until_closed(&mut huge);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--body-bytes-max"), "{answer}");

    // Silent, half-sent and slow-bodied clients are closed; the slow body gets 408.
    let mut idle = TcpStream::connect(&at).unwrap();
    assert_eq!(read_until_closed(&mut idle), "");
    let mut half = TcpStream::connect(&at).unwrap();
    write!(half, "GET /v1/status HTTP/1.1\r\nhost: x\r\n").unwrap();
    read_until_closed(&mut half);
    let mut slow = TcpStream::connect(&at).unwrap();
    write!(
        slow,
        "PUT /v1/docs/c/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{\"a\":"
    )
    .unwrap();
    let answer = read_until_closed(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Past the cap, a new connection is closed at once; once the idle ones time out,
    // new clients are served again.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&at).unwrap()).collect();
    wait_until("the cap to close a new connection", DEADLINE, || {
        let mut extra = TcpStream::connect(&at).unwrap();
        write!(extra, "GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let answer = read_until_closed(&mut extra);
        answer.is_empty()
    });
    wait_until("new clients to be served again", DEADLINE, || {
        request("GET", &format!("{}/v1/status", node.url), None, &[])
            .is_ok_and(|reply| reply.status == 200)
    });
    drop(held);
    // The held connections close as the node notices: until then a new one may still
    // be over the cap and closed at once.
    let mut after = None;
    wait_until("the node to answer again", DEADLINE, || {
        after = request("GET", &format!("{}/v1/digest", node.url), None, &[])
            .ok()
            .filter(|reply| reply.status == 200)
            .map(|reply| reply.body["digest"].clone());
        after.is_some()
    });
    assert_eq!(after, Some(serde_json::Value::String(before)));
}

/// Goal: requests that never reach the API (unparseable as HTTP, or with too many
/// headers) still get the JSON error shape. Method: raw bytes on a socket.
#[test]
fn unparseable_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let at = address(&node);
    let many_headers = format!(
        "GET /v1/status HTTP/1.1\r\n{}\r\n",
        "x-padding: 0123456789\r\n".repeat(4000)
    );
    for (request, status, code) in [
        ("GARBAGE\r\n\r\n".to_owned(), "400", "bad_request"),
        (
            "GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n".to_owned(),
            "400",
            "bad_request",
        ),
        (many_headers, "431", "headers_too_large"),
    ] {
        let mut stream = TcpStream::connect(&at).unwrap();
        let _ = stream.write_all(request.as_bytes());
        let answer = read_until_closed(&mut stream);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], code, "{answer}");
    }
}

/// A memory figure of a process from `/proc/PID/status`, in bytes (Linux):
/// `VmHWM` is the peak resident memory, `VmRSS` the current.
fn memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Goal: bodies in flight take bounded memory. Method: 50 clients each PUT a 15 MiB
/// document at once (750 MiB of bodies); every one is answered 200 or 503 `busy`
/// with `Retry-After`, and the node's peak resident memory stays below 1.75 GiB.
/// Measured in a debug build with 40 clients: 1.29 to 1.39 GiB with bodies bounded
/// to four in flight, 1.98 GiB when the bound is lifted (an adversarial run saw 2.3
/// GB for 50 clients). Most of the bounded figure is the store's page cache (redb's
/// 1 GiB) holding what was just written, and the write path's copies of the four
/// documents being committed.
#[test]
fn bodies_in_flight_take_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let body = format!("\"{}\"", "b".repeat(15 * 1024 * 1024));
    let statuses: Vec<(u16, bool)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..50)
            .map(|i| {
                let (url, body) = (format!("{}/v1/docs/big/k{i}", node.url), &body);
                s.spawn(move || {
                    let reply = call("PUT", &url, Some(body.as_bytes()), &[]);
                    (reply.status, reply.text.contains("busy"))
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (status, busy) in &statuses {
        assert!(*status == 200 || (*status == 503 && *busy), "{statuses:?}");
    }
    assert!(statuses.iter().any(|(status, _)| *status == 200));
    let peak = memory_bytes(node.child.id(), "VmHWM:");
    assert!(
        peak < 1_792 * 1024 * 1024,
        "peak resident memory {} MiB",
        peak >> 20
    );
}

/// Raises this process's open-file limit (and so its children's) to at least 8192
/// where allowed (root may raise the hard limit), else to the hard limit; returns it.
fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max.max(8192),
            rlim_max: limit.rlim_max.max(8192),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Thousands of connections that never send a request do not keep a new client from
/// being served at once, nor from writing.
#[test]
fn thousands_of_idle_connections_leave_room_for_clients() {
    let idle_count = 2_000.min(raise_file_limit().saturating_sub(200) / 2) as usize;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let at = address(&node);
    let idle: Vec<TcpStream> = (0..idle_count)
        .map(|_| TcpStream::connect(&at).unwrap())
        .collect();
    let reply = put(&format!("{}/v1/docs/c/k", node.url), r#"{"served":true}"#);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(get(&format!("{}/v1/docs/c/k", node.url)).status, 200);
    assert!(
        idle_count >= 1_000,
        "only {idle_count} connections could be opened"
    );
    drop(idle);
}
