//! `chorus-bench __zmq-load ENDPOINT put|get CLIENTS SECONDS`: a closed-loop
//! load on a node's ZeroMQ broker from native (libzmq) clients, one thread
//! each, one request in flight per client, as redis-benchmark drives Redis
//! without pipelining. Prints `{"ops", "rps", "p50_ms", "p99_ms"}`. Run by
//! `scripts/zmq-bench.py` beside its pyzmq clients, to show how much of a
//! figure is the Python client's.

use std::time::{Duration, Instant};

use crate::harness::Res;

/// Keys the load spreads over (the script writes them all first).
const KEYS: u64 = 10_000;

pub(crate) fn child(args: &[String]) -> Res<()> {
    let [endpoint, op, clients, seconds] = args else {
        return Err("usage: __zmq-load ENDPOINT put|get CLIENTS SECONDS".into());
    };
    let clients: usize = clients.parse()?;
    let seconds: f64 = seconds.parse()?;
    let put = match op.as_str() {
        "put" => true,
        "get" => false,
        other => return Err(format!("op {other:?}: put or get").into()),
    };
    let context = zmq::Context::new();
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (context, endpoint) = (context.clone(), endpoint.clone());
            std::thread::spawn(move || -> Result<Vec<f64>, String> {
                let s = context.socket(zmq::DEALER).map_err(|e| e.to_string())?;
                s.set_linger(0).map_err(|e| e.to_string())?;
                s.set_rcvtimeo(10_000).map_err(|e| e.to_string())?;
                s.connect(&endpoint).map_err(|e| e.to_string())?;
                let mut lat = Vec::new();
                let mut x = (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while Instant::now() < start {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let value = "x".repeat(64);
                for id in 0u64.. {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("key:{:012}", x % KEYS);
                    let body = if put {
                        serde_json::json!({"id": id, "op": "put", "prefix": "bench", "sub": "kv", "key": key, "value": value})
                    } else {
                        serde_json::json!({"id": id, "op": "get", "prefix": "bench", "sub": "kv", "key": key})
                    };
                    s.send_multipart([&b""[..], body.to_string().as_bytes()], 0)
                        .map_err(|e| e.to_string())?;
                    let frames = s.recv_multipart(0).map_err(|e| format!("no reply: {e}"))?;
                    let reply: serde_json::Value = frames
                        .last()
                        .and_then(|b| serde_json::from_slice(b).ok())
                        .ok_or("a reply that is not JSON")?;
                    if reply["ok"] != true {
                        return Err(format!("refused: {reply}"));
                    }
                    lat.push(t.elapsed().as_secs_f64());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| "a client panicked")??);
    }
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64) * q) as usize)
            .copied()
            .unwrap_or(0.0)
            * 1e3
    };
    println!(
        "{}",
        serde_json::json!({"ops": all.len(), "rps": all.len() as f64 / seconds, "p50_ms": pick(0.5), "p99_ms": pick(0.99)})
    );
    Ok(())
}
