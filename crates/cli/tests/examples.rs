//! Every shell and Python example in README.md and docs/*.md runs as
//! written.
//!
//! Each ```sh, ```bash, ```console and ```python block runs in a fresh
//! temporary directory (also its $HOME) with the built `chorus` first on
//! PATH, under `bash -euo pipefail` (or `python3`), with a timeout. Free
//! ports come in environment variables the examples use with a default
//! (`${HTTP_PORT:-7800}`): HTTP_PORT, GOSSIP_PORT, ZMQ_PORT, PUB_PORT, and
//! HTTP_PORT2, GOSSIP_PORT2, HTTP_PORT3, GOSSIP_PORT3 for a second and
//! third node.
//!
//! A block is excluded only by a marker on the line before its fence,
//! with a reason: `<!-- example: skip (why) -->`. `<!-- example:
//! with-node -->` makes the harness start a node first (`chorus serve
//! --insecure` on HTTP_PORT and GOSSIP_PORT, with its ZeroMQ broker on
//! ZMQ_PORT and PUB_PORT, its directory in $CHORUS_DIR) and export
//! CHORUS_URL. `docs/` is linked into the directory, so paths such as
//! docs/examples/chorus_zmq.py work as from the repository's root.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::CHORUS;

const TIMEOUT: Duration = Duration::from_secs(60);
const PORTS: [&str; 8] = [
    "HTTP_PORT",
    "GOSSIP_PORT",
    "ZMQ_PORT",
    "PUB_PORT",
    "HTTP_PORT2",
    "GOSSIP_PORT2",
    "HTTP_PORT3",
    "GOSSIP_PORT3",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Run,
    WithNode,
    Skip(String),
}

#[derive(Debug)]
struct Block {
    file: PathBuf,
    /// The line of the opening fence (1-based).
    line: usize,
    lang: String,
    code: String,
    mode: Mode,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The marker on the line before a fence, if any.
fn marker(line: &str, file: &Path, at: usize) -> Option<Mode> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("example:")?
        .trim();
    if inner == "with-node" {
        return Some(Mode::WithNode);
    }
    if let Some(reason) = inner.strip_prefix("skip") {
        let reason = reason.trim();
        let reason = reason
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(reason)
            .trim();
        assert!(
            !reason.is_empty(),
            "{}:{at}: `example: skip` needs a reason: <!-- example: skip (why) -->",
            file.display()
        );
        return Some(Mode::Skip(reason.to_string()));
    }
    panic!(
        "{}:{at}: unknown example marker {line:?}: use `<!-- example: skip (why) -->` or `<!-- example: with-node -->`",
        file.display()
    );
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).expect("read markdown");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let lang = lang.trim().to_string();
        let start = i;
        let mut code = String::new();
        i += 1;
        while i < lines.len() && !lines[i].starts_with("```") {
            code.push_str(lines[i]);
            code.push('\n');
            i += 1;
        }
        i += 1;
        if !matches!(lang.as_str(), "sh" | "bash" | "console" | "python") {
            continue;
        }
        let mode = start
            .checked_sub(1)
            .and_then(|b| marker(lines[b], file, b + 1))
            .unwrap_or(Mode::Run);
        out.push(Block {
            file: file.to_path_buf(),
            line: start + 1,
            lang,
            code,
            mode,
        });
    }
    out
}

