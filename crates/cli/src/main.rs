//! `chorus`: the command line of a Chorus node.
//!
//! Exit codes scripts can rely on: 0 ok, 1 not found (or not served on this
//! node: see docs/channels.md), 2 bad usage or input, 3 conflict, 4
//! corruption or I/O error, 5 lock timeout or busy. Errors go to
//! stderr as one line that says what happened and what to do; `--json`
//! prints one JSON document on stdout, and on an error also one object
//! `{"code": ..., "message": ...}` with the error's stable code (the same
//! codes as the HTTP and ZeroMQ interfaces: `not_found`, `bad_request`,
//! `conflict`, `storage`, `lock_timeout`, `not_served`, ...; a
//! `not_served` error also lists the serving nodes under `"nodes"`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_node::error::Kind;
use chorus_store::{AutoCompact, Error, Finding, Options, Store, SyncMode, check, repair};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

mod auth;
mod channel;
mod demo;
mod doc;
mod kv;
mod om;
mod op;
mod serve;
mod sim;
mod stage;
mod watch;

/// A replicated metadata store. This build has the embedded engine: any
/// number of processes share one data directory with no server.
#[derive(Parser, Debug)]
#[command(name = "chorus", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Data directory [default: $CHORUS_DIR, else ./chorus-data]
    #[arg(
        long,
        global = true,
        env = "CHORUS_DIR",
        default_value = "chorus-data",
        hide_default_value = true
    )]
    dir: PathBuf,
    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    json: bool,
    /// When commits are made durable
    #[arg(long, global = true, value_enum, default_value_t = Sync::Always)]
    sync: Sync,
    /// Seconds a writer waits for the writer lock before giving up (exit 5)
    #[arg(long, global = true, default_value_t = 10.0)]
    lock_timeout: f64,
    /// Allow a data directory on a network or FUSE filesystem
    #[arg(long, global = true)]
    allow_network_fs: bool,
    /// Compact the log automatically once its dead bytes exceed its live
    /// bytes plus this many MiB
    #[arg(long, global = true, default_value_t = 64, value_name = "MIB")]
    compact_slack_mb: u64,
    /// Never compact automatically (only `chorus compact` does)
    #[arg(long, global = true, conflicts_with = "compact_slack_mb")]
    no_auto_compact: bool,
    /// True when --dir was given on the command line (not $CHORUS_DIR,
    /// not the default): only then do `chorus demo` and `chorus stage` use
    /// it, so that a served $CHORUS_DIR never receives their keys.
    #[arg(skip)]
    dir_on_command_line: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// Sync every commit before acknowledging it
    Always,
    /// Group concurrent commits of one process into one sync
    Batch,
    /// Never sync (a power loss may lose recent commits)
    Never,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory, node id and first log generation
    Init {
        /// Give an existing directory a new node id, keeping its data: run
        /// it on a copy of another node's directory that kept its place (a
        /// cloned machine's disk; a copy elsewhere takes one when opened)
        /// with every process on it stopped
        #[arg(long)]
        new_identity: bool,
    },
    /// Set a key (with --context: values written since that read stay siblings)
    Put(kv::PutArgs),
    /// Print a key's value, or all its siblings with their context (exit 1 if absent)
    Get(kv::GetArgs),
    /// Delete a key: writes a tombstone (exit 1 if absent)
    Del(kv::DelArgs),
    /// Replace a key's siblings by one value
    Resolve(kv::ResolveArgs),
    /// List keys of PREFIX/SUBPREFIX, subprefixes of PREFIX, or every full prefix
    Ls(kv::LsArgs),
    /// The hash of a full prefix's data, or of a whole prefix's
    Hash(kv::HashArgs),
    /// Verify every frame of the log without changing anything (exit 4 if damaged)
    Check,
    /// Salvage every intact commit of a damaged log into a new generation
    Repair,
    /// Rewrite the live state into a new log generation
    Compact,
    /// Node id, generation, log size, keys and the writer-lock holder
    Status,
    /// Documents: JSON objects with _id and _rev, revisions and conflicts
    #[command(subcommand)]
    Doc(doc::DocCommand),
    /// Operation logs: the value at a path is the reduction of its operations
    #[command(subcommand)]
    Op(op::OpCommand),
    /// Print one JSON line per change of a full prefix, until interrupted
    Watch(watch::WatchArgs),
    /// Reducers written as Rhai scripts, for operation logs
    #[command(subcommand)]
    Reducer(op::ReducerCommand),
    /// Open Metadata: import .meta folders into a full prefix and export them back (see docs/om.md)
    #[command(subcommand)]
    Om(om::OmCommand),
    /// Show the engine at work: processes writing one directory at once
    /// (a temporary directory, removed after, unless --dir is given)
    Demo(demo::DemoArgs),
    /// Run this directory as a node of a cluster: replicate with peers
    Serve(serve::ServeArgs),
    /// Leave the cluster: mark this node left in the member list (its daemon stops)
    Leave,
    /// The cluster's CA and node certificates for mutual TLS
    #[command(subcommand)]
    Cluster(serve::ClusterCommand),
    /// Channels: which nodes serve which full prefixes (see docs/channels.md)
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// Stage writes in a local directory ($CHORUS_STAGE_DIR, else ~/.chorus/stage; --dir overrides) and push them upstream after a quiet period
    Stage(stage::StageArgs),
    /// Users with a master secret, for sessions and tokens (see docs/auth.md)
    #[command(subcommand)]
    User(auth::UserCommand),
    /// Sessions: opened with a user's master secret, listed, revoked
    #[command(subcommand)]
    Session(auth::SessionCommand),
    /// Tokens derived from a session, scoped to full prefixes, read or read-write
    #[command(subcommand)]
    Token(auth::TokenCommand),
    /// Simulate the gossip protocols on thousands of nodes (Plumtree beside flooding)
    Sim(sim::SimArgs),
    #[command(hide = true, name = "demo-worker")]
    DemoWorker { tag: String, count: u64 },
}

