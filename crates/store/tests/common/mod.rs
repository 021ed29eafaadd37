//! A worker process (src/bin/worker.rs) driven line by line, shared by the
//! tests that cross processes.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
