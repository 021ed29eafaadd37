//! `chorus serve`: this directory as a node of a cluster.

use std::net::SocketAddr;

use clap::Args;

use crate::{Cli, Failure};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Where to listen for peers
    #[arg(long, default_value = "127.0.0.1:7900")]
    gossip: SocketAddr,
    /// Where to serve the HTTP API (beyond loopback, auth is on)
    #[arg(long, default_value = "127.0.0.1:7800")]
    http: SocketAddr,
    /// The address peers should dial, if not --gossip (a proxy or forwarded port)
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A peer to join through (HOST:PORT); repeat for several
    #[arg(long)]
    join: Vec<String>,
    /// Require a token on every route but /health, /metrics and /openapi.json (see docs/auth.md)
    #[arg(long)]
    auth: bool,
    /// Talk to peers in plaintext (loopback addresses only)
    #[arg(long, conflicts_with = "tls")]
    insecure: bool,
    /// Mutual TLS with peers: a directory from `chorus cluster cert` (ca.crt, node.crt, node.key)
    #[arg(long)]
    tls: Option<std::path::PathBuf>,
    /// Seconds between anti-entropy exchanges with a random peer
    #[arg(long, default_value_t = 10.0)]
    exchange_interval: f64,
    /// Seconds a tombstone is kept at least, even once every member has it (see docs/tombstones.md)
    #[arg(long, default_value_t = 3600.0)]
    tombstone_grace: f64,
    /// Serve the ZeroMQ broker here: tcp://IP:PORT or ipc://PATH (see docs/zeromq.md)
    #[arg(long)]
    zmq: Option<String>,
    /// Publish change events on this ZeroMQ PUB endpoint (needs --zmq)
    #[arg(long, requires = "zmq")]
    zmq_pub: Option<String>,
    /// A file holding the join token this node joins with (or set CHORUS_JOIN_TOKEN); needed with --auth until the node holds the cluster key
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<std::path::PathBuf>,
    /// Broker worker threads for document and oplog requests (key writes are group-committed by one committer)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    zmq_workers: u16,
    /// Rotated audit files kept (audit.log.1 to audit.log.N; see docs/auth.md)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    audit_files: u32,
    /// Size in MiB at which audit.log is rotated
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    audit_file_mib: u64,
    /// Days after which a rotated audit file is deleted (at rotation and at start)
    #[arg(long, default_value_t = 90.0)]
    audit_max_age: f64,
    /// Refused requests audited in full per source per --audit-window; the rest are counted in one summary line
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    audit_refusals: u32,
    /// Seconds of the window of --audit-refusals
    #[arg(long, default_value_t = 60.0)]
    audit_window: f64,
    /// Seconds ahead of this node's clock a value pushed by a stage or sent by a peer may be timestamped; a push beyond is refused, a peer's object waits (see docs/auth.md)
    #[arg(long, default_value_t = 300.0)]
    max_clock_skew: f64,
    /// Other members of a channel that must hold its data before this node, no longer serving it, drops its copy (see docs/channels.md)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    channel_min_members: u32,
    /// Inbound peer connections at most (handshaking or open); more are closed at once (see docs/auth.md, Limits)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    gossip_max_connections: u32,
    /// Inbound peer connections from one address (IPv6: one /64) at most
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    gossip_max_connections_per_source: u32,
    /// Seconds a peer connection may go without a frame before it is closed (quiet peers send keep-alives; give every node the same value)
    #[arg(long, default_value_t = 120.0)]
    gossip_idle_timeout: f64,
    /// MiB of peer frames being received at once, over every connection (at least 16, one largest frame)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=65_536))]
    frame_budget_mib: u32,
    /// Open HTTP connections at most; more are answered 503 and closed
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    http_max_connections: u32,
    /// Open HTTP connections from one address (IPv6: one /64) at most
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    http_max_connections_per_source: u32,
    /// HTTP requests per second from one address, in bursts of as many; more are answered 429 (0: no limit)
    #[arg(long, default_value_t = 10_000)]
    http_rate: u32,
    /// Seconds a client has to send a request's head (an idle kept-alive connection closes after it too)
    #[arg(long, default_value_t = 30.0)]
    http_header_timeout: f64,
    /// Seconds an HTTP connection may go without a byte read or written before it is closed
    #[arg(long, default_value_t = 120.0)]
    http_idle_timeout: f64,
    /// ZeroMQ requests per second from one connection, in bursts of as many; more are answered rate_limited (0: no limit)
    #[arg(long, default_value_t = 10_000)]
    zmq_rate: u32,
    /// ZeroMQ requests per second over every connection (0: no limit)
    #[arg(long, default_value_t = 100_000)]
    zmq_rate_total: u32,
    /// Forward requests for full prefixes this node does not serve to a node that does, as if each asked ?forward=true (see docs/channels.md)
    #[arg(long)]
    forward: bool,
    /// Serve this channel: CHANNEL (it exists) or CHANNEL=PATTERN[,PATTERN...] (created if absent); repeat for several (see docs/channels.md)
    #[arg(long, value_name = "CHANNEL[=PATTERN,...]", value_parser = chorus_node::channels::Serve::parse)]
    serve: Vec<chorus_node::channels::Serve>,
    /// A local channel table (JSON, as `chorus channel ls --json` prints it) merged into the replicated one at start
    #[arg(long, value_name = "FILE")]
    channels: Option<std::path::PathBuf>,
}