/// A failure, with the exit code it maps to.
pub(crate) struct Failure {
    kind: Kind,
    message: String,
    /// For `not_served`: the nodes that serve the full prefix.
    serving: Vec<chorus_core::NodeId>,
}

impl Failure {
    /// The error kind: its stable code under `--json` and its exit code
    /// come from the one table (`chorus_node::error`).
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// A failure of this kind.
    pub(crate) fn of_kind(kind: Kind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            serving: Vec::new(),
        }
    }
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure::of_kind(Kind::BadRequest, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Failure::of_kind(Kind::NotFound, message)
    }
    pub(crate) fn io(message: impl Into<String>) -> Self {
        Failure::of_kind(Kind::Storage, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let mut f = Failure::of_kind(e.kind(), e.to_string());
        if let Error::NotServed { nodes, .. } = e {
            f.serving = nodes;
        }
        f
    }
}

impl From<chorus_core::NameError> for Failure {
    fn from(e: chorus_core::NameError) -> Self {
        Failure::usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.dir_on_command_line =
        matches.value_source("dir") == Some(clap::parser::ValueSource::CommandLine);
    // The daemons set up their own logging; every other command still
    // shows the store's warnings (a copied directory taking a new id).
    if !matches!(cli.command, Command::Serve(_) | Command::Stage(_)) {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .try_init();
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(mut f) => {
            let nodes = channel::serving(&cli, &mut f);
            eprintln!("chorus: {}", f.message);
            // One JSON document: a command that already printed its
            // report (a damaged `check`) does not add a second one.
            if cli.json && !EMITTED.load(Ordering::Relaxed) {
                let mut doc = json!({"code": f.kind().code(), "message": f.message});
                if let Some(nodes) = nodes {
                    doc["nodes"] = nodes;
                }
                println!("{doc}");
            }
            ExitCode::from(f.kind.exit_code())
        }
    }
}

impl Cli {
    pub(crate) fn options(&self) -> Result<Options, Failure> {
        if !(self.lock_timeout.is_finite() && self.lock_timeout >= 0.0) {
            return Err(Failure::usage(format!(
                "--lock-timeout {} is not a number of seconds >= 0",
                self.lock_timeout
            )));
        }
        Ok(Options {
            sync: match self.sync {
                Sync::Always => SyncMode::Always,
                Sync::Batch => SyncMode::Batch,
                Sync::Never => SyncMode::Never,
            },
            lock_timeout: Duration::from_secs_f64(self.lock_timeout),
            allow_network_fs: self.allow_network_fs,
            auto_compact: (!self.no_auto_compact).then(|| AutoCompact {
                slack_bytes: self.compact_slack_mb.saturating_mul(1 << 20),
                ..AutoCompact::default()
            }),
            ..Options::default()
        })
    }

