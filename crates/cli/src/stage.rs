//! `chorus stage`: a local data directory (default `~/.chorus/stage`) that
//! writers use at local speed, and its push/pull daemon; `chorus stage
//! status` reads what waits; `chorus stage push` asks the daemon to push
//! now (through `chorus_store::stage_request`). The daemon is in `chorus_node::stage`;
//! docs/staging.md has the rules.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chorus_node::error::Kind;
use chorus_node::stage::{Follow, StageConfig, Upstream};
use chorus_store::stage_request::{self, PushProgress};
use chorus_store::{Metadata, Options, PutOptions, PutValue, Store};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::{Cli, Failure, writable_prefix};

/// The stage directory when neither --dir, $CHORUS_STAGE_DIR nor the
/// config file names one.
const DEFAULT_DIR: &str = "~/.chorus/stage";
/// The environment variable naming the stage directory.
const STAGE_DIR_VAR: &str = "CHORUS_STAGE_DIR";
/// Most keys a batch may hold (the pending set is kept in memory).
const BATCH_MAX: usize = 1_000_000;
/// Longest window (the upstream's limit too).
const WINDOW_MAX: Duration = Duration::from_secs(86_400);

#[derive(Args, Debug)]
pub(crate) struct StageArgs {
    #[command(subcommand)]
    command: Option<StageCommand>,
    /// The upstream node's HTTP API: http://HOST:PORT
    #[arg(long)]
    upstream: Option<String>,
    /// A JSON file with the same fields (upstream, token, quiet, batch,
    /// window, priority, follow, pull_interval, dir); flags override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Push once no local write came for this long [default: 10s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    quiet: Option<String>,
    /// Push at once when this many keys are pending [default: 10000]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    batch: Option<String>,
    /// Writes this close in time are near-simultaneous [default: 1s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    window: Option<String>,
    /// 0-255: on a near-simultaneous write, the higher priority wins [default: 0]
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    priority: Option<String>,
    /// PREFIX or PREFIX/SUBPREFIX to pull from the upstream; repeat for
    /// several [default: the full prefixes pushed to]
    #[arg(long, value_name = "PREFIX[/SUB]")]
    follow: Vec<String>,
    /// How often the followed prefixes are pulled [default: 1s]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pull_interval: Option<String>,
    /// Read the token sent as `Authorization: Bearer TOKEN` from FILE
    /// (its first line), or from stdin with `-` [default: $CHORUS_TOKEN]
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Refused: a token on the command line is visible to every local user
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "")]
    token: Option<String>,
}

/// Why `--token` is refused, and what to use.
const TOKEN_ON_COMMAND_LINE: &str = "a token on the command line is visible to every local user in `ps`; set CHORUS_TOKEN or use --token-file FILE (- for stdin)";
/// The environment variable holding the token.
const TOKEN_VAR: &str = "CHORUS_TOKEN";
/// Longest token file read (a token is at most 8 KiB).
const TOKEN_FILE_MAX: u64 = 64 * 1024;

#[derive(Subcommand, Debug)]
enum StageCommand {
    /// What waits to be pushed, the last push, the last error, recent reports
    Status,
    /// Ask the running daemon to push now, skipping the quiet period
    Push {
        /// Wait up to this long until the upstream acknowledged every write
        /// made before the request (seconds, or 500ms, 2m...)
        #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
        wait: Option<String>,
    },
    /// Write COUNT keys TAG-0.. into FULL_PREFIX, one commit each (for tests and benchmarks)
    #[command(hide = true)]
    Fill {
        full_prefix: String,
        count: u64,
        #[arg(long, default_value = "k")]
        tag: String,
        /// Pad each value with '.' to this many bytes
        #[arg(long, default_value_t = 0)]
        size: usize,
    },
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(flag: &str, text: &str) -> Result<Duration, Failure> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let secs = number.trim().parse::<f64>().map(|n| n * scale);
    match secs {
        Ok(s) if (0.0..1e9).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Ok(s) if s < 0.0 => Err(Failure::usage(format!(
            "{flag} {text}: a duration cannot be negative; give one like 10s or 500ms"
        ))),
        _ => Err(Failure::usage(format!(
            "{flag} {text:?} is not a duration: give a number with ms, s, m or h, like 10s or 500ms"
        ))),
    }
}