/// Sends the daemon's (and the engine's) log lines to stderr, one line
/// each: `LEVEL message`. `CHORUS_LOG` picks the level (error, warn, info,
/// debug, trace; info by default).
pub(crate) fn init_logging(show_target: bool) {
    let level = match std::env::var("CHORUS_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(show_target)
        .without_time()
        .with_ansi(false)
        .try_init();
}

pub(crate) fn run(cli: &Cli, args: &ServeArgs) -> Result<(), Failure> {
    init_logging(false);
    if !args.insecure && args.tls.is_none() {
        return Err(Failure::usage(
            "peers talk TLS: give --tls DIR (made by `chorus cluster init` and `chorus cluster cert`), or --insecure for plaintext on a loopback address",
        ));
    }
    if args.insecure && !args.gossip.ip().is_loopback() {
        return Err(Failure::usage(format!(
            "--insecure with --gossip {}: plaintext is only allowed on a loopback address",
            args.gossip
        )));
    }
    for (name, value) in [
        ("--exchange-interval", args.exchange_interval),
        ("--tombstone-grace", args.tombstone_grace),
        ("--gossip-idle-timeout", args.gossip_idle_timeout),
        ("--http-header-timeout", args.http_header_timeout),
        ("--http-idle-timeout", args.http_idle_timeout),
    ] {
        if !(value.is_finite() && (0.001..1e9).contains(&value)) {
            return Err(Failure::usage(format!(
                "{name} {value}: give a number of seconds from 0.001 up"
            )));
        }
    }
    if !(args.max_clock_skew.is_finite() && (1.0..=1e9).contains(&args.max_clock_skew)) {
        return Err(Failure::usage(format!(
            "--max-clock-skew {}: give a number of seconds from 1 to 1e9 (clocks of the machines of a cluster differ by more than a few milliseconds)",
            args.max_clock_skew
        )));
    }
    let mut config = chorus_node::Config::new(cli.dir.clone(), args.gossip);
    config.audit = audit_config(args)?;
    config.http = Some(args.http);
    config.auth = args.auth;
    config.tls = args.tls.clone();
    config.advertise = args.advertise;
    config.join = args.join.clone();
    config.join_token = join_token(args)?;
    config.exchange_interval = std::time::Duration::from_secs_f64(args.exchange_interval);
    config.tombstone_grace = std::time::Duration::from_secs_f64(args.tombstone_grace);
    config.max_clock_skew = std::time::Duration::from_secs_f64(args.max_clock_skew);
    config.limits = limits(args);
    config.forward = args.forward;
    config.serve = args.serve.clone();
    config.channels = args.channels.clone();
    config.channel_min_members = args.channel_min_members as usize;
    if let Some(endpoint) = &args.zmq {
        let mut b = chorus_node::broker::BrokerConfig::new(endpoint.clone(), args.zmq_pub.clone());
        b.workers = usize::from(args.zmq_workers);
        config.broker = Some(b);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::io(format!("cannot start the runtime: {e}")))?;
    let zmq = match (&args.zmq, &args.zmq_pub) {
        (Some(r), Some(p)) => format!(", ZeroMQ {r} (events {p})"),
        (Some(r), None) => format!(", ZeroMQ {r}"),
        _ => String::new(),
    };
    eprintln!(
        "chorus: serving {} at http://{}{}{zmq} (peers: {}, {}); Ctrl-C stops",
        cli.dir.display(),
        args.http,
        if args.auth { " with auth" } else { "" },
        args.gossip,
        if args.tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext"
        }
    );
    runtime
        .block_on(chorus_node::run(config, async {
            let _ = tokio::signal::ctrl_c().await;
        }))
        .map_err(node_failure)
}

/// The join token from --join-token-file, else CHORUS_JOIN_TOKEN: never
/// from the command line, where every local user would read it in `ps`.
fn join_token(args: &ServeArgs) -> Result<Option<String>, Failure> {
    let text = match &args.join_token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!(
                "--join-token-file {}: {e}: give the file `chorus cluster join-token create` output was saved to",
                path.display()
            ))
        })?,
        None => match std::env::var("CHORUS_JOIN_TOKEN") {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Ok(None);
    }
    chorus_node::join::JoinToken::parse(&text).map_err(Failure::usage)?;
    Ok(Some(text))
}

