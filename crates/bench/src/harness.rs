//! The small timing harness shared by every benchmark: configuration, result
//! rows, statistics, data generation, process memory and child processes.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every fallible function in the bench returns this.
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Bytes in every value the benchmarks write.
pub(crate) const VALUE_LEN: usize = 100;

/// How a run is configured.
#[derive(Debug, Clone)]
pub(crate) struct Cfg {
    /// Shrink counts about tenfold for a smoke run.
    pub(crate) quick: bool,
    /// Directory the temporary stores are created in.
    pub(crate) base: PathBuf,
    /// `watch-fanout`: streams to open (default 1,000).
    pub(crate) streams: Option<usize>,
    /// `watch-fanout`: writes per second (default 1,000).
    pub(crate) rate: Option<usize>,
    /// `watch-fanout`: seconds of each phase (default 10).
    pub(crate) seconds: Option<f64>,
}

impl Cfg {
    /// `full` in a full run, about a tenth of it with `--quick`.
    pub(crate) fn n(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }

    /// Repetitions whose median is reported.
    pub(crate) fn reps(&self, full: usize) -> usize {
        if self.quick { full.min(3) } else { full }
    }

    /// A fresh temporary directory under the base directory.
    pub(crate) fn tempdir(&self, name: &str) -> Res<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(&format!("chorus-bench-{name}-"))
            .tempdir_in(&self.base)?)
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) bench: String,
    pub(crate) chorus: String,
    pub(crate) peer: String,
    pub(crate) peer_figure: String,
    /// How many times better Chorus is than the peer (> 1: Chorus better).
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: String,
    pub(crate) met: Option<bool>,
}

impl Row {
    /// A row with a ratio and a goal on that ratio (`ratio >= min`).
    pub(crate) fn ratio_goal(
        bench: &str,
        chorus: String,
        peer: &str,
        peer_figure: String,
        ratio: f64,
        min: Option<f64>,
    ) -> Row {
        Row {
            bench: bench.to_string(),
            chorus,
            peer: peer.to_string(),
            peer_figure,
            ratio: Some(ratio),
            goal: min.map_or_else(|| "none (context)".to_string(), |m| format!(">= {m}x")),
            met: min.map(|m| ratio >= m),
        }
    }

    /// A row whose goal is a bound on how much slower Chorus may be than
    /// the peer (Chorus time / peer time <= `max`). The ratio column keeps
    /// the table's convention (peer time / Chorus time).
    pub(crate) fn slowdown_goal(
        bench: &str,
        chorus: String,
        peer: &str,
        peer_figure: String,
        ratio: f64,
        max: f64,
    ) -> Row {
        Row {
            bench: bench.to_string(),
            chorus,
            peer: peer.to_string(),
            peer_figure,
            ratio: Some(ratio),
            goal: format!("within {max}x of the peer (>= {})", fmt_ratio(1.0 / max)),
            met: Some(ratio * max >= 1.0),
        }
    }

    /// A row given as context only: no ratio column, no goal.
    pub(crate) fn context(bench: &str, chorus: String, peer: &str, peer_figure: String) -> Row {
        Row {
            bench: bench.to_string(),
            chorus,
            peer: peer.to_string(),
            peer_figure,
            ratio: None,
            goal: "none (context)".to_string(),
            met: None,
        }
    }

    /// A row judged on an absolute goal, with no ratio to the peer.
    pub(crate) fn absolute(
        bench: &str,
        chorus: String,
        peer: &str,
        peer_figure: String,
        goal: &str,
        met: bool,
    ) -> Row {
        Row {
            bench: bench.to_string(),
            chorus,
            peer: peer.to_string(),
            peer_figure,
            ratio: None,
            goal: goal.to_string(),
            met: Some(met),
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "benchmark": self.bench,
            "chorus": self.chorus,
            "peer": self.peer,
            "peer_figure": self.peer_figure,
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
        })
    }
}

/// What one benchmark produced: table rows and raw figures.
pub(crate) struct Outcome {
    pub(crate) rows: Vec<Row>,
    pub(crate) raw: serde_json::Value,
}