/// The configuration file's fields, all optional.
#[derive(Default)]
struct FileConfig {
    upstream: Option<String>,
    token: Option<String>,
    quiet: Option<String>,
    batch: Option<String>,
    window: Option<String>,
    priority: Option<String>,
    follow: Vec<String>,
    pull_interval: Option<String>,
    dir: Option<PathBuf>,
}

fn read_config(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read --config {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "--config {} is not JSON ({e}): write {{\"upstream\": \"http://127.0.0.1:7800\", \"quiet\": \"10s\"}}",
            path.display()
        ))
    })?;
    let Some(fields) = value.as_object() else {
        return Err(Failure::usage(format!(
            "--config {}: the file must hold one JSON object",
            path.display()
        )));
    };
    let mut out = FileConfig::default();
    for (name, v) in fields {
        let text = match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let want = |what: &str| {
            Failure::usage(format!(
                "--config {}: \"{name}\" must be {what}",
                path.display()
            ))
        };
        match name.as_str() {
            "upstream" => out.upstream = Some(text.ok_or_else(|| want("a URL string"))?),
            "token" => out.token = Some(text.ok_or_else(|| want("a string"))?),
            "quiet" => out.quiet = Some(text.ok_or_else(|| want("a duration like \"10s\""))?),
            "window" => out.window = Some(text.ok_or_else(|| want("a duration like \"1s\""))?),
            "pull_interval" => {
                out.pull_interval = Some(text.ok_or_else(|| want("a duration like \"1s\""))?);
            }
            "batch" => out.batch = Some(text.ok_or_else(|| want("a number"))?),
            "priority" => out.priority = Some(text.ok_or_else(|| want("a number 0-255"))?),
            "dir" => out.dir = Some(PathBuf::from(text.ok_or_else(|| want("a path string"))?)),
            "follow" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| want("a list of PREFIX or PREFIX/SUBPREFIX strings"))?;
                for f in list {
                    let s = f
                        .as_str()
                        .ok_or_else(|| want("a list of PREFIX or PREFIX/SUBPREFIX strings"))?;
                    out.follow.push(s.to_string());
                }
            }
            other => {
                return Err(Failure::usage(format!(
                    "--config {}: unknown field \"{other}\"; the fields are upstream, token, quiet, batch, window, priority, follow, pull_interval, dir",
                    path.display()
                )));
            }
        }
    }
    if out.token.is_some() {
        warn_if_readable_by_others(path);
    }
    Ok(out)
}

/// A config file holding a token should be readable by its owner only.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "chorus: warning: --config {} holds a token and other users may read it (mode {mode:o}): `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

fn parse_count(flag: &str, text: &str, min: u64, max: u64) -> Result<u64, Failure> {
    match text.trim().parse::<i128>() {
        Ok(n) if n >= i128::from(min) && n <= i128::from(max) => Ok(n as u64),
        _ => Err(Failure::usage(format!(
            "{flag} {text}: give a whole number from {min} to {max}"
        ))),
    }
}

