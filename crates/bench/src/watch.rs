//! `chorus-bench watch-fanout`: one `chorus serve` node with 1,000
//! server-sent-event streams open on `GET /v1/watch`.
//!
//! 1. The node's CPU time (`/proc/PID/stat`) over 10 s with no stream and
//!    no write, then over 10 s with every stream open and still no write
//!    (goal: under 2% of one core).
//! 2. 1,000 writes/s for 10 s (HTTP PUTs of `bench/watch/wNNNNNN`, each key
//!    written once, from 64 connections paced to a schedule; the value is
//!    `t=MICROS`, the time the PUT was sent), then until every stream has
//!    every event or no event arrives for 15 s (at most 120 s after the
//!    last write). The same writes run once before any stream is open
//!    (under `bench/control`), to show what the node does without
//!    watchers.
//! 3. Every stream must receive every write's event exactly once, with the
//!    value written. Delivery latency is the time from the write's
//!    acknowledgement (the PUT's reply read by the writer) to the event's
//!    arrival on a stream, over every (stream, write) pair; the time from
//!    sending the PUT is reported beside it. Both ends run in this process
//!    on one monotonic clock.
//!
//! Each stream is a thread with a blocking socket (no async runtime in the
//! client), reading the chunked body and scanning each `data:` line for
//! its `"key"` and `"value"` without a full JSON parse, so that the
//! client's CPU per event stays small beside the server's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{Http, Proc, chorus_binary, free_port, serve, wait_http};
use crate::harness::{Cfg, Outcome, Res, Row, proc_cpu_seconds, raise_fd_limit};

/// Not received (yet).
const NONE: u32 = u32::MAX;
/// Connections the writes are spread over: enough to keep the schedule
/// with acknowledgements of up to 64 ms at 1,000 writes/s.
const WRITERS: usize = 64;

#[derive(Clone, Copy)]
struct Params {
    streams: usize,
    rate: usize,
    seconds: f64,
    /// How long to wait for the last events after the last write.
    drain_limit: Duration,
    /// How long without any event ends the wait early.
    stall: Duration,
}

/// What every stream thread shares with the run.
struct Shared {
    /// The run's clock: every time is microseconds since this instant.
    epoch: Instant,
    /// Each write's send time (set before its PUT goes out), or NONE.
    sent: Vec<AtomicU32>,
    /// Events of ours received over every stream.
    received: AtomicU64,
    /// Streams that read their response's headers.
    ready: AtomicU64,
    /// The first error a stream thread met.
    error: Mutex<Option<String>>,
    failed: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_micros()).unwrap_or(NONE - 1)
    }

    fn fail(&self, e: String) {
        self.failed.store(true, Ordering::Relaxed);
        let mut slot = self
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(e);
    }
}

/// What one stream saw.
#[derive(Default)]
struct StreamOut {
    /// Arrival time of each write's event, by write index (NONE: never).
    arrivals: Vec<u32>,
    duplicates: u64,
    /// Events whose value was not the one written.
    wrong_value: u64,
    /// Change events for keys that are not this run's writes.
    other: u64,
    /// `overflow` or `error` events (the stream ends after one).
    ended_by_server: Option<String>,
}

/// Reads the body of a `Transfer-Encoding: chunked` response as plain
/// bytes.
struct Chunked<R> {
    inner: BufReader<R>,
    left: usize,
    started: bool,
    done: bool,
}

impl<R: Read> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.started {
                // The CRLF that ends the previous chunk.
                self.inner.read_line(&mut line)?;
                line.clear();
            }
            self.started = true;
            if self.inner.read_line(&mut line)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            self.done = true;
        }
        self.left -= got;
        Ok(got)
    }
}