    pub(crate) fn open(&self) -> Result<Store, Failure> {
        Ok(Store::open(&self.dir, self.options()?)?)
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Init {
            new_identity: false,
        } => init(cli),
        Command::Init { new_identity: true } => new_identity(cli),
        Command::Put(a) => kv::put(cli, a),
        Command::Get(a) => kv::get(cli, a),
        Command::Del(a) => kv::del(cli, a),
        Command::Resolve(a) => kv::resolve(cli, a),
        Command::Ls(a) => kv::ls(cli, a),
        Command::Hash(a) => kv::hash(cli, a),
        Command::Check => run_check(cli),
        Command::Repair => run_repair(cli),
        Command::Compact => compact(cli),
        Command::Status => status(cli),
        Command::Doc(c) => doc::run(cli, c),
        Command::Op(c) => op::run(cli, c),
        Command::Watch(a) => watch::run(cli, a),
        Command::Reducer(c) => op::reducer(cli, c),
        Command::Om(c) => om::run(cli, c),
        Command::Demo(args) => demo::run(cli, args),
        Command::Sim(args) => sim::run(cli, args),
        Command::Serve(args) => serve::run(cli, args),
        Command::Leave => serve::leave(cli),
        Command::Cluster(c) => serve::cluster(cli, c),
        Command::Channel(c) => channel::run(cli, c),
        Command::Stage(a) => stage::run(cli, a),
        Command::User(c) => auth::user(cli, c),
        Command::Session(c) => auth::session(cli, c),
        Command::Token(c) => auth::token(cli, c),
        Command::DemoWorker { tag, count } => demo::worker(cli, tag, *count),
    }
}

/// Whether [`emit`] printed this command's JSON document.
static EMITTED: AtomicBool = AtomicBool::new(false);

/// Prints a JSON document or a text, depending on `--json`.
fn emit(cli: &Cli, value: Value, text: impl FnOnce() -> String) {
    if cli.json {
        EMITTED.store(true, Ordering::Relaxed);
        println!("{value}");
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{t}");
        }
    }
}

fn parse_prefix(text: &str) -> Result<FullPrefix, Failure> {
    let fp = FullPrefix::parse(text)?;
    if fp.prefix() == chorus_node::auth::AUTH_PREFIX {
        return Err(Failure::usage(format!(
            "{fp} holds users, sessions and the cluster key: use `chorus user`, `chorus session` and `chorus token` (see docs/auth.md)"
        )));
    }
    Ok(fp)
}

fn writable_prefix(text: &str) -> Result<FullPrefix, Failure> {
    let fp = parse_prefix(text)?;
    if fp.is_reserved() {
        return Err(Failure::usage(format!(
            "{fp} is reserved for Chorus itself (names starting with '$'); pick a name without '$'"
        )));
    }
    Ok(fp)
}

fn read_value(arg: &str) -> Result<Vec<u8>, Failure> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::usage(format!("could not read the value from stdin: {e}")))?;
        return Ok(buf);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read(path)
            .map_err(|e| Failure::usage(format!("could not read the value from {path}: {e}")));
    }
    Ok(arg.as_bytes().to_vec())
}

fn init(cli: &Cli) -> Result<(), Failure> {
    let (node_id, created) = Store::init(&cli.dir, &cli.options()?)?;
    if !created {
        // Opening settles the directory's place: a copy of another node's
        // directory takes a new node id here.
        let now = cli.open()?.node_id();
        if now != node_id {
            emit(
                cli,
                json!({"dir": cli.dir, "node_id": now.to_string(), "created": false,
                       "old_node_id": node_id.to_string()}),
                || {
                    format!(
                        "{} is a copy of node {node_id}'s directory: it took the new node id {now}, keeping its data",
                        cli.dir.display()
                    )
                },
            );
            return Ok(());
        }
    }
    emit(
        cli,
        json!({"dir": cli.dir, "node_id": node_id.to_string(), "created": created}),
        || {
            if created {
                format!("initialized {} (node {node_id})", cli.dir.display())
            } else {
                format!(
                    "{} already holds node {node_id}; nothing changed",
                    cli.dir.display()
                )
            }
        },
    );
    Ok(())
}

