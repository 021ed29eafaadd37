//! The listeners' limits against real attacks on a real `chorus serve`
//! (issue 16, finding 4): a flood of idle gossip connections and peers
//! announcing huge frames leave the node serving with bounded memory; an
//! idle peer connection is closed while live links stay up; HTTP refuses
//! connections over its caps, requests over the rate of their source, and
//! clients that send their headers too slowly.
//!
//! The attackers run in this process on a tokio runtime, from distinct
//! loopback source addresses (127.0.x.y) so that the caps per source and
//! in total are both reached.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::http::wait_healthy;
use common::{CHORUS, Node, free_port, metric};

/// Descriptors the attacks hold at once in this process, with margin.
const OPEN_FILES_NEEDED: u64 = 4096;
/// Largest frame a peer may announce (`wire::FRAME_MAX`).
const FRAME_MAX: u32 = 16 << 20;
/// Bytes each huge-frame announcer sends of its frame before it stalls.
/// (Announcing alone is not enough to show the old fault: a buffer
/// allocated zeroed is not resident until written.)
const ANNOUNCED_SENT: usize = 12 << 20;
/// Resident memory a node may reach under the attacks (it reached 333 MB
/// before the limits; its budget for frame buffers is 64 MiB).
const RSS_MAX: u64 = 150 << 20;

/// Raises this process's open-files limit to its hard limit (the nodes
/// started afterwards inherit it); false when the hard limit is below
/// what the test needs.
fn raise_open_files() -> bool {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if hard < OPEN_FILES_NEEDED {
        eprintln!(
            "SKIPPED: the open-files hard limit is {hard}, below the {OPEN_FILES_NEEDED} this test holds (raise it: ulimit -Hn)"
        );
        return false;
    }
    if lim.current.is_some_and(|c| c < OPEN_FILES_NEEDED) {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).expect("raise the open-files limit");
    }
    true
}

/// `chorus serve --insecure` with peers on `gossip` and the API on
/// 127.0.0.1:`http`, joining `join` if given, with `extra` arguments;
/// waits until its API answers. With `LIMITS_LOG=PREFIX` in the
/// environment its log goes to `PREFIX.HTTP_PORT` (for a failure's
/// diagnosis).
fn serve(
    dir: &Path,
    gossip: SocketAddr,
    http: u16,
    join: Option<SocketAddr>,
    extra: &[&str],
) -> Node {
    let mut cmd = Command::new(CHORUS);
    cmd.arg("--dir")
        .arg(dir)
        .arg("serve")
        .arg("--insecure")
        .args(extra)
        .arg("--gossip")
        .arg(gossip.to_string())
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(match std::env::var("LIMITS_LOG") {
            Ok(p) => Stdio::from(std::fs::File::create(format!("{p}.{http}")).expect("log")),
            Err(_) => Stdio::null(),
        });
    if let Some(j) = join {
        cmd.arg("--join").arg(j.to_string());
    }
    let node = Node(cmd.spawn().expect("start chorus serve"));
    wait_healthy(&format!("http://127.0.0.1:{http}"), Duration::from_secs(20));
    node
}

