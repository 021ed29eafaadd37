//! `/metrics` in the Prometheus text format, following its conventions:
//! every family has HELP and its true TYPE (counters end in `_total`,
//! levels are gauges), request latencies are histograms labelled by
//! interface route or operation and status, and `chorus_build_info` names
//! the version.
//!
//! Label values come from fixed sets (route templates, operation names,
//! status codes), so the number of series is bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];
/// Series per histogram family at most; more are counted under `other`.
const SERIES_MAX: usize = 512;

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// One histogram family keyed by two label values (no allocation once a
/// series exists: this is on every request's path).
#[derive(Debug, Default)]
struct Family {
    /// How many series, and the series by first then second label value.
    series: Mutex<(usize, Series)>,
}

type Series = BTreeMap<String, BTreeMap<String, Histogram>>;

impl Family {
    fn observe(&self, a: &str, b: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut guard = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, map) = &mut *guard;
        if let Some(h) = map.get_mut(a).and_then(|m| m.get_mut(b)) {
            h.observe(secs);
            return;
        }
        let a = if *count >= SERIES_MAX { "other" } else { a };
        if let Some(h) = map.get_mut(a).and_then(|m| m.get_mut(b)) {
            h.observe(secs);
            return;
        }
        *count += 1;
        map.entry(a.to_string())
            .or_default()
            .entry(b.to_string())
            .or_default()
            .observe(secs);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: (&str, &str)) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let guard = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let series = guard
            .1
            .iter()
            .flat_map(|(a, m)| m.iter().map(move |(b, h)| (a, b, h)));
        for (a, b, h) in series {
            let l = format!(
                "{}=\"{}\",{}=\"{}\"",
                labels.0,
                escape(a),
                labels.1,
                escape(b)
            );
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The service's own measurements.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    http: Family,
    zmq: Family,
    /// ZeroMQ requests queued or running.
    pub(crate) zmq_in_flight: AtomicU64,
    /// Events sent on the PUB socket.
    pub(crate) zmq_published: AtomicU64,
    /// Writes the broker acknowledged.
    pub(crate) zmq_writes: AtomicU64,
    /// Refused requests the audit log counted instead of writing (shared
    /// with the log: `Auth::audit_suppressed`).
    pub(crate) audit_suppressed: std::sync::Arc<AtomicU64>,
    /// Objects from peers not merged, by reason.
    merge_refused: [AtomicU64; MERGE_REFUSED_REASONS.len()],
    /// Refused merges are logged at most once per `LOG_EVERY`.
    merge_refused_log: crate::limits::Throttled,
    /// HTTP connections open now.
    pub(crate) http_connections: AtomicU64,
    /// HTTP connections refused: the total cap, the cap per source.
    pub(crate) http_refused_total: AtomicU64,
    pub(crate) http_refused_per_source: AtomicU64,
    /// HTTP requests refused over the rate of their source.
    pub(crate) http_refused_rate: AtomicU64,
    /// HTTP connections closed: a request head not sent in time, or no
    /// byte either way for the idle timeout.
    pub(crate) http_closed_header_timeout: AtomicU64,
    pub(crate) http_closed_idle: AtomicU64,
    /// ZeroMQ connections open now (from the ROUTER's socket monitor).
    pub(crate) zmq_connections: AtomicU64,
    /// ZeroMQ requests refused: over their connection's rate, over the
    /// rate of all.
    pub(crate) zmq_refused_peer_rate: AtomicU64,
    pub(crate) zmq_refused_total_rate: AtomicU64,
}

/// The reasons of `chorus_merge_refused_total` (a fixed set): an object
/// that does not decode, and the refusals of `validate::check_merged`.
const MERGE_REFUSED_REASONS: [&str; 4] = [
    "undecodable",
    "future_timestamp",
    "counter_ceiling",
    "other",
];
impl Metrics {
    /// Measurements whose count of suppressed audit refusals is the audit
    /// log's own counter.
    pub(crate) fn with_audit_counter(audit_suppressed: std::sync::Arc<AtomicU64>) -> Metrics {
        Metrics {
            audit_suppressed,
            ..Metrics::default()
        }
    }