/// The stage directory: --dir given on the command line, else
/// $CHORUS_STAGE_DIR, else the config file's, else `~/.chorus/stage`.
/// Never $CHORUS_DIR: that is often a served node's directory, and the
/// stage's keys must not land there (and replicate).
fn stage_dir(cli: &Cli, file: Option<&FileConfig>) -> PathBuf {
    if cli.dir_on_command_line {
        return cli.dir.clone();
    }
    let dir = std::env::var_os(STAGE_DIR_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| file.and_then(|f| f.dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    home_expanded(dir)
}

/// `~/REST` as `$HOME/REST` (the shell does not expand a default or a
/// config file's path).
fn home_expanded(dir: PathBuf) -> PathBuf {
    match (dir.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => dir,
    }
}

/// The daemon's configuration from flags over the config file.
fn config(args: &StageArgs, file: &FileConfig) -> Result<StageConfig, Failure> {
    let upstream = args
        .upstream
        .clone()
        .or_else(|| file.upstream.clone())
        .ok_or_else(|| {
            Failure::usage(
                "give --upstream http://HOST:PORT (the HTTP API of a `chorus serve` node), or a --config file with \"upstream\"",
            )
        })?;
    let upstream = Upstream::parse(&upstream).map_err(Failure::usage)?;
    let pick = |flag: &Option<String>, from_file: &Option<String>| {
        flag.clone().or_else(|| from_file.clone())
    };
    let quiet = match pick(&args.quiet, &file.quiet) {
        Some(q) => parse_duration("--quiet", &q)?,
        None => Duration::from_secs(10),
    };
    if quiet.is_zero() {
        return Err(Failure::usage(
            "--quiet 0: the quiet period must be above zero (use --batch 1 to push every write at once)",
        ));
    }
    let window = match pick(&args.window, &file.window) {
        Some(w) => parse_duration("--window", &w)?,
        None => Duration::from_secs(1),
    };
    if window > WINDOW_MAX {
        return Err(Failure::usage(format!(
            "--window {window:?}: the longest window is one day"
        )));
    }
    let pull_interval = match pick(&args.pull_interval, &file.pull_interval) {
        Some(p) => parse_duration("--pull-interval", &p)?,
        None => Duration::from_secs(1),
    };
    if pull_interval < Duration::from_millis(10) {
        return Err(Failure::usage(format!(
            "--pull-interval {pull_interval:?}: give at least 10ms"
        )));
    }
    let batch = match pick(&args.batch, &file.batch) {
        Some(b) => parse_count("--batch", &b, 1, BATCH_MAX as u64)? as usize,
        None => 10_000,
    };
    let priority = match pick(&args.priority, &file.priority) {
        Some(p) => parse_count("--priority", &p, 0, 255)? as u8,
        None => 0,
    };
    let follow_texts = if args.follow.is_empty() {
        &file.follow
    } else {
        &args.follow
    };
    let follow = follow_texts
        .iter()
        .map(|f| Follow::parse(f).map_err(Failure::usage))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StageConfig {
        upstream,
        token: token(args, file)?,
        quiet,
        batch,
        window,
        priority,
        follow,
        pull_interval,
    })
}

/// The token: --token-file, else $CHORUS_TOKEN, else the config file's.
/// Never an argument: every local user sees those in `ps`.
fn token(args: &StageArgs, file: &FileConfig) -> Result<Option<String>, Failure> {
    if let Some(path) = &args.token_file {
        return read_token_file(path).map(Some);
    }
    match std::env::var(TOKEN_VAR) {
        Ok(t) if !t.trim().is_empty() => return Ok(Some(t.trim().to_string())),
        _ => {}
    }
    Ok(file.token.clone())
}

/// The first line of `path` (`-`: stdin), which must not be empty.
fn read_token_file(path: &Path) -> Result<String, Failure> {
    use std::io::{BufRead as _, Read as _};
    let shown = path.display();
    let mut line = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(TOKEN_FILE_MAX)
            .read_line(&mut line)
    } else {
        std::fs::File::open(path).and_then(|f| {
            std::io::BufReader::new(f)
                .take(TOKEN_FILE_MAX)
                .read_line(&mut line)
        })
    };
    read.map_err(|e| {
        Failure::usage(format!(
            "cannot read the token from --token-file {shown}: {e}"
        ))
    })?;
    let token = line.trim();
    if token.is_empty() {
        return Err(Failure::usage(format!(
            "--token-file {shown} holds no token: its first line must be the token (from `chorus token create`)"
        )));
    }
    Ok(token.to_string())
}

