//! Schemathesis against a real node: the node runs in this process (its
//! HTTP API on a free loopback port, its data in a temporary directory),
//! and `schemathesis_run.py` (beside this file) checks that
//! `src/openapi.json` is valid OpenAPI, fuzzes every operation it
//! describes with every check Schemathesis has, then probes what the
//! fuzzer does not send or cannot judge (a method a route lacks, bodies
//! and URIs over the limits, bytes that are not UTF-8, repeated query
//! parameters: each answer must be a JSON `{code, message}`). The test
//! fails when the document is invalid, when Schemathesis reports a
//! failure, when a probe fails, or when the run outlives its time bound,
//! and prints what the driver printed.
//!
//! The driver installs Schemathesis and openapi-spec-validator with pip
//! when they are missing; without them (no network) the test fails, it
//! does not skip. Python 3 is needed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chorus_node::{Config, run};

/// The whole driver (installs, validation, the fuzzing run) is killed
/// past this: a hung run fails instead of holding CI.
const WALL_CLOCK: Duration = Duration::from_secs(360);
/// What the driver gives Schemathesis itself (it stops the run then and
/// prints what it found).
const FUZZ_BUDGET_SECS: u64 = 180;

/// A free loopback address (bound, then released for the node).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A node running on its own multi-threaded runtime on a thread; stopped
/// and joined when dropped.
struct InProcessNode {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl InProcessNode {
    fn start(dir: &Path, gossip: SocketAddr, http: SocketAddr) -> InProcessNode {
        let config = Config {
            http: Some(http),
            ..Config::new(dir.to_path_buf(), gossip)
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build the runtime: {e}"))?;
            runtime
                .block_on(run(config, async {
                    let _ = rx.await;
                }))
                .map_err(|e| e.to_string())
        });
        let mut node = InProcessNode {
            shutdown: Some(tx),
            thread: Some(thread),
        };
        let started = Instant::now();
        while TcpStream::connect(http).is_err() {
            if node.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                let outcome = node.thread.take().map(JoinHandle::join);
                panic!("the node stopped before its API came up: {outcome:?}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the node's API never came up on {http}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn schemathesis_finds_no_failure_against_a_running_node() {
    let data = tempfile::tempdir().expect("a data directory");
    let work = tempfile::tempdir().expect("a work directory");
    let (gossip, http) = (free_addr(), free_addr());
    let _node = InProcessNode::start(data.path(), gossip, http);

    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log_path = work.path().join("driver.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut child = Command::new("python3")
        .arg(here.join("tests/schemathesis_run.py"))
        .arg("--url")
        .arg(format!("http://{http}"))
        .arg("--schema")
        .arg(here.join("src/openapi.json"))
        .arg("--work")
        .arg(work.path())
        .arg("--budget-secs")
        .arg(FUZZ_BUDGET_SECS.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log, twice"))
        .stderr(log)
        // Its own process group: a run past the bound is killed whole,
        // Schemathesis included.
        .process_group(0)
        .spawn()
        .expect("python3 runs (the test needs Python 3)");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the driver's status") {
            break Some(status);
        }
        if started.elapsed() > WALL_CLOCK {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let took = started.elapsed().as_secs();
    match status {
        None => panic!(
            "the Schemathesis driver ran past {} s and was killed ({took} s); its output:\n{output}",
            WALL_CLOCK.as_secs()
        ),
        Some(s) if !s.success() => panic!(
            "the OpenAPI document or the server failed the contract ({s}, {took} s); the driver's output:\n{output}"
        ),
        Some(_) => println!("{output}\n(took {took} s)"),
    }
}