/// Kills a process group the harness started (the block and whatever it
/// left running in the background).
fn kill_group(child: &mut Child) {
    let pgid = child.id();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

fn base_command(program: &str, work: &Path, env: &[(String, String)]) -> Command {
    let bin = Path::new(CHORUS).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(program);
    cmd.current_dir(work)
        .env("PATH", path)
        .env("HOME", work)
        .env("PYTHONPATH", root().join("docs/examples"))
        .env("CHORUS_EXAMPLES_ROOT", root())
        .env_remove("CHORUS_DIR")
        .env_remove("CHORUS_TOKEN")
        .env_remove("CHORUS_STAGE_DIR")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// Starts a node for a `with-node` block; waits for /health.
fn start_node(
    work: &Path,
    env: &[(String, String)],
    port: &str,
    gossip: &str,
    zmq: (&str, &str),
) -> Child {
    let log = std::fs::File::create(work.join("harness-node.log")).expect("node log");
    let mut child = base_command(CHORUS, work, env)
        .arg("--dir")
        .arg(work.join("harness-node"))
        .args([
            "serve",
            "--insecure",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--gossip",
            &format!("127.0.0.1:{gossip}"),
            "--zmq",
            &format!("tcp://127.0.0.1:{}", zmq.0),
            "--zmq-pub",
            &format!("tcp://127.0.0.1:{}", zmq.1),
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the node");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&mut child);
    panic!(
        "the harness's node did not start: {}",
        std::fs::read_to_string(work.join("harness-node.log")).unwrap_or_default()
    );
}

/// Runs one block; returns its output on failure.
fn run(block: &Block) -> Result<(), String> {
    let tmp = tempfile::tempdir().expect("tmp");
    let work = tmp.path();
    // Every listener is held until all ports are chosen, so that no two
    // variables get the same port.
    let held: Vec<std::net::TcpListener> = PORTS
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let mut env: Vec<(String, String)> = PORTS
        .iter()
        .zip(&held)
        .map(|(name, l)| {
            let port = l.local_addr().map(|a| a.port()).expect("a port");
            (name.to_string(), port.to_string())
        })
        .collect();
    drop(held);
    let var = |env: &[(String, String)], name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect("a port variable")
    };
    let mut node = None;
    if block.mode == Mode::WithNode {
        let (port, gossip) = (var(&env, "HTTP_PORT"), var(&env, "GOSSIP_PORT"));
        let (z, p) = (var(&env, "ZMQ_PORT"), var(&env, "PUB_PORT"));
        node = Some(start_node(work, &env, &port, &gossip, (&z, &p)));
        env.push(("CHORUS_URL".into(), format!("http://127.0.0.1:{port}")));
        env.push((
            "CHORUS_DIR".into(),
            work.join("harness-node").display().to_string(),
        ));
    }
    // Paths in the docs are relative to the repository's root.
    std::os::unix::fs::symlink(root().join("docs"), work.join("docs")).expect("link docs/");
    let script = work.join(if block.lang == "python" {
        "example.py"
    } else {
        "example.sh"
    });
    std::fs::write(&script, &block.code).expect("write the example");
    let output = work.join("example.out");
    let out = std::fs::File::create(&output).expect("output file");
    let mut cmd = if block.lang == "python" {
        base_command("python3", work, &env)
    } else {
        let mut c = base_command("bash", work, &env);
        c.arg("-euo").arg("pipefail");
        c
    };
    let mut child = cmd
        .arg(&script)
        .stdout(out.try_clone().expect("output"))
        .stderr(out)
        .spawn()
        .expect("run the example");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the block left running goes too.
    kill_group(&mut child);
    if let Some(mut n) = node {
        kill_group(&mut n);
    }
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(&output) {
        let _ = f.read_to_string(&mut text);
    }
    // The Python module is built and installed by ./scripts/test.sh (into
    // its own virtual environment, first on PATH); a bare `cargo test`
    // has no `chorus` module to import.
    if text.contains("No module named 'chorus'") {
        text.push_str(
            "\n(the `chorus` Python module is not installed for this python3: run ./scripts/test.sh, which builds it into target/python-venv and puts that first on PATH)",
        );
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("exited with {s}\n{text}")),
        None => Err(format!("timed out after {} s\n{text}", TIMEOUT.as_secs())),
    }
}

#[test]
fn every_doc_example_runs_as_written() {
    let root = root();
    let all: Vec<Block> = markdown_files().iter().flat_map(|f| blocks(f)).collect();
    assert!(
        all.len() > 5,
        "found only {} example blocks: is the parser broken?",
        all.len()
    );
    let only = std::env::var("CHORUS_EXAMPLE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in &all {
        let name = format!(
            "{}:{}",
            block
                .file
                .strip_prefix(&root)
                .unwrap_or(&block.file)
                .display(),
            block.line
        );
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        if let Mode::Skip(reason) = &block.mode {
            eprintln!("skip {name}: {reason}");
            continue;
        }
        let t = Instant::now();
        let result = run(block);
        eprintln!(
            "{} {name} ({:.1} s)",
            if result.is_ok() { "ok  " } else { "FAIL" },
            t.elapsed().as_secs_f64()
        );
        ran += 1;
        if let Err(e) = result {
            failures.push(format!(
                "--- {name} ({})\n{}\n--- output:\n{e}",
                block.lang, block.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} doc examples failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn markers_parse() {
    let f = Path::new("x.md");
    assert_eq!(marker("some text", f, 1), None);
    assert_eq!(
        marker("<!-- example: skip (shows output) -->", f, 1),
        Some(Mode::Skip("shows output".into()))
    );
    assert_eq!(
        marker("<!-- example: with-node -->", f, 1),
        Some(Mode::WithNode)
    );
}