pub(crate) fn run(cli: &Cli, args: &StageArgs) -> Result<(), Failure> {
    if args.token.is_some() {
        return Err(Failure::usage(TOKEN_ON_COMMAND_LINE));
    }
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let dir = stage_dir(cli, Some(&file));
    match &args.command {
        Some(StageCommand::Status) => status(cli, &dir),
        Some(StageCommand::Push { wait }) => {
            let wait = wait
                .as_deref()
                .map(|w| parse_duration("--wait", w))
                .transpose()?;
            push(cli, &dir, wait)
        }
        Some(StageCommand::Fill {
            full_prefix,
            count,
            tag,
            size,
        }) => fill(cli, &dir, full_prefix, *count, tag, *size),
        None => {
            let config = config(args, &file)?;
            let options = Options {
                create: true,
                ..cli.options()?
            };
            let store = Store::open(&dir, options)?;
            // The stage's lines show as `INFO chorus stage: ...`.
            crate::serve::init_logging(true);
            chorus_node::stage::run(store, config).map_err(crate::serve::node_failure)
        }
    }
}

fn open_existing(cli: &Cli, dir: &Path) -> Result<Store, Failure> {
    Store::open(dir, cli.options()?).map_err(|e| match e {
        chorus_store::Error::NotInitialized { .. } => Failure::not_found(format!(
            "no stage at {}: start one with `chorus stage --upstream http://HOST:PORT` (or give --dir)",
            dir.display()
        )),
        other => other.into(),
    })
}

fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "?".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

fn status(cli: &Cli, dir: &Path) -> Result<(), Failure> {
    let store = open_existing(cli, dir)?;
    let s = chorus_node::stage::status(&store).map_err(crate::serve::node_failure)?;
    crate::emit(cli, s.clone(), || status_text(&s));
    Ok(())
}

/// How often `push --wait` reads the acknowledgement.
const PUSH_POLL: Duration = Duration::from_millis(50);

/// `chorus stage push`: records a request; with `wait`, waits until the
/// daemon acknowledged it, failed, stopped, or the time is up.
fn push(cli: &Cli, dir: &Path, wait: Option<Duration>) -> Result<(), Failure> {
    let meta = Metadata::new(open_existing(cli, dir)?);
    let request = stage_request::request_push(&meta)?;
    let Some(wait) = wait else {
        crate::emit(
            cli,
            json!({"dir": dir, "requested": request.seq, "done": false}),
            || {
                format!(
                    "push requested (commit {}): the daemon on {} pushes now; `chorus stage push --wait 30` waits until the upstream has it",
                    request.seq,
                    dir.display()
                )
            },
        );
        return Ok(());
    };
    // None: so far ahead that it never comes.
    let deadline = Instant::now().checked_add(wait);
    loop {
        match stage_request::push_status(&meta, &request)? {
            PushProgress::Done(ack) => {
                crate::emit(
                    cli,
                    json!({
                        "dir": dir,
                        "requested": request.seq,
                        "done": true,
                        "through": ack.through,
                        "keys": ack.keys,
                        "upstream": ack.upstream,
                    }),
                    || {
                        format!(
                            "pushed: every write to {} before the request is on {} ({} key(s) pushed since the previous request)",
                            dir.display(),
                            if ack.upstream.is_empty() {
                                "the upstream"
                            } else {
                                &ack.upstream
                            },
                            ack.keys
                        )
                    },
                );
                return Ok(());
            }
            PushProgress::NoDaemon => {
                return Err(Failure::not_found(stage_request::no_daemon_message(dir)));
            }
            PushProgress::Failed { message } => return Err(Failure::io(message)),
            PushProgress::Pending if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(Failure::of_kind(
                    Kind::Busy,
                    format!(
                        "the push request (commit {}) is still pending after {}: the daemon on {} keeps it and pushes it; `chorus stage status` shows what waits",
                        request.seq,
                        humantime(wait),
                        dir.display()
                    ),
                ));
            }
            PushProgress::Pending => std::thread::sleep(PUSH_POLL),
        }
    }
}