    /// An HTTP request to `route` (its template) answered with `status`.
    pub(crate) fn http(&self, route: &str, status: u16, elapsed: Duration) {
        self.http.observe(route, &status.to_string(), elapsed);
    }

    /// A ZeroMQ request `op` answered with `code` (`ok` or an error code).
    pub(crate) fn zmq(&self, op: &str, code: &str, elapsed: Duration) {
        self.zmq.observe(op, code, elapsed);
    }

    /// An object from a peer was not merged, for `reason` (one of
    /// [`MERGE_REFUSED_REASONS`]; anything else counts as `other`). Logs
    /// `detail()` at most once per [`crate::limits::LOG_EVERY`], with how
    /// many were not logged since, so a peer cannot flood the log.
    pub(crate) fn merge_refused(&self, reason: &str, detail: impl FnOnce() -> String) {
        let at = MERGE_REFUSED_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(MERGE_REFUSED_REASONS.len() - 1);
        self.merge_refused[at].fetch_add(1, Ordering::Relaxed);
        let Some(quiet) = self.merge_refused_log.hit() else {
            return;
        };
        let also = match quiet {
            0 => String::new(),
            n => format!(" ({n} more refused since the last such line)"),
        };
        tracing::warn!("an object from a peer was not merged: {}{also}", detail());
    }

    /// How many objects from peers were not merged for `reason`.
    #[cfg(test)]
    pub(crate) fn merge_refused_count(&self, reason: &str) -> u64 {
        MERGE_REFUSED_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |at| self.merge_refused[at].load(Ordering::Relaxed))
    }
}

/// Help for the core's counters and levels; a name missing here is a bug
/// the test below catches.
fn core_help(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "commits_broadcast_total" => ("counter", "local commits this node broadcast to peers"),
        "objects_received_total" => ("counter", "objects received from peers and merged"),
        "keys_repaired_total" => ("counter", "keys anti-entropy exchanges repaired"),
        "exchanges_total" => ("counter", "anti-entropy exchanges finished"),
        "frames_dropped_total" => ("counter", "peer frames dropped because a queue was full"),
        "overlay_links_total" => ("counter", "overlay links opened to peers"),
        "tombstones_collected_total" => {
            ("counter", "tombstones removed once every member had them")
        }
        "tombstones_held" => ("gauge", "tombstones kept until every member has them"),
        "unserved_objects_dropped_total" => (
            "counter",
            "objects from peers of full prefixes this node does not serve, dropped",
        ),
        "unserved_frames_dropped_total" => (
            "counter",
            "peer frames for channels this node does not serve, dropped",
        ),
        "channel_keys_dropped_total" => (
            "counter",
            "keys removed here after this node stopped serving their channel and members held them",
        ),
        "oplog_ops_folded_total" => (
            "counter",
            "operation-log operations folded into checkpoints",
        ),
        "identity_conflicts_total" => (
            "counter",
            "objects from peers skipped because they hold a value under this node's id that it never wrote (a copied data directory; see docs/identity.md)",
        ),
        "joiner_objects_refused_total" => (
            "counter",
            "reserved objects refused from peers admitted only as joiners",
        ),
        "peer_bytes_sent_total" => ("counter", "bytes of frames sent to peers"),
        "broadcasts_sent_total" => ("counter", "Plumtree gossip messages sent"),
        "grafts_total" => ("counter", "Plumtree grafts sent"),
        "prunes_total" => ("counter", "Plumtree prunes sent"),
        "duplicates_total" => ("counter", "Plumtree duplicate messages received"),
        "feed_seq" => ("gauge", "sequence number of the last commit the core read"),
        _ => return None,
    })
}

/// The levels shown as gauges besides the counters.
pub(crate) struct Levels {
    pub(crate) active_peers: usize,
    pub(crate) passive_peers: usize,
    pub(crate) eager_links: usize,
    pub(crate) lazy_links: usize,
    pub(crate) open_watches: usize,
}