/// Prints rows as a markdown table.
pub(crate) fn print_table(rows: &[Row]) {
    println!();
    println!("| benchmark | Chorus | peer | peer figure | ratio | goal | met? |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map_or_else(|| "—".to_string(), fmt_ratio);
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**MISSED**",
            None => "n/a",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.bench, r.chorus, r.peer, r.peer_figure, ratio, r.goal, met
        );
    }
    println!();
    println!(
        "ratio = how many times better Chorus is than the peer (peer time / Chorus time, or Chorus rate / peer rate); > 1 means Chorus is better."
    );
}

pub(crate) fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// A duration in ns/µs/ms/s with three significant digits.
pub(crate) fn fmt_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 1e3 {
        format!("{ns:.1} ns")
    } else if a < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

pub(crate) fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e4 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0}/s")
    }
}

pub(crate) fn fmt_mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Median of a non-empty list (mean of the middle two for even lengths).
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) by nearest rank.
pub(crate) fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs `f` once to warm up, then `reps` times; returns each timed run's
/// duration in nanoseconds. `f` gets the repetition number (0 = warm-up).
pub(crate) fn repeat<F>(reps: usize, mut f: F) -> Res<Vec<f64>>
where
    F: FnMut(usize) -> Res<()>,
{
    f(0)?;
    let mut out = Vec::with_capacity(reps);
    for rep in 1..=reps {
        let t = Instant::now();
        f(rep)?;
        out.push(t.elapsed().as_nanos() as f64);
    }
    Ok(out)
}

/// One engine's part of an interleaved measurement: given the round number
/// (0 is the warm-up), does its fixed amount of work and returns the
/// nanoseconds it measured itself, or `None` to be timed by the caller.
pub(crate) type Task<'a> = (&'static str, Box<dyn FnMut(usize) -> Res<Option<f64>> + 'a>);

/// Runs every task once per round, `rounds` timed rounds after one warm-up
/// round, rotating which task goes first; returns each task's nanoseconds
/// per timed round. Interleaving matters on this kind of machine: the
/// virtual disk's fdatasync latency swings by 30x within seconds, so
/// engines measured one after the other would see different disks.
pub(crate) fn interleaved(rounds: usize, tasks: &mut [Task<'_>]) -> Res<Vec<Vec<f64>>> {
    let n = tasks.len();
    let mut out = vec![Vec::with_capacity(rounds); n];
    for round in 0..=rounds {
        for j in 0..n {
            let at = (round + j) % n;
            let (name, task) = &mut tasks[at];
            if round == 0 {
                eprintln!("  warm-up: {name}");
            }
            let t = Instant::now();
            let own = task(round)?;
            let ns = own.unwrap_or_else(|| t.elapsed().as_nanos() as f64);
            if round > 0 {
                out[at].push(ns);
            }
        }
    }
    Ok(out)
}

/// Median over rounds of `slow[i] / fast[i]`: the ratio of two engines
/// measured back to back in the same round.
pub(crate) fn paired_ratio(fast: &[f64], slow: &[f64]) -> f64 {
    let r: Vec<f64> = fast.iter().zip(slow).map(|(f, s)| s / f).collect();
    median(&r)
}

/// The key the benchmarks use for index `i`: `key-0000123`.
pub(crate) fn key(i: u64) -> Vec<u8> {
    format!("key-{i:07}").into_bytes()
}

/// A 100-byte value that names `i` (so a reader can verify it).
pub(crate) fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i:020}-").into_bytes();
    v.resize(VALUE_LEN, b'v');
    v
}

/// xorshift64*: a cheap, deterministic stream of pseudo-random numbers.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Wall-clock nanoseconds since the epoch (CLOCK_REALTIME, which every
/// process on the machine reads from the same kernel clock).
pub(crate) fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Fields of /proc/self/status in bytes: VmRSS, VmHWM, RssAnon, RssFile.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) hwm: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
}

pub(crate) fn mem() -> Res<Mem> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let mut m = Mem::default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let kb: u64 = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        match name {
            "VmRSS" => m.rss = kb * 1024,
            "VmHWM" => m.hwm = kb * 1024,
            "RssAnon" => m.anon = kb * 1024,
            "RssFile" => m.file = kb * 1024,
            _ => {}
        }
    }
    Ok(m)
}