/// A duration as the user would write it.
fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn status_text(s: &Value) -> String {
    let mut lines = Vec::new();
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    lines.push(format!(
        "stage       {} (node {})",
        text(&s["dir"]),
        text(&s["node"])
    ));
    lines.push(format!(
        "daemon      {}",
        if s["running"].as_bool() == Some(true) {
            format!("running (pid {})", s["pid"])
        } else {
            "not running".into()
        }
    ));
    lines.push(format!(
        "upstream    {}{}",
        s["upstream"].as_str().unwrap_or("none yet"),
        s["upstream_node"]
            .as_str()
            .map_or_else(String::new, |n| format!(" (node {n})"))
    ));
    lines.push(format!(
        "waiting     {} key(s){}",
        s["waiting"],
        s["waiting_note"]
            .as_str()
            .map_or_else(String::new, |n| format!(" ({n})"))
    ));
    let p = &s["last_push"];
    lines.push(if p.is_null() {
        "last push   never".into()
    } else {
        format!(
            "last push   {}: {} key(s) in {} request(s), {} report(s)",
            ago(p["time_ms"].as_u64()),
            p["keys"],
            p["requests"],
            p["reports"]
        )
    });
    lines.push(format!(
        "pushes      {} ({} requests, {} keys in all; {} full push(es))",
        s["pushes_total"], s["requests_total"], s["keys_pushed_total"], s["full_pushes"]
    ));
    let e = &s["last_error"];
    lines.push(if e.is_null() {
        "last error  none".into()
    } else {
        format!(
            "last error  {}: {}",
            ago(e["time_ms"].as_u64()),
            text(&e["message"])
        )
    });
    let follows: Vec<String> = s["pulls"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    lines.push(format!(
        "pulling     {}",
        if follows.is_empty() {
            "nothing yet".into()
        } else {
            follows.join(", ")
        }
    ));
    lines.push(format!(
        "reports     {} near-simultaneous write(s)",
        s["reports_total"]
    ));
    for r in s["recent_reports"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} {}/{}: {} ({})",
            ago(r["recorded_ms"].as_u64()),
            text(&r["full_prefix"]),
            text(&r["key"]),
            text(&r["outcome"]),
            text(&r["detail"])
        ));
    }
    lines.join("\n")
}

/// Writes `count` keys, one commit each, and says how fast.
fn fill(
    cli: &Cli,
    dir: &Path,
    full_prefix: &str,
    count: u64,
    tag: &str,
    size: usize,
) -> Result<(), Failure> {
    let fp = writable_prefix(full_prefix)?;
    let options = Options {
        create: true,
        ..cli.options()?
    };
    let meta = Metadata::new(Store::open(dir, options)?);
    let started = Instant::now();
    for i in 0..count {
        meta.put(
            &fp,
            format!("{tag}-{i}").as_bytes(),
            PutValue::Bytes(padded(format!("value {i} from {tag}"), size)),
            &PutOptions::default(),
        )?;
    }
    let secs = started.elapsed().as_secs_f64();
    crate::emit(
        cli,
        json!({"written": count, "seconds": secs, "per_second": count as f64 / secs.max(1e-9)}),
        || {
            format!(
                "wrote {count} keys in {secs:.3}s ({:.0}/s)",
                count as f64 / secs.max(1e-9)
            )
        },
    );
    Ok(())
}

/// `text`, padded with '.' to `size` bytes.
fn padded(text: String, size: usize) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    if bytes.len() < size {
        bytes.resize(size, b'.');
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |t: &str| {
            parse_duration("--quiet", t)
                .map_err(|f| f.message)
                .expect(t)
        };
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1.5"), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["-1s", "-3", "abc", "10x", "", "s", "NaN"] {
            assert!(parse_duration("--quiet", bad).is_err(), "{bad}");
        }
        let neg = parse_duration("--quiet", "-1s").err().map(|f| f.message);
        assert!(neg.is_some_and(|m| m.contains("negative")));
    }
}