fn loopback(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// The resident memory of process `pid` (VmRSS), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// A connection to `to` from the address `from`.
async fn open_from(from: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Sends a valid hello as peer number `n` (each claims its own address).
async fn hello(stream: &mut tokio::net::TcpStream, n: u32) -> std::io::Result<()> {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id[15] = 0xA7;
    let hello =
        chorus_node::wire::Hello::new(id, format!("127.0.9.9:{}", 20_000 + n % 40_000), false);
    chorus_node::wire::write_frame(stream, &hello).await
}

/// Reads what the node sends (its hello, keep-alives) until it closes
/// the connection or `limit` passes; true if it closed it.
async fn closed_by_node(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens `count` connections from `from` to `to`, every other one
/// sending a hello; returns those that opened.
async fn idle_flood(
    from: IpAddr,
    to: SocketAddr,
    count: u32,
    first: u32,
) -> Vec<tokio::net::TcpStream> {
    let mut tasks = Vec::new();
    for i in 0..count {
        tasks.push(tokio::spawn(async move {
            let mut s = open_from(from, to).await.ok()?;
            if i % 2 == 0 {
                // A refused connection may be closed before this.
                let _ = hello(&mut s, first + i).await;
            }
            Some(s)
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            open.push(s);
        }
    }
    open
}

#[test]
fn idle_gossip_floods_and_huge_frame_announcers_leave_the_node_serving_in_bounded_memory() {
    if !raise_open_files() {
        return;
    }
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a_gossip = SocketAddr::new(loopback(0, 0, 1), free_port());
    let a_http = free_port();
    let a = serve(a_dir.path(), a_gossip, a_http, None, &[]);
    let pid = a.0.id();
    let before = rss(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    // 20 peers announce a frame of 16 MiB after a valid hello, send 12 MiB
    // of it and stall (each from its own address).
    let body = Arc::new(vec![0x5Au8; ANNOUNCED_SENT]);
    let announcers: Vec<_> = (0..20u8)
        .map(|i| {
            let body = body.clone();
            rt.spawn(async move {
                let Ok(mut s) = open_from(loopback(0, 3, i + 1), a_gossip).await else {
                    return;
                };
                if hello(&mut s, 50_000 + u32::from(i)).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let announce = async {
                    w.write_all(&FRAME_MAX.to_le_bytes()).await?;
                    w.write_all(&body).await?;
                    // Then nothing: hold the connection open.
                    std::future::pending::<std::io::Result<()>>().await
                };
                let mut sink = [0u8; 4096];
                let drain = async { while r.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
                tokio::select! { _ = announce => {}, () = drain => {} }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // 1,000 idle connections, every other one past the hello: 40 from one
    // address (over its cap of 32), then 20 from each of 48 more (over
    // the total cap of 256).
    let mut held = rt.block_on(idle_flood(loopback(0, 2, 1), a_gossip, 40, 0));
    for s in 1..=48u8 {
        held.extend(rt.block_on(idle_flood(
            loopback(0, 1, s),
            a_gossip,
            20,
            u32::from(s) * 100,
        )));
    }

    // Past the handshake timeout (2 s) and the wait for frame memory
    // (5 s), the node's memory stays bounded.
    let mut peak = 0;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss(pid));
    }
    eprintln!(
        "resident memory: {} MB before the attacks, {} MB at most under them",
        before >> 20,
        peak >> 20
    );
    assert!(
        peak < RSS_MAX,
        "the node's resident memory reached {} MB under the attacks (limit {} MB)",
        peak >> 20,
        RSS_MAX >> 20
    );

    // The API still answers.
    let url = format!("http://127.0.0.1:{a_http}");
    let (status, _) = common::http::request(
        "PUT",
        &format!("{url}/v1/kv/test/keys/during"),
        None,
        Some("attack"),
    );
    assert!(
        (200..300).contains(&status),
        "PUT during the attacks: {status}"
    );
    let (status, got) =
        common::http::request("GET", &format!("{url}/v1/kv/test/keys/during"), None, None);
    assert_eq!(status, 200, "GET during the attacks: {got}");

    // The caps were reached, and the announcers cut off for memory.
    let refused = |reason: &str| {
        metric(
            a_http,
            &format!("gossip_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(refused("total") > 0, "the total cap was never reached");
    assert!(
        refused("per_source") > 0,
        "the cap per source was never reached"
    );
    let cut = metric(a_http, "gossip_closed_total{reason=\"budget\"}")
        + metric(a_http, "gossip_closed_total{reason=\"stalled\"}");
    assert!(cut > 0, "no announcer was cut off for frame memory");
    assert!(metric(a_http, "frame_buffer_bytes") <= 64 << 20);
    assert!(metric(a_http, "gossip_connections{state=\"inbound\"}") <= 256);

    // A real node still joins (from its own address) and replicates both
    // ways.
    let b_gossip = SocketAddr::new(loopback(0, 0, 2), free_port());
    let b = serve(
        b_dir.path(),
        b_gossip,
        free_port(),
        Some(a_gossip),
        &["--exchange-interval", "1"],
    );
    common::put(b_dir.path(), "test/keys", "from-b", "1");
    common::put(a_dir.path(), "test/keys", "from-a", "2");
    common::wait_until(Duration::from_secs(60), || {
        common::get(a_dir.path(), "test/keys", "from-b").as_deref() == Some("1")
            && common::get(b_dir.path(), "test/keys", "from-a").as_deref() == Some("2")
            && common::get(b_dir.path(), "test/keys", "during").as_deref() == Some("attack")
    });
    drop(b);
    drop(held);
    for t in announcers {
        t.abort();
    }
    drop(rt);
    drop(a);
}

#[test]
fn an_idle_peer_connection_is_closed_while_live_links_stay_up() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let idle = ["--gossip-idle-timeout", "2", "--exchange-interval", "1"];
    let a_gossip = SocketAddr::new(loopback(0, 0, 1), free_port());
    let a_http = free_port();
    let _a = serve(a_dir.path(), a_gossip, a_http, None, &idle);
    let b_gossip = SocketAddr::new(loopback(0, 0, 2), free_port());
    let _b = serve(b_dir.path(), b_gossip, free_port(), Some(a_gossip), &idle);
    common::put(a_dir.path(), "test/keys", "first", "1");
    common::wait_until(Duration::from_secs(30), || {
        common::get(b_dir.path(), "test/keys", "first").as_deref() == Some("1")
    });

    // A peer that says hello and then nothing is closed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let closed = rt.block_on(async {
        let mut s = open_from(loopback(0, 4, 1), a_gossip)
            .await
            .expect("connect");
        hello(&mut s, 7).await.expect("hello");
        closed_by_node(&mut s, Duration::from_secs(30)).await
    });
    assert!(closed, "an idle peer connection was never closed");

    // The link between the two nodes stayed up through keep-alives: it
    // still carries writes, and only the idle peer was closed.
    std::thread::sleep(Duration::from_secs(3));
    common::put(a_dir.path(), "test/keys", "second", "2");
    common::wait_until(Duration::from_secs(30), || {
        common::get(b_dir.path(), "test/keys", "second").as_deref() == Some("2")
    });
    assert_eq!(
        metric(a_http, "gossip_closed_total{reason=\"idle\"}"),
        1,
        "a live link was closed as idle"
    );
}

/// One HTTP/1.1 exchange on a kept-alive connection: (status, headers,
/// body).
fn exchange(stream: &mut TcpStream, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: chorus\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the head");
        assert_eq!(
            n,
            1,
            "the connection closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let length: usize = common::http::header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// Connections to 127.0.0.1:`port` from `from`, as blocking std streams.
fn connect_from(rt: &tokio::runtime::Runtime, from: IpAddr, port: u16) -> TcpStream {
    let to = SocketAddr::new(loopback(0, 0, 1), port);
    let stream = rt.block_on(open_from(from, to)).expect("connect");
    let stream = stream.into_std().expect("a std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    stream
}

/// What a refused connection reads: the 503 answer, if it got there
/// before the close, then the end.
fn read_refusal(mut stream: TcpStream) -> String {
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn http_refuses_over_its_caps_and_its_rate_with_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = free_port();
    let _node = serve(
        dir.path(),
        SocketAddr::new(loopback(0, 0, 1), free_port()),
        http,
        None,
        &[
            "--http-rate",
            "5",
            "--http-max-connections",
            "6",
            "--http-max-connections-per-source",
            "4",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    // 20 requests on one connection within far less than 3 s: 5 at once
    // and 5 a second pass, the rest are answered 429 with Retry-After.
    std::thread::sleep(Duration::from_millis(1500));
    let mut stream = connect_from(&rt, loopback(0, 5, 1), http);
    let answers: Vec<(u16, String, String)> =
        (0..20).map(|_| exchange(&mut stream, "/v1/kv")).collect();
    let limited: Vec<&(u16, String, String)> =
        answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(
        (1..=15).contains(&limited.len()),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let (_, head, body) = limited[0];
    let body: serde_json::Value = common::http::json(body);
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("5 requests per second"))
    );
    let retry: u64 = common::http::header(head, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!(retry >= 1, "{head}");
    // Another source has its own budget.
    let mut other = connect_from(&rt, loopback(0, 5, 2), http);
    assert_eq!(exchange(&mut other, "/v1/kv").0, 200);
    drop((stream, other));
    std::thread::sleep(Duration::from_millis(200));

    // 4 connections from one address: a 5th from it is refused with 503
    // busy; 2 more from another address fill the total of 6, and a 7th
    // from a third address is refused.
    let one: Vec<TcpStream> = (0..4)
        .map(|_| connect_from(&rt, loopback(0, 6, 1), http))
        .collect();
    let refused = read_refusal(connect_from(&rt, loopback(0, 6, 1), http));
    assert!(
        refused.is_empty() || (refused.starts_with("HTTP/1.1 503") && refused.contains("\"busy\"")),
        "{refused}"
    );
    let two: Vec<TcpStream> = (0..2)
        .map(|_| connect_from(&rt, loopback(0, 6, 2), http))
        .collect();
    let refused = read_refusal(connect_from(&rt, loopback(0, 6, 3), http));
    assert!(
        refused.is_empty() || refused.contains("--http-max-connections"),
        "{refused}"
    );
    drop((one, two));
    std::thread::sleep(Duration::from_secs(2));
    let count = |reason: &str| metric(http, &format!("http_refused_total{{reason=\"{reason}\"}}"));
    assert!(count("rate") >= 1);
    assert_eq!(count("per_source"), 1);
    assert_eq!(count("total"), 1);
}

#[test]
fn http_cuts_off_a_client_that_sends_its_headers_slowly() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = free_port();
    let _node = serve(
        dir.path(),
        SocketAddr::new(loopback(0, 0, 1), free_port()),
        http,
        None,
        &["--http-header-timeout", "2"],
    );
    let mut stream = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("a read timeout");
    stream
        .write_all(b"GET /v1/kv HTTP/1.1\r\nHost: chorus\r\n")
        .expect("the request line");
    // One header line every 300 ms, never the blank line that ends them.
    let started = Instant::now();
    let mut cut = false;
    let mut sink = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(30) {
        if stream.write_all(b"X-Slow: yes\r\n").is_err() {
            cut = true;
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a client sending its headers slowly was never cut off");
    assert_eq!(
        metric(http, "http_closed_total{reason=\"header_timeout\"}"),
        1
    );
    // The node still answers others.
    let (_, status, _) = common::http::curl(&[&format!("http://127.0.0.1:{http}/v1/kv")]);
    assert_eq!(status, 200);
}