fn new_identity(cli: &Cli) -> Result<(), Failure> {
    let (old, new) = Store::new_identity(&cli.dir, &cli.options()?)?;
    emit(
        cli,
        json!({"dir": cli.dir, "node_id": new.to_string(), "old_node_id": old.to_string()}),
        || {
            format!(
                "{} is node {new} now (it was node {old}); its data is kept, and what it wrote as {old} is kept as another node's writes",
                cli.dir.display()
            )
        },
    );
    Ok(())
}

fn finding_json(f: &Finding) -> Value {
    match f {
        Finding::Corruption {
            file,
            offset,
            detail,
        } => {
            json!({"kind": "corruption", "file": file, "offset": offset, "detail": detail})
        }
        Finding::TornTail {
            offset,
            bytes,
            detail,
        } => {
            json!({"kind": "torn_tail", "offset": offset, "bytes": bytes, "detail": detail})
        }
        Finding::Unpublished { offset, bytes } => {
            json!({"kind": "unpublished", "offset": offset, "bytes": bytes})
        }
        Finding::StaleFile { name } => json!({"kind": "stale_file", "name": name}),
    }
}

fn finding_text(f: &Finding) -> String {
    match f {
        Finding::Corruption {
            file,
            offset,
            detail,
        } => {
            format!(
                "CORRUPTION in {} at offset {offset}: {detail}; run `chorus repair`",
                file.display()
            )
        }
        Finding::TornTail {
            offset,
            bytes,
            detail,
        } => format!(
            "torn tail at offset {offset} ({bytes} bytes, {detail}): an unfinished write; the next writer cuts it"
        ),
        Finding::Unpublished { offset, bytes } => format!(
            "{bytes} unacknowledged bytes at offset {offset}: a writer is writing, or died writing; the next writer cuts them"
        ),
        Finding::StaleFile { name } => format!(
            "stale file {name}: left by an interrupted compaction; the next writer removes it"
        ),
    }
}

fn run_check(cli: &Cli) -> Result<(), Failure> {
    let report = check(&cli.dir, &cli.options()?)?;
    let findings: Vec<Value> = report.findings.iter().map(finding_json).collect();
    emit(
        cli,
        json!({
            "dir": report.dir, "healthy": report.is_healthy(),
            "node_id": report.node_id.map(|n| n.to_string()), "generation": report.generation,
            "log_bytes": report.log_bytes, "committed_bytes": report.committed_bytes,
            "frames": report.frames, "commits": report.commits, "keys": report.keys,
            "findings": findings,
        }),
        || {
            let mut lines = vec![format!(
                "{}: generation {}, {} bytes, {} frames, {} commits, {} keys",
                report.dir.display(),
                report.generation,
                report.log_bytes,
                report.frames,
                report.commits,
                report.keys
            )];
            lines.extend(report.findings.iter().map(finding_text));
            lines.push(if report.is_healthy() {
                "ok".into()
            } else {
                "DAMAGED".into()
            });
            lines.join("\n")
        },
    );
    if report.is_healthy() {
        Ok(())
    } else {
        Err(Failure::of_kind(
            Kind::Storage,
            format!(
                "{} is damaged: run `chorus repair --dir {}`",
                cli.dir.display(),
                cli.dir.display()
            ),
        ))
    }
}

fn run_repair(cli: &Cli) -> Result<(), Failure> {
    let r = repair(&cli.dir, &cli.options()?)?;
    let lost: Vec<Value> = r.lost_ranges.iter().map(|(a, b)| json!([a, b])).collect();
    emit(
        cli,
        json!({
            "repaired": r.repaired, "old_generation": r.old_generation, "new_generation": r.new_generation,
            "frames_salvaged": r.frames_salvaged, "commits_salvaged": r.commits_salvaged,
            "keys": r.keys, "lost_ranges": lost, "kept_as": r.kept_as,
        }),
        || {
            if !r.repaired {
                return format!(
                    "nothing to repair: {} frames, {} keys, all intact",
                    r.frames_salvaged, r.keys
                );
            }
            let ranges: Vec<String> = r
                .lost_ranges
                .iter()
                .map(|(a, b)| format!("{a}..{b}"))
                .collect();
            format!(
                "salvaged {} commits ({} frames, {} keys) into generation {}; unreadable byte ranges: {}; the damaged log is kept as {}",
                r.commits_salvaged,
                r.frames_salvaged,
                r.keys,
                r.new_generation,
                ranges.join(", "),
                r.kept_as
                    .as_deref()
                    .map_or_else(String::new, |p: &Path| p.display().to_string())
            )
        },
    );
    Ok(())
}