/// Renders every family.
pub(crate) fn render(
    m: &Metrics,
    counters: &[(&'static str, u64)],
    levels: &Levels,
    store: Option<&chorus_store::Status>,
    writes: &chorus_store::WriteStats,
) -> String {
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\nchorus_{name} {value}"
        );
    };
    one(
        "build_info",
        "gauge",
        "always 1; the version is in the label",
        1.0,
    );
    for (name, value) in counters {
        let (kind, help) = core_help(name).unwrap_or(("gauge", "undocumented"));
        one(name, kind, help, *value as f64);
    }
    for (name, value, help) in [
        (
            "active_peers",
            levels.active_peers,
            "peers in HyParView's active view",
        ),
        (
            "passive_peers",
            levels.passive_peers,
            "peers in HyParView's passive view",
        ),
        ("eager_links", levels.eager_links, "Plumtree eager links"),
        ("lazy_links", levels.lazy_links, "Plumtree lazy links"),
        (
            "open_watches",
            levels.open_watches,
            "change streams open (SSE watches)",
        ),
    ] {
        one(name, "gauge", help, value as f64);
    }
    for (name, value, help) in [
        (
            "store_commits_total",
            writes.commits,
            "commits this daemon appended (local writes and merges)",
        ),
        ("store_frames_total", writes.frames, "log frames they took"),
        (
            "store_syncs_total",
            writes.syncs,
            "fdatasyncs they took: below commits when writes arrive together",
        ),
    ] {
        one(name, "counter", help, value as f64);
    }
    if let Some(s) = store {
        for (name, value, help) in [
            ("store_keys", s.keys as u64, "live keys in the store"),
            (
                "store_log_bytes",
                s.log_bytes,
                "bytes of the current log generation",
            ),
            (
                "store_live_bytes",
                s.live_bytes,
                "bytes the live data would take after compaction",
            ),
            (
                "store_dead_bytes",
                s.log_bytes.saturating_sub(s.live_bytes),
                "bytes compaction would free",
            ),
            (
                "store_generation",
                s.generation,
                "log generation (compactions so far)",
            ),
            (
                "store_last_seq",
                s.last_seq,
                "sequence number of the last commit",
            ),
        ] {
            one(name, "gauge", help, value as f64);
        }
    }
    one(
        "zmq_in_flight",
        "gauge",
        "ZeroMQ requests queued or running",
        m.zmq_in_flight.load(Ordering::Relaxed) as f64,
    );
    one(
        "zmq_writes_total",
        "counter",
        "writes the ZeroMQ broker acknowledged (group-committed: compare store_syncs_total)",
        m.zmq_writes.load(Ordering::Relaxed) as f64,
    );
    one(
        "zmq_events_published_total",
        "counter",
        "change events sent on the ZeroMQ PUB socket",
        m.zmq_published.load(Ordering::Relaxed) as f64,
    );
    one(
        "audit_suppressed_total",
        "counter",
        "refused requests the audit log counted in a summary line instead of writing one line each",
        m.audit_suppressed.load(Ordering::Relaxed) as f64,
    );
    let _ = writeln!(
        out,
        "# HELP chorus_merge_refused_total objects from peers not merged: undecodable, timestamped beyond --max-clock-skew ahead, or a counter above the ceiling (anti-entropy offers them again)\n# TYPE chorus_merge_refused_total counter"
    );
    for (reason, n) in MERGE_REFUSED_REASONS.iter().zip(&m.merge_refused) {
        let _ = writeln!(
            out,
            "chorus_merge_refused_total{{reason=\"{reason}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    render_limits(&mut out, m);
    // build_info's value line carries its label.
    let out = out.replacen(
        "chorus_build_info 1",
        &format!(
            "chorus_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        1,
    );
    let mut out = out;
    m.http.render(
        &mut out,
        "chorus_http_request_duration_seconds",
        "HTTP requests by route template and status, and how long they took",
        ("route", "status"),
    );
    m.zmq.render(
        &mut out,
        "chorus_zmq_request_duration_seconds",
        "ZeroMQ requests by operation and outcome code, and how long they took",
        ("op", "code"),
    );
    out
}

/// The limits' levels and refusals (docs/auth.md, "Limits").
fn render_limits(out: &mut String, m: &Metrics) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let net = &crate::net::STATS;
    let (gossip_in, frame_bytes, frame_budget) = crate::net::levels();
    let mut family = |name: &str, kind: &str, help: &str, label: &str, values: &[(&str, u64)]| {
        let _ = writeln!(
            out,
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}"
        );
        for (value_label, value) in values {
            if label.is_empty() {
                let _ = writeln!(out, "chorus_{name} {value}");
            } else {
                let _ = writeln!(out, "chorus_{name}{{{label}=\"{value_label}\"}} {value}");
            }
        }
    };
    family(
        "gossip_connections",
        "gauge",
        "gossip connections: inbound (admitted, handshaking or open) and outbound (open)",
        "state",
        &[
            ("inbound", gossip_in as u64),
            ("outbound", get(&net.outbound)),
        ],
    );
    family(
        "gossip_refused_total",
        "counter",
        "inbound gossip connections closed at once: the total cap or the cap per source was reached",
        "reason",
        &[
            ("total", get(&net.refused_total)),
            ("per_source", get(&net.refused_per_source)),
        ],
    );
    family(
        "gossip_closed_total",
        "counter",
        "gossip connections closed for a limit: no frame for the idle timeout, no frame memory in time, a large frame stalled while holding memory",
        "reason",
        &[
            ("idle", get(&net.closed_idle)),
            ("budget", get(&net.closed_budget)),
            ("stalled", get(&net.closed_stalled)),
        ],
    );
    family(
        "gossip_duplicate_identity_total",
        "counter",
        "gossip handshakes refused because the peer presented this node's own id from another address or process: a copy of its data directory (run `chorus init --new-identity` on the copy)",
        "",
        &[("", get(&net.duplicate_identity))],
    );
    family(
        "frame_buffer_bytes",
        "gauge",
        "bytes of gossip frames being received, over every connection",
        "",
        &[("", frame_bytes as u64)],
    );
    family(
        "frame_buffer_budget_bytes",
        "gauge",
        "the most frame buffers may hold (--frame-budget-mib)",
        "",
        &[("", frame_budget as u64)],
    );
    family(
        "http_connections",
        "gauge",
        "HTTP connections open",
        "",
        &[("", get(&m.http_connections))],
    );
    family(
        "http_refused_total",
        "counter",
        "HTTP connections closed at once (total, per_source) and requests answered 429 (rate)",
        "reason",
        &[
            ("total", get(&m.http_refused_total)),
            ("per_source", get(&m.http_refused_per_source)),
            ("rate", get(&m.http_refused_rate)),
        ],
    );
    family(
        "http_closed_total",
        "counter",
        "HTTP connections closed for a timeout: a request head not sent in time, or no byte either way",
        "reason",
        &[
            ("header_timeout", get(&m.http_closed_header_timeout)),
            ("idle", get(&m.http_closed_idle)),
        ],
    );
    family(
        "zmq_connections",
        "gauge",
        "ZeroMQ connections to the broker's ROUTER socket",
        "",
        &[("", get(&m.zmq_connections))],
    );
    family(
        "zmq_refused_total",
        "counter",
        "ZeroMQ requests answered rate_limited: over their connection's rate (peer_rate) or the broker's (total_rate)",
        "reason",
        &[
            ("peer_rate", get(&m.zmq_refused_peer_rate)),
            ("total_rate", get(&m.zmq_refused_total_rate)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_merges_are_counted_by_reason_and_unknown_reasons_as_other() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.merge_refused("future_timestamp", || "ahead".into());
        }
        m.merge_refused("no such reason", || "x".into());
        assert_eq!(m.merge_refused_count("future_timestamp"), 3);
        assert_eq!(m.merge_refused_count("other"), 1);
        // The first was logged; the three after it wait for the period.
        let (logged, held) = m.merge_refused_log.state();
        assert!(logged);
        assert_eq!(held, 3, "logged once per period, not per object");
        let text = render(
            &m,
            &[],
            &Levels {
                active_peers: 0,
                passive_peers: 0,
                eager_links: 0,
                lazy_links: 0,
                open_watches: 0,
            },
            None,
            &chorus_store::WriteStats::default(),
        );
        assert!(
            text.contains("chorus_merge_refused_total{reason=\"future_timestamp\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("chorus_merge_refused_total{reason=\"other\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn every_family_has_help_and_a_type_and_histograms_are_cumulative() {
        let m = Metrics::default();
        m.http(
            "/v1/kv/{prefix}/{sub}/{*key}",
            200,
            Duration::from_micros(300),
        );
        m.http(
            "/v1/kv/{prefix}/{sub}/{*key}",
            200,
            Duration::from_millis(30),
        );
        m.zmq("get", "ok", Duration::from_micros(50));
        let counters = [
            ("commits_broadcast_total", 1),
            ("objects_received_total", 1),
            ("keys_repaired_total", 1),
            ("exchanges_total", 1),
            ("frames_dropped_total", 1),
            ("overlay_links_total", 1),
            ("tombstones_collected_total", 1),
            ("tombstones_held", 1),
            ("unserved_objects_dropped_total", 1),
            ("unserved_frames_dropped_total", 1),
            ("channel_keys_dropped_total", 1),
            ("oplog_ops_folded_total", 1),
            ("joiner_objects_refused_total", 1),
            ("peer_bytes_sent_total", 1),
            ("broadcasts_sent_total", 1),
            ("grafts_total", 1),
            ("prunes_total", 1),
            ("duplicates_total", 1),
            ("feed_seq", 1),
        ];
        for (name, _) in counters {
            assert!(core_help(name).is_some(), "{name} has no help");
        }
        let levels = Levels {
            active_peers: 1,
            passive_peers: 0,
            eager_links: 1,
            lazy_links: 0,
            open_watches: 2,
        };
        let text = render(
            &m,
            &counters,
            &levels,
            None,
            &chorus_store::WriteStats::default(),
        );
        let mut families = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                families.entry(name.to_string()).or_insert((false, false)).0 = true;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                let name = p.next().unwrap_or_default();
                let kind = p.next().unwrap_or_default();
                if name.ends_with("_total") {
                    assert_eq!(kind, "counter", "{name}");
                }
                families.entry(name.to_string()).or_insert((false, false)).1 = true;
            }
        }
        assert!(families.values().all(|(h, t)| *h && *t), "{families:?}");
        assert!(text.contains("chorus_build_info{version=\""), "{text}");
        assert!(
            text.contains("chorus_merge_refused_total{reason=\"future_timestamp\"} 0"),
            "{text}"
        );
        for line in [
            "chorus_gossip_refused_total{reason=\"per_source\"} ",
            "chorus_gossip_connections{state=\"inbound\"} ",
            "chorus_frame_buffer_bytes ",
            "chorus_http_refused_total{reason=\"rate\"} ",
            "chorus_http_closed_total{reason=\"header_timeout\"} ",
            "chorus_zmq_refused_total{reason=\"total_rate\"} ",
            "chorus_zmq_connections ",
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
        assert!(text.contains(
            "chorus_http_request_duration_seconds_bucket{route=\"/v1/kv/{prefix}/{sub}/{*key}\",status=\"200\",le=\"+Inf\"} 2"
        ), "{text}");
        assert!(text.contains(
            "chorus_http_request_duration_seconds_bucket{route=\"/v1/kv/{prefix}/{sub}/{*key}\",status=\"200\",le=\"0.001\"} 1"
        ), "{text}");
    }
}