/// Total bytes of the regular files under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A child process running a hidden subcommand of this binary, talking
/// line by line over its stdin and stdout.
pub(crate) struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Kid {
    /// Starts `chorus-bench <args>` (this same executable).
    pub(crate) fn spawn(args: &[String]) -> Res<Kid> {
        Kid::spawn_program(std::env::current_exe()?, args)
    }

    /// Starts another program speaking the same line protocol.
    pub(crate) fn spawn_program(program: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Res<Kid> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("child has no stdin")?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        Ok(Kid {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    pub(crate) fn send(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("child stdin closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line the child prints, without its newline.
    pub(crate) fn recv(&mut self) -> Res<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("child closed its stdout early (see its stderr above)".into());
        }
        Ok(line.trim_end().to_string())
    }

    /// Reads a line and checks it starts with `word`; returns the rest.
    pub(crate) fn expect(&mut self, word: &str) -> Res<String> {
        let line = self.recv()?;
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(format!("child said {line:?}, expected {word:?}").into()),
        }
    }

    /// Closes stdin and waits for a clean exit.
    pub(crate) fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("child exited with {status}").into());
        }
        Ok(())
    }
}

/// In a child: prints one line to stdout and flushes it.
pub(crate) fn say(line: &str) -> Res<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// In a child: reads one line from stdin (None at end of input).
pub(crate) fn hear() -> Res<Option<String>> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end().to_string()))
}

/// Describes the machine and the filesystem of `dir`.
pub(crate) fn machine(dir: &Path) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (fs, dev, mount) = filesystem(dir);
    serde_json::json!({
        "nproc": nproc,
        "cpu": model,
        "kernel": kernel,
        "dir": dir.display().to_string(),
        "fs": fs,
        "device": dev,
        "mount": mount,
        "sqlite": rusqlite::version(),
        "lmdb": heed::lmdb_version().string,
    })
}

/// (fs type, device, mount point) of the mount holding `dir`.
fn filesystem(dir: &Path) -> (String, String, String) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mount = Path::new(f[1]);
        if dir.starts_with(mount) {
            let len = f[1].len();
            if best.as_ref().is_none_or(|(l, _)| len >= *l) {
                best = Some((len, (f[2].to_string(), f[0].to_string(), f[1].to_string())));
            }
        }
    }
    best.map(|(_, b)| b).unwrap_or_default()
}

/// Sleeps briefly so page-cache writeback from the previous benchmark does
/// not land in the next one's timings.
pub(crate) fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// fields 14 and 15 of `/proc/PID/stat`.
pub(crate) fn proc_cpu_seconds(pid: u32) -> Res<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Res<u64> {
        Ok(fields
            .get(i)
            .ok_or("/proc/PID/stat is too short")?
            .parse()?)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Raises this process's open-file limit to its hard limit (children
/// started afterwards inherit it); returns the new soft limit.
pub(crate) fn raise_fd_limit() -> Res<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    Ok(lim.current.unwrap_or(u64::MAX))
}

/// Installs Debian packages with apt-get (through sudo unless root), for
/// the peers a benchmark starts itself (etcd).
pub(crate) fn apt_install(packages: &[&str]) -> Res<()> {
    let root = rustix::process::geteuid().is_root();
    let run = |args: &[&str]| -> Res<()> {
        // RUNLEVEL=1: Debian's postinst leaves the packaged service stopped.
        let mut cmd = Command::new(if root { "env" } else { "sudo" });
        if !root {
            cmd.arg("env");
        }
        let status = cmd
            .args(["DEBIAN_FRONTEND=noninteractive", "RUNLEVEL=1"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
        if !status.success() {
            return Err(format!("`{}` failed: {status}", args.join(" ")).into());
        }
        Ok(())
    };
    eprintln!("installing {} with apt-get", packages.join(", "));
    run(&["apt-get", "update", "-qq"])?;
    let mut install = vec!["apt-get", "install", "-y", "-qq"];
    install.extend_from_slice(packages);
    run(&install)
}