/// The text of a JSON string field `"name":"..."` in `line` (no escapes
/// expected in what this benchmark writes).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut pat = Vec::with_capacity(name.len() + 5);
    pat.extend_from_slice(b"\"");
    pat.extend_from_slice(name);
    pat.extend_from_slice(b"\":\"");
    let at = line.windows(pat.len()).position(|w| w == pat.as_slice())? + pat.len();
    let rest = &line[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Opens one stream and reads it until the socket is shut down.
fn stream(
    addr: &str,
    shared: &Shared,
    writes: usize,
    sock: &Mutex<Option<TcpStream>>,
) -> StreamOut {
    let mut out = StreamOut {
        arrivals: vec![NONE; writes],
        ..StreamOut::default()
    };
    if let Err(e) = read_stream(addr, shared, &mut out, sock) {
        shared.fail(format!("a stream: {e}"));
    }
    out
}

fn read_stream(
    addr: &str,
    shared: &Shared,
    out: &mut StreamOut,
    sock: &Mutex<Option<TcpStream>>,
) -> Res<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    *sock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s.try_clone()?);
    write!(
        s,
        "GET /v1/watch HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("GET /v1/watch answered {:?}", line.trim()).into());
    }
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err("the connection closed in the headers".into());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let body: Box<dyn BufRead> = if chunked {
        Box::new(BufReader::with_capacity(
            64 << 10,
            Chunked {
                inner: r,
                left: 0,
                started: false,
                done: false,
            },
        ))
    } else {
        Box::new(r)
    };
    read_events(body, shared, out);
    Ok(())
}

fn read_events(mut body: Box<dyn BufRead>, shared: &Shared, out: &mut StreamOut) {
    let mut buf = Vec::with_capacity(1024);
    let mut event = Vec::new();
    loop {
        buf.clear();
        // A read error here is the shutdown at the end of the run.
        match body.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            event.clear(); // an event ends at a blank line
            continue;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            event.clear();
            event.extend_from_slice(name.trim_ascii());
            continue;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            continue; // id:, comments (keep-alives)
        };
        if event != b"change" {
            out.ended_by_server = Some(String::from_utf8_lossy(data).into_owned());
            continue;
        }
        let at = shared.now_us();
        let index = field(data, b"key")
            .and_then(|k| k.strip_prefix(b"w"))
            .and_then(parse_u32)
            .map(|i| i as usize)
            .filter(|&i| i < out.arrivals.len());
        let Some(i) = index else {
            out.other += 1;
            continue;
        };
        let value = field(data, b"value")
            .and_then(|v| v.strip_prefix(b"t="))
            .and_then(parse_u32);
        if value != Some(shared.sent[i].load(Ordering::Relaxed)) {
            out.wrong_value += 1;
        }
        if out.arrivals[i] == NONE {
            out.arrivals[i] = at;
            shared.received.fetch_add(1, Ordering::Relaxed);
        } else {
            out.duplicates += 1;
        }
    }
}