/// The audit log's bounds from the flags.
fn audit_config(args: &ServeArgs) -> Result<chorus_node::auth::AuditConfig, Failure> {
    if !(args.audit_max_age.is_finite() && (0.001..=36_500.0).contains(&args.audit_max_age)) {
        return Err(Failure::usage(format!(
            "--audit-max-age {}: give a number of days from 0.001 to 36500",
            args.audit_max_age
        )));
    }
    if !(args.audit_window.is_finite() && (1.0..=86_400.0).contains(&args.audit_window)) {
        return Err(Failure::usage(format!(
            "--audit-window {}: give a number of seconds from 1 to 86400",
            args.audit_window
        )));
    }
    Ok(chorus_node::auth::AuditConfig {
        files: args.audit_files,
        file_bytes: args.audit_file_mib << 20,
        max_age: std::time::Duration::from_secs_f64(args.audit_max_age * 86_400.0),
        refusals_per_source: args.audit_refusals,
        window: std::time::Duration::from_secs_f64(args.audit_window),
    })
}

/// The limits the flags give (seconds already checked).
fn limits(args: &ServeArgs) -> chorus_node::Limits {
    let secs = std::time::Duration::from_secs_f64;
    let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
    chorus_node::Limits {
        gossip_connections: count(args.gossip_max_connections),
        gossip_connections_per_source: count(args.gossip_max_connections_per_source),
        gossip_idle: secs(args.gossip_idle_timeout),
        frame_budget: count(args.frame_budget_mib).saturating_mul(1 << 20),
        http_connections: count(args.http_max_connections),
        http_connections_per_source: count(args.http_max_connections_per_source),
        http_rate: args.http_rate,
        http_header_timeout: secs(args.http_header_timeout),
        http_idle: secs(args.http_idle_timeout),
        zmq_rate: args.zmq_rate,
        zmq_rate_total: args.zmq_rate_total,
    }
}

