//! A worker process (src/bin/worker.rs) driven line by line, shared by the
//! tests that cross processes.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use chorus_core::FullPrefix;
use chorus_store::{Metadata, Options, Origin, Store};

/// Opens (creating if needed) the store in `dir`, with default options.
pub fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        Options {
            create: true,
            ..Options::default()
        },
    )
    .expect("open")
}

/// The metadata API over [`open`].
pub fn meta(dir: &Path) -> Metadata {
    Metadata::new(open(dir))
}

/// `n` stores in fresh temporary directories (kept while the first half
/// of the pair lives), as the nodes of a simulated cluster.
pub fn nodes(n: usize) -> (Vec<tempfile::TempDir>, Vec<Metadata>) {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let metas = dirs.iter().map(|d| meta(d.path())).collect();
    (dirs, metas)
}

/// Copies every object of `fp` from one node's store to another's, as
/// replication would deliver them (merged as coming from a peer).
pub fn ship(from: &Metadata, to: &Metadata, fp: &FullPrefix) {
    let snap = from.store().snapshot().expect("snapshot");
    let objects = snap
        .iter_prefix(fp)
        .map(|(k, e)| {
            (
                fp.clone(),
                k.as_bytes().to_vec(),
                chorus_core::object::Object::decode(&e.value).expect("an object"),
            )
        })
        .collect();
    to.merge(Origin::Peer([9; 16]), objects).expect("merge");
}

pub const WORKER: &str = env!("CARGO_BIN_EXE_chorus-store-worker");

pub struct Worker {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub fn spawn(args: &[&str]) -> Worker {
        let mut child = Command::new(WORKER)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        }
    }

    pub fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("worker ended early")
            .expect("read line")
    }

    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if let Some(rest) = l.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to worker");
        stdin.flush().expect("flush");
    }

    pub fn finish(mut self) {
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "worker failed: {status}");
    }
}