fn compact(cli: &Cli) -> Result<(), Failure> {
    let r = cli.open()?.compact()?;
    emit(
        cli,
        json!({
            "old_generation": r.old_generation, "new_generation": r.new_generation,
            "bytes_before": r.bytes_before, "bytes_after": r.bytes_after, "keys": r.keys,
        }),
        || {
            format!(
                "generation {} -> {}: {} -> {} bytes, {} keys",
                r.old_generation, r.new_generation, r.bytes_before, r.bytes_after, r.keys
            )
        },
    );
    Ok(())
}

/// What a running node last wrote of its channels in the data directory
/// (`chorus_node::CHANNEL_STATUS_FILE`), if it did.
fn channel_status(dir: &std::path::Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(dir.join(chorus_node::CHANNEL_STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One line per channel of a node's status file: its state, keys held
/// and, while joining, the members' count; while leaving, the hand-off.
fn channel_lines(status: &serde_json::Value) -> String {
    let age = chorus_node::unix_ms_now().saturating_sub(status["updated_ms"].as_u64().unwrap_or(0))
        as f64
        / 1000.0;
    let mut out = format!(
        "channels    as the node (pid {}) said {age:.1} s ago",
        status["pid"]
    );
    for c in status["channels"].as_array().into_iter().flatten() {
        let (name, state) = (
            c["name"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?"),
        );
        let keys = c["keys"].as_u64().unwrap_or(0);
        let detail = match state {
            "joining" => format!("{keys} of {} keys", c["members_keys"].as_u64().unwrap_or(0)),
            "leaving" => format!(
                "{keys} keys kept until {} members hold them ({} do)",
                c["handoff_needed"], c["handed_off"]
            ),
            _ => format!("{keys} keys"),
        };
        out.push_str(&format!("\n  {name:<10} {state:<8} {detail}"));
    }
    out
}

fn status(cli: &Cli) -> Result<(), Failure> {
    let channels = channel_status(&cli.dir);
    let s = cli.open()?.status()?;
    let holder = s
        .lock_holder
        .as_ref()
        .map(|h| json!({"pid": h.pid, "host": h.host, "since_ms": h.since_ms}));
    emit(
        cli,
        json!({
            "dir": s.dir, "node_id": s.node_id.to_string(), "generation": s.generation,
            "log_bytes": s.log_bytes, "keys": s.keys, "data_bytes": s.data_bytes,
            "last_seq": s.last_seq, "lock_holder": holder,
            "live_bytes": s.live_bytes, "compact_at": s.compact_at,
            "auto_compactions": s.auto_compactions,
            "last_auto_compaction_ms": s.last_auto_compaction.map(|d| d.as_secs_f64() * 1000.0),
            "longest_auto_compaction_ms": s.longest_auto_compaction.map(|d| d.as_secs_f64() * 1000.0),
            "auto_compaction_failures": s.auto_compaction_failures,
            "channels": channels,
        }),
        || {
            let holder = s
                .lock_holder
                .as_ref()
                .map_or_else(|| "free".to_string(), |h| format!("held by {h}"));
            let compact_at = s.compact_at.map_or_else(
                || "automatic compaction off".to_string(),
                |at| format!("compacts at {at} bytes"),
            );
            let ms = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_string(),
                    |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0),
                )
            };
            let failures = match s.auto_compaction_failures {
                0 => String::new(),
                n => format!(", {n} failed in a row (retrying with back-off; see the log)"),
            };
            format!(
                "dir         {}\nnode id     {}\ngeneration  {}\nlog size    {} bytes ({} live; {compact_at})\nkeys        {} ({} bytes of keys and values)\nlast commit {}\nwriter lock {holder}\ncompactions {} automatic, last {}, longest {}{failures}",
                s.dir.display(),
                s.node_id,
                s.generation,
                s.log_bytes,
                s.live_bytes,
                s.keys,
                s.data_bytes,
                s.last_seq,
                s.auto_compactions,
                ms(s.last_auto_compaction),
                ms(s.longest_auto_compaction),
            ) + channels
                .as_ref()
                .map(|c| format!("\n{}", channel_lines(c)))
                .unwrap_or_default()
                .as_str()
        },
    );
    Ok(())
}