/// One writer connection: writes `index = first, first + step, ...` each
/// at its time on the schedule (or at once when late); returns
/// (index, ack time in µs) for each.
fn writer(
    addr: &str,
    shared: &Shared,
    start: Instant,
    p: Params,
    sub: &str,
    (first, step): (usize, usize),
) -> Res<Vec<(usize, u32)>> {
    let total = shared.sent.len();
    let mut c = Http::connect(addr)?;
    let mut acks = Vec::with_capacity(total / step + 1);
    for i in (first..total).step_by(step) {
        let due = start + Duration::from_secs_f64(i as f64 / p.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let t = shared.now_us();
        shared.sent[i].store(t, Ordering::Relaxed);
        let (status, body) = c.request(
            "PUT",
            &format!("/v1/kv/bench/{sub}/w{i:06}"),
            format!("t={t}").as_bytes(),
        )?;
        if status != 200 {
            return Err(format!("PUT w{i}: {status} {}", String::from_utf8_lossy(&body)).into());
        }
        acks.push((i, shared.now_us()));
    }
    Ok(acks)
}

/// Writes `writes` keys at `p.rate` per second from [`WRITERS`]
/// connections; returns each write's ack time (µs on `shared`'s clock)
/// and the seconds from the first scheduled write to the last ack.
fn drive(addr: &str, shared: &Arc<Shared>, p: Params, sub: &str) -> Res<(Vec<u32>, f64)> {
    let writes = shared.sent.len();
    let step = WRITERS.min(writes.max(1));
    let start = Instant::now() + Duration::from_millis(100);
    let writers: Vec<_> = (0..step)
        .map(|k| {
            let (addr, shared, sub) = (addr.to_string(), shared.clone(), sub.to_string());
            std::thread::spawn(move || {
                writer(&addr, &shared, start, p, &sub, (k, step)).map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut ack = vec![NONE; writes];
    for w in writers {
        for (i, t) in w.join().map_err(|_| "a writer panicked")?? {
            ack[i] = t;
        }
    }
    Ok((ack, start.elapsed().as_secs_f64()))
}

/// Each write's time from sending its PUT to reading the reply, in ms,
/// sorted.
fn ack_ms(shared: &Shared, ack: &[u32]) -> Vec<f64> {
    let mut v: Vec<f64> = shared
        .sent
        .iter()
        .zip(ack)
        .map(|(s, &a)| (f64::from(a) - f64::from(s.load(Ordering::Relaxed))) / 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn shared(writes: usize) -> Arc<Shared> {
    Arc::new(Shared {
        epoch: Instant::now(),
        sent: (0..writes).map(|_| AtomicU32::new(NONE)).collect(),
        received: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
    })
}

/// The `Threads:` line of `/proc/PID/status` (0 if unreadable).
fn threads_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The node's CPU over `secs`, as a fraction of one core.
fn cpu_share(pid: u32, secs: f64) -> Res<f64> {
    let c0 = proc_cpu_seconds(pid)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    Ok((proc_cpu_seconds(pid)? - c0) / t.elapsed().as_secs_f64())
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let p = Params {
        streams: cfg.streams.unwrap_or(if cfg.quick { 100 } else { 1000 }),
        rate: cfg.rate.unwrap_or(if cfg.quick { 100 } else { 1000 }),
        seconds: cfg.seconds.unwrap_or(if cfg.quick { 3.0 } else { 10.0 }),
        drain_limit: Duration::from_secs(if cfg.quick { 30 } else { 120 }),
        stall: Duration::from_secs(15),
    };
    let limit = raise_fd_limit()?;
    if limit < (p.streams as u64) * 2 + 256 {
        return Err(format!(
            "the open-file limit is {limit}: {} streams need about {} (raise the hard limit: ulimit -Hn)",
            p.streams,
            p.streams * 2 + 256
        )
        .into());
    }
    let bin = chorus_binary()?;
    let dir = cfg.tempdir("watch")?;
    let http = free_port()?;
    let addr = format!("127.0.0.1:{http}");
    let node: Proc = serve(&bin, dir.path(), free_port()?, http, None, &[])?;
    let pid = node.0.id();
    wait_http(&addr)?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "watch-fanout: node pid {pid}; its CPU with no stream ({:.0} s)",
        p.seconds
    );
    let idle_none = cpu_share(pid, p.seconds)?;

    let writes = (p.rate as f64 * p.seconds).round() as usize;
    // The same writes with no stream open: what the node does without
    // watchers (keys under bench/control, which no later check counts).
    eprintln!(
        "watch-fanout: {writes} writes at {}/s from {WRITERS} connections, no stream open",
        p.rate
    );
    let control = shared(writes);
    let cpu0 = proc_cpu_seconds(pid)?;
    let (control_ack, control_s) = drive(&addr, &control, p, "control")?;
    let control_cpu = proc_cpu_seconds(pid)? - cpu0;
    let control_ms = ack_ms(&control, &control_ack);

    let shared = shared(writes);
    eprintln!("watch-fanout: opening {} streams", p.streams);
    let socks: Vec<Arc<Mutex<Option<TcpStream>>>> =
        (0..p.streams).map(|_| Arc::new(Mutex::new(None))).collect();
    let mut threads = Vec::with_capacity(p.streams);
    for sock in &socks {
        let (addr, shared, sock) = (addr.clone(), shared.clone(), sock.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || stream(&addr, &shared, writes, &sock))?,
        );
    }
    let opened = Instant::now();
    while shared.ready.load(Ordering::Relaxed) < p.streams as u64 {
        if shared.failed.load(Ordering::Relaxed) || opened.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{} of {} streams opened: {}",
                shared.ready.load(Ordering::Relaxed),
                p.streams,
                shared
                    .error
                    .lock()
                    .map(|e| e.clone().unwrap_or_default())
                    .unwrap_or_default()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let open_s = opened.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "watch-fanout: {} streams open in {open_s:.2} s; node CPU with no writes ({:.0} s)",
        p.streams, p.seconds
    );
    let idle_streams = cpu_share(pid, p.seconds)?;
    let threads_idle = threads_of(pid);

    eprintln!(
        "watch-fanout: {writes} writes at {}/s from {WRITERS} connections",
        p.rate
    );
    let (cpu0, own0) = (
        proc_cpu_seconds(pid)?,
        proc_cpu_seconds(std::process::id())?,
    );
    let started = Instant::now();
    let (ack, write_s) = drive(&addr, &shared, p, "watch")?;
    let last_ack = Instant::now();
    let expected = (writes * p.streams) as u64;
    let (mut seen, mut progress) = (shared.received.load(Ordering::Relaxed), Instant::now());
    while seen < expected
        && last_ack.elapsed() < p.drain_limit
        && progress.elapsed() < p.stall
        && !shared.failed.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(50));
        let now = shared.received.load(Ordering::Relaxed);
        if now != seen {
            (seen, progress) = (now, Instant::now());
        }
    }
    let busy_s = started.elapsed().as_secs_f64();
    let cpu_busy = proc_cpu_seconds(pid)? - cpu0;
    let own_busy = proc_cpu_seconds(std::process::id())? - own0;
    for s in &socks {
        if let Some(s) = s
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    let outs: Vec<StreamOut> = threads
        .into_iter()
        .map(|t| t.join().map_err(|_| "a stream thread panicked"))
        .collect::<Result<_, _>>()?;
    drop(node);
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    {
        return Err(e.into());
    }

    // Latencies over every (stream, write) pair that arrived.
    let sent: Vec<u32> = shared
        .sent
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let mut from_ack = Vec::with_capacity(expected as usize);
    let mut from_send = Vec::with_capacity(expected as usize);
    let mut last_arrival = 0u32;
    let (mut delivered, mut dupes, mut wrong, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut complete = 0usize;
    let mut ended: Option<String> = None;
    for o in &outs {
        let mut all = true;
        for (i, &a) in o.arrivals.iter().enumerate() {
            if a == NONE {
                all = false;
                continue;
            }
            delivered += 1;
            last_arrival = last_arrival.max(a);
            from_ack.push((f64::from(a) - f64::from(ack[i])) / 1e3);
            from_send.push((f64::from(a) - f64::from(sent[i])) / 1e3);
        }
        complete += usize::from(all);
        dupes += o.duplicates;
        wrong += o.wrong_value;
        other += o.other;
        if ended.is_none() {
            ended.clone_from(&o.ended_by_server);
        }
    }
    let ack_ms = ack_ms(&shared, &ack);
    from_ack.sort_by(f64::total_cmp);
    from_send.sort_by(f64::total_cmp);
    let last_ack_us = ack.iter().copied().max().unwrap_or(0);
    let drain_ms = (f64::from(last_arrival) - f64::from(last_ack_us)) / 1e3;
    // Nearest rank in a sorted list (the lists are too long to copy and
    // sort again for every quantile).
    let q = |v: &[f64], x: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((x * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    let all_ok = delivered == expected && dupes == 0 && wrong == 0;
    let pct = |share: f64| format!("{:.1}% of a core", share * 100.0);
    let n = p.streams;
    let rows = vec![
        Row::context(
            "watch-fanout: node CPU, idle, no stream",
            pct(idle_none),
            "none",
            format!("{:.0} s", p.seconds),
        ),
        Row::absolute(
            &format!("watch-fanout: node CPU, idle, {n} streams open"),
            pct(idle_streams),
            "none",
            format!(
                "{:.0} s, no writes; node threads: {threads_idle}",
                p.seconds
            ),
            "< 2% of one core",
            idle_streams < 0.02,
        ),
        Row::context(
            "watch-fanout: writes with no stream open (HTTP PUT, 64 conns, paced)",
            format!(
                "{:.0}/s of {}/s asked; ack p50 {:.2} ms, p99 {:.2} ms",
                writes as f64 / control_s,
                p.rate,
                q(&control_ms, 0.5),
                q(&control_ms, 0.99)
            ),
            "none",
            format!(
                "node CPU {:.0}% of a core, {:.0} µs per write",
                control_cpu / control_s * 100.0,
                control_cpu / writes.max(1) as f64 * 1e6
            ),
        ),
        Row::context(
            &format!("watch-fanout: writes with {n} streams open (HTTP PUT, 64 conns, paced)"),
            format!(
                "{:.0}/s of {}/s asked; ack p50 {:.2} ms, p99 {:.2} ms",
                writes as f64 / write_s,
                p.rate,
                q(&ack_ms, 0.5),
                q(&ack_ms, 0.99)
            ),
            "none",
            format!("{writes} writes"),
        ),
        Row::absolute(
            &format!("watch-fanout: every stream got every event ({n} x {writes})"),
            format!(
                "{delivered} of {expected} ({complete} of {n} streams complete; {dupes} duplicates, {wrong} wrong values)"
            ),
            "none",
            ended
                .clone()
                .unwrap_or_else(|| "no stream ended by the server".into()),
            "all, once each",
            all_ok,
        ),
        Row::context(
            "watch-fanout: delivery latency, write ack -> event, p50 / p99",
            format!("{:.1} ms / {:.1} ms", q(&from_ack, 0.5), q(&from_ack, 0.99)),
            "none",
            format!("over {delivered} deliveries"),
        ),
        Row::context(
            "watch-fanout: delivery latency, PUT sent -> event, p50 / p99",
            format!(
                "{:.1} ms / {:.1} ms",
                q(&from_send, 0.5),
                q(&from_send, 0.99)
            ),
            "none",
            format!("max {:.1} ms", q(&from_send, 1.0)),
        ),
        Row::context(
            "watch-fanout: last ack -> last event; node CPU while writing",
            format!(
                "{drain_ms:.0} ms; {:.0}% of a core ({:.1} µs per delivery)",
                cpu_busy / busy_s * 100.0,
                cpu_busy / delivered.max(1) as f64 * 1e6
            ),
            "none",
            format!(
                "{busy_s:.1} s from the first write to the last event or the wait's end; this client's CPU {:.0}% of a core",
                own_busy / busy_s * 100.0
            ),
        ),
    ];
    let raw = json!({
        "streams": n, "rate": p.rate, "seconds": p.seconds, "writes": writes,
        "open_s": open_s,
        "idle_cpu_no_stream": idle_none, "idle_cpu_streams": idle_streams,
        "control_write_s": control_s, "control_cpu_s": control_cpu,
        "control_ack_ms": {"p50": q(&control_ms, 0.5), "p99": q(&control_ms, 0.99)},
        "write_s": write_s, "ack_ms": {"p50": q(&ack_ms, 0.5), "p99": q(&ack_ms, 0.99)},
        "expected": expected, "delivered": delivered, "complete_streams": complete,
        "duplicates": dupes, "wrong_values": wrong, "other_events": other,
        "ended_by_server": ended,
        "latency_from_ack_ms": {"p50": q(&from_ack, 0.5), "p90": q(&from_ack, 0.9), "p99": q(&from_ack, 0.99), "max": q(&from_ack, 1.0)},
        "latency_from_send_ms": {"p50": q(&from_send, 0.5), "p90": q(&from_send, 0.9), "p99": q(&from_send, 0.99), "max": q(&from_send, 1.0)},
        "drain_ms": drain_ms, "busy_s": busy_s, "busy_cpu_s": cpu_busy,
        "client_busy_cpu_s": own_busy, "node_threads_idle": threads_idle,
    });
    Ok(Outcome { rows, raw })
}