pub(crate) fn leave(cli: &Cli) -> Result<(), Failure> {
    let store = cli.open()?;
    let node = store.node_id();
    let meta = chorus_store::Metadata::new(store);
    match chorus_node::members::leave(&meta, node)? {
        Some(addr) => {
            crate::emit(
                cli,
                serde_json::json!({"node": node.to_string(), "address": addr, "state": "left"}),
                || format!("node {node} ({addr}) has left the cluster; its daemon stops"),
            );
            Ok(())
        }
        None => Err(Failure::not_found(format!(
            "node {node} has no member record: it never served (`chorus serve`), so it is in no cluster"
        ))),
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// Join tokens: the credential a new node shows its first peer (see docs/auth.md)
    JoinToken {
        #[command(subcommand)]
        command: crate::auth::JoinTokenCommand,
    },
    /// Make a cluster CA (ca.crt, ca.key) in --ca DIR; keep ca.key off the nodes
    Init {
        /// Where the CA goes (made 0700)
        #[arg(long, default_value = "chorus-ca")]
        ca: std::path::PathBuf,
        /// How long the CA is valid
        #[arg(long, default_value_t = chorus_node::tls::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Issue a node certificate for NAME into --out DIR (ca.crt, node.crt, node.key), or renew it
    Cert {
        /// The node's name (the certificate's subject and a DNS name in it)
        name: String,
        /// The CA directory
        #[arg(long, default_value = "chorus-ca")]
        ca: std::path::PathBuf,
        /// An IP address peers dial this node at; repeat for several [default: 127.0.0.1, or on --renew the old certificate's]
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Where the node's files go (made 0700) [default: NAME-tls]
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// How long the certificate is valid
        #[arg(long, default_value_t = chorus_node::tls::NODE_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Replace the certificate in --out: same CA, new key; the old one is kept as node.crt.old
        #[arg(long)]
        renew: bool,
        /// Valid from this unix time (tests)
        #[arg(long, hide = true, requires = "not_after")]
        not_before: Option<u64>,
        /// Valid until this unix time (tests)
        #[arg(long, hide = true, requires = "not_before", conflicts_with = "days")]
        not_after: Option<u64>,
    },
    /// Revoke every certificate of NAME (or with --cert, one certificate) in this node's directory (--dir); it replicates
    Revoke {
        /// The certificate's name (its subject common name)
        name: String,
        /// Revoke only this certificate (a PEM file, e.g. NAME-tls/node.crt.old after a renewal)
        #[arg(long, value_name = "FILE")]
        cert: Option<std::path::PathBuf>,
        /// Why, kept with the record
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the revoked names and certificates in this node's directory (--dir)
    Revoked,
}

pub(crate) fn node_failure(e: chorus_node::Error) -> Failure {
    match e {
        chorus_node::Error::Store(e) => Failure::from(e),
        chorus_node::Error::Config(m) => Failure::usage(m),
        chorus_node::Error::Io(m) => Failure::io(m),
    }
}

pub(crate) fn cluster(cli: &Cli, command: &ClusterCommand) -> Result<(), Failure> {
    use chorus_node::tls;
    match command {
        ClusterCommand::JoinToken { command } => crate::auth::join_token(cli, command),
        ClusterCommand::Init { ca, days } => {
            let crt = tls::init_ca(ca, tls::Validity::days(*days)).map_err(node_failure)?;
            crate::emit(cli, serde_json::json!({"ca": crt}), || {
                format!(
                    "cluster CA written to {} (valid {days} days); issue node certificates with `chorus cluster cert NAME --ca {}`",
                    crt.display(),
                    ca.display()
                )
            });
            Ok(())
        }
        ClusterCommand::Cert {
            name,
            ca,
            ip,
            out,
            days,
            renew,
            not_before,
            not_after,
        } => {
            let out = out
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(format!("{name}-tls")));
            let validity = match (not_before, not_after) {
                (Some(from), Some(until)) => tls::Validity {
                    not_before: *from,
                    not_after: *until,
                },
                _ => tls::Validity::days(*days),
            };
            let issued = if *renew {
                tls::renew(ca, name, ip, &out, validity)
            } else {
                let ips = if ip.is_empty() {
                    vec![std::net::IpAddr::from([127, 0, 0, 1])]
                } else {
                    ip.clone()
                };
                tls::issue(ca, name, &ips, &out, validity)
            }
            .map_err(node_failure)?;
            let expires = tls::utc(issued.not_after);
            crate::emit(
                cli,
                serde_json::json!({
                    "name": name, "dir": out, "ips": issued.ips, "serial": issued.serial,
                    "sha256": issued.sha256, "not_after": issued.not_after,
                    "not_after_utc": expires, "replaced": issued.replaced,
                }),
                || match &issued.replaced {
                    Some(old) => format!(
                        "certificate for {name} renewed in {} (new key, expires {expires}); restart the node to use it; the old one is kept as {}: revoke it with `chorus cluster revoke {name} --cert {}`",
                        out.display(),
                        old.display(),
                        old.display()
                    ),
                    None => format!(
                        "certificate for {name} written to {} (expires {expires}); start the node with --tls {}",
                        out.display(),
                        out.display()
                    ),
                },
            );
            Ok(())
        }
        ClusterCommand::Revoke { name, cert, reason } => {
            if name.is_empty() || name.len() > 255 {
                return Err(Failure::usage(
                    "give the certificate's name: the NAME it was issued with by `chorus cluster cert NAME`",
                ));
            }
            let store = cli.open()?;
            let meta = chorus_store::Metadata::new(store);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let record = match cert {
                Some(path) => {
                    let der = tls::certificate_der(path).map_err(node_failure)?;
                    tls::revoke_certificate(&meta, name, &der, reason, now_ms)?
                }
                None => tls::revoke_name(&meta, name, reason, now_ms)?,
            };
            crate::emit(
                cli,
                serde_json::to_value(&record).unwrap_or_default(),
                || match &record.serial {
                    Some(serial) => format!(
                        "revoked the certificate of {name} with serial {serial} ({}); every node refuses it once this has replicated",
                        record.key
                    ),
                    None => format!(
                        "revoked every certificate of {name}, past and future ({}); every node refuses them once this has replicated; a node that comes back needs a certificate under another name",
                        record.key
                    ),
                },
            );
            Ok(())
        }
        ClusterCommand::Revoked => {
            let store = cli.open()?;
            let meta = chorus_store::Metadata::new(store);
            let all = tls::list_revoked(&meta)?;
            crate::emit(cli, serde_json::json!({ "revoked": all }), || {
                all.iter()
                    .map(|r| {
                        let serial = r
                            .serial
                            .as_deref()
                            .map(|s| format!(" serial {s}"))
                            .unwrap_or_default();
                        format!("{}\t{}{serial}\t{}", r.key, r.name, r.reason)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn the_flags_defaults_are_the_nodes_limits() {
        let parsed = Serve::try_parse_from(["serve", "--insecure"]).expect("defaults parse");
        assert_eq!(limits(&parsed.args), chorus_node::Limits::default());
        let parsed = Serve::try_parse_from([
            "serve",
            "--insecure",
            "--http-rate",
            "0",
            "--frame-budget-mib",
            "16",
        ])
        .expect("flags parse");
        let l = limits(&parsed.args);
        assert_eq!((l.http_rate, l.frame_budget), (0, 16 << 20));
        assert!(
            Serve::try_parse_from(["serve", "--insecure", "--frame-budget-mib", "8"]).is_err(),
            "a budget below one largest frame is refused"
        );
    }
}
