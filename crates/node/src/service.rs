//! The node's operations, once, for every interface.
//!
//! An adapter (HTTP in `http.rs`, ZeroMQ in `broker.rs`) parses a request
//! into an [`Op`], asks [`Service::authorize`] for a [`Grant`] (the
//! reserved-name rule, the token check and the audit of refusals, in that
//! order), runs it with [`Service::run`] (or, for key writes, queues it for
//! group commit: [`Service::put`], or [`Service::batch_put`] and the
//! committer), and
//! renders the JSON value or the [`ApiError`]. Neither adapter imports the
//! other; neither decides what an operation does, which names it may
//! reach, or how a failure is classified.

use std::sync::{Arc, Mutex};

use chorus_core::FullPrefix;
use chorus_core::object::{Context, Object, context_to_string};
use chorus_store::docs::Docs;
use chorus_store::{
    BatchPut, CommitInfo, GetOptions, IterOptions, Match, Metadata, PutOptions, PutValue, Resolver,
    Scope,
};
use serde_json::{Value, json};

use crate::auth::{AUTH_PREFIX, Access, Auth, Grant, Target, TokenAccess, scope_is_all};
use crate::commit::Committer;
use crate::error::{ApiError, Kind};
use crate::events::Hub;
use crate::json::{Viewer, list_json, read_json, records_a_writer};
use crate::metrics::Metrics;

/// Largest request accepted: an HTTP body, a ZeroMQ message.
pub const REQUEST_MAX: usize = 1 << 20;

/// The resolver a client names: none, or `lww`.
pub(crate) fn resolver(name: Option<&str>) -> Result<Resolver, ApiError> {
    match name {
        None => Ok(Resolver::None),
        Some("lww") => Ok(Resolver::Lww),
        Some(other) => Err(ApiError::bad(format!(
            "resolve {other:?}: the only resolver a client can name is lww (leave it out to get every sibling)"
        ))),
    }
}

/// The most items a list returns per page.
pub const PAGE_MAX: usize = 10_000;
/// Items per page when the request does not say.
pub const PAGE_DEFAULT: usize = 1_000;

/// What the core shares with the service: its view of the cluster and its
/// counters, refreshed as it runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    /// This node's id.
    pub node: String,
    /// Where it listens for peers.
    pub gossip: String,
    /// HyParView's active view.
    pub active: Vec<String>,
    /// HyParView's passive view.
    pub passive: Vec<String>,
    /// Plumtree's eager links.
    pub eager: Vec<String>,
    /// Plumtree's lazy links.
    pub lazy: Vec<String>,
    /// Seconds since the last finished exchange with each peer.
    pub last_exchange: Vec<(String, f64)>,
    /// Every member this node knows of, and its state (`up`, `left`).
    pub members: Vec<(String, &'static str)>,
    /// Counters (name, value) for /metrics.
    pub counters: Vec<(&'static str, u64)>,
    /// The channels this node serves or still holds data of, and where it
    /// stands in each (joining with its progress, ready, leaving).
    pub channels: Vec<chorus_replica::ChannelStatus>,
}

/// What the service asks of the core.
#[derive(Debug)]
pub(crate) enum Command {
    /// Join the cluster through this peer.
    Join(String),
}

/// The node's operations and what they share.
#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) committed: Arc<tokio::sync::Notify>,
    pub(crate) commands: tokio::sync::mpsc::Sender<Command>,
    pub(crate) meta: Metadata,
    pub(crate) view: Arc<Mutex<ClusterView>>,
    /// Operation logs, shared so that compiled script reducers are kept.
    pub(crate) oplogs: chorus_store::oplog::Oplogs,
    /// Token checks and the audit log.
    pub(crate) auth: Auth,
    /// Group commit of key writes.
    pub(crate) writes: Committer,
    /// Change events for every stream.
    pub(crate) hub: Hub,
    /// Request counters and latencies, for /metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// How far ahead of this node's clock a pushed value may be
    /// (`Config::max_clock_skew`).
    pub(crate) max_clock_skew: std::time::Duration,
    /// Whether key-value requests for full prefixes this node does not
    /// serve are forwarded without `?forward=true` (`Config::forward`).
    pub(crate) forward: bool,
}

/// One operation, parsed from any interface.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Who answers.
    Ping,
    /// A key's values and context.
    Get {
        fp: FullPrefix,
        key: String,
        resolver: Resolver,
        allow_put: bool,
    },
    /// A value or a tombstone for a key.
    Put {
        fp: FullPrefix,
        key: String,
        /// `None`: a delete.
        value: Option<Vec<u8>>,
        context: Option<Context>,
        if_absent: bool,
    },
    /// A page of a full prefix's keys.
    List {
        fp: FullPrefix,
        matching: Match,
        page: Page,
    },
    /// A page of the prefixes that hold keys.
    Prefixes {
        page: Page,
    },
    /// A page of a prefix's subprefixes.
    Subprefixes {
        prefix: String,
        page: Page,
    },
    /// A full prefix's hash.
    Hash {
        fp: FullPrefix,
    },
    /// A prefix's hash.
    HashPrefix {
        prefix: String,
    },
    DocCreate {
        store: String,
        doc: Value,
    },
    DocUpdate {
        store: String,
        doc: Value,
        keep_both: bool,
    },
    DocUpsert {
        store: String,
        doc: Value,
    },
    DocDelete {
        store: String,
        id: String,
        rev: String,
    },
    DocResolve {
        store: String,
        id: String,
        rev: String,
    },
    DocGet {
        store: String,
        id: String,
        rev: Option<String>,
        conflicts: bool,
    },
    /// The groups of revisions that collided (`page: None`), or a page of
    /// the losing current revisions.
    DocConflicts {
        store: String,
        id: String,
        page: Option<(usize, Option<String>)>,
    },
    DocAll {
        store: String,
        page: Page,
    },
    LogPush {
        fp: FullPrefix,
        path: String,
        kind: String,
        payload: Value,
    },
    LogGet {
        fp: FullPrefix,
        path: String,
    },
    LogOps {
        fp: FullPrefix,
        path: String,
    },
}

/// A page of a list: at most `limit` items after `after`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    pub(crate) limit: usize,
    pub(crate) after: Option<String>,
}

impl Page {
    /// A page from the request's `limit` (1 to [`PAGE_MAX`], default
    /// [`PAGE_DEFAULT`]) and `after`.
    pub(crate) fn new(limit: Option<u64>, after: Option<String>) -> Result<Page, ApiError> {
        let limit = match limit {
            None => PAGE_DEFAULT,
            Some(n) if (1..=PAGE_MAX as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::bad(format!(
                    "limit {n} is out of range: ask for 1 to {PAGE_MAX} items per page"
                )));
            }
        };
        if after.as_deref() == Some("") {
            return Err(ApiError::bad(
                "after is empty: leave it out for the first page, or pass the next of the previous page",
            ));
        }
        Ok(Page { limit, after })
    }

    /// The page of `items` (sorted, unique) after `after`, and the `next`
    /// to ask for when more follow.
    fn take<T, K: AsRef<str>>(
        &self,
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, Option<String>) {
        let mut out: Vec<T> = items
            .into_iter()
            .filter(|i| self.after.as_deref().is_none_or(|a| key(i).as_ref() > a))
            .take(self.limit.saturating_add(1))
            .collect();
        let next = if out.len() > self.limit {
            out.truncate(self.limit);
            out.last().map(|i| key(i).as_ref().to_string())
        } else {
            None
        };
        (out, next)
    }
}

/// A conflicts request's paging: none (the collided groups), or a page of
/// `limit` after `after`; `after` without `limit` is refused.
pub(crate) fn conflicts_page(
    limit: Option<u64>,
    after: Option<String>,
) -> Result<Option<(usize, Option<String>)>, ApiError> {
    match (limit, after) {
        (Some(limit), after) => Ok(Some((usize::try_from(limit).unwrap_or(usize::MAX), after))),
        (None, Some(_)) => Err(ApiError::bad(format!(
            "after pages conflicts: pass limit too (1 to {})",
            chorus_store::docs::MAX_CONFLICTS_PAGE
        ))),
        (None, None) => Ok(None),
    }
}

/// What the audit log records of a write: its name and target. Taken
/// before the operation runs (it consumes the operation); `None` for a
/// read, which is not audited.
pub(crate) struct AuditLine(&'static str, String);

impl Op {
    /// The audit line of a write (or a read that may write), if any.
    pub(crate) fn audit_line(&self) -> Option<AuditLine> {
        self.writes().then(|| {
            AuditLine(
                self.name(),
                self.reach().map(|r| r.text()).unwrap_or_default(),
            )
        })
    }

    /// The operation's name, the same in the audit log, metrics and
    /// ZeroMQ's `"op"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Ping => "ping",
            Op::Get { .. } => "get",
            Op::Put { value: Some(_), .. } => "put",
            Op::Put { value: None, .. } => "delete",
            Op::List { .. } => "list",
            Op::Prefixes { .. } => "prefixes",
            Op::Subprefixes { .. } => "subprefixes",
            Op::Hash { .. } => "hash",
            Op::HashPrefix { .. } => "hash",
            Op::DocCreate { .. } => "doc.create",
            Op::DocUpdate { .. } => "doc.update",
            Op::DocUpsert { .. } => "doc.upsert",
            Op::DocDelete { .. } => "doc.delete",
            Op::DocResolve { .. } => "doc.resolve",
            Op::DocGet { .. } => "doc.get",
            Op::DocConflicts { .. } => "doc.conflicts",
            Op::DocAll { .. } => "doc.all",
            Op::LogPush { .. } => "op.push",
            Op::LogGet { .. } => "op.get",
            Op::LogOps { .. } => "op.log",
        }
    }

    /// Whether it may write (a read that may write back counts).
    pub(crate) fn writes(&self) -> bool {
        match self {
            Op::Get { allow_put, .. } => *allow_put,
            Op::Put { .. }
            | Op::DocCreate { .. }
            | Op::DocUpdate { .. }
            | Op::DocUpsert { .. }
            | Op::DocDelete { .. }
            | Op::DocResolve { .. }
            | Op::LogPush { .. } => true,
            _ => false,
        }
    }

    /// Answered in microseconds from memory: fine on an adapter's own
    /// thread. Everything else runs where it may block.
    pub(crate) fn is_quick(&self) -> bool {
        matches!(
            self,
            Op::Ping
                | Op::Get {
                    allow_put: false,
                    ..
                }
        )
    }

    /// What it reaches, for the token check.
    fn reach(&self) -> Result<Reach, ApiError> {
        Ok(match self {
            Op::Ping => Reach::Nothing,
            Op::Prefixes { .. } => Reach::All,
            Op::Subprefixes { prefix, .. } | Op::HashPrefix { prefix } => {
                Reach::Prefix(prefix.clone())
            }
            Op::Get { fp, .. }
            | Op::Put { fp, .. }
            | Op::List { fp, .. }
            | Op::Hash { fp }
            | Op::LogPush { fp, .. }
            | Op::LogGet { fp, .. }
            | Op::LogOps { fp, .. } => Reach::FullPrefix(fp.clone()),
            Op::DocCreate { store, .. }
            | Op::DocUpdate { store, .. }
            | Op::DocUpsert { store, .. }
            | Op::DocDelete { store, .. }
            | Op::DocResolve { store, .. }
            | Op::DocGet { store, .. }
            | Op::DocConflicts { store, .. }
            | Op::DocAll { store, .. } => {
                Reach::FullPrefix(chorus_store::docs::store_prefix(store)?)
            }
        })
    }
}

/// What an operation reaches.
#[derive(Debug, Clone)]
pub(crate) enum Reach {
    Nothing,
    FullPrefix(FullPrefix),
    Prefix(String),
    All,
}

impl Reach {
    /// What the token check is asked about.
    pub(crate) fn target(&self) -> Target<'_> {
        match self {
            Reach::FullPrefix(fp) => Target::FullPrefix(fp),
            Reach::Prefix(p) => Target::Prefix(p),
            Reach::All | Reach::Nothing => Target::All,
        }
    }

    fn prefix(&self) -> Option<&str> {
        match self {
            Reach::FullPrefix(fp) => Some(fp.prefix()),
            Reach::Prefix(p) => Some(p),
            Reach::All | Reach::Nothing => None,
        }
    }

    /// How the audit log names it.
    pub(crate) fn text(&self) -> String {
        match self {
            Reach::FullPrefix(fp) => fp.to_string(),
            Reach::Prefix(p) => p.clone(),
            Reach::All => "*".into(),
            Reach::Nothing => String::new(),
        }
    }
}

/// The reserved prefix a client may read: the stage's reports.
pub(crate) const READABLE_RESERVED: &str = "$stage";

/// The reserved-name rule, for every interface: `$auth` (users, sessions,
/// the cluster key) is never served; no client writes a `$` name; of
/// Chorus's own names only [`READABLE_RESERVED`] can be read or watched.
pub(crate) fn reserved_rule(prefix: Option<&str>, writes: bool) -> Result<(), ApiError> {
    let Some(prefix) = prefix.filter(|p| p.starts_with('$')) else {
        return Ok(());
    };
    if prefix == AUTH_PREFIX {
        return Err(ApiError::new(
            Kind::Forbidden,
            format!(
                "{AUTH_PREFIX} holds users, sessions and the cluster key: it is never served; use `chorus user`, `chorus session` and `chorus token` (see docs/auth.md)"
            ),
        ));
    }
    if writes || prefix != READABLE_RESERVED {
        return Err(ApiError::bad(format!(
            "{prefix} is reserved for Chorus itself (names starting with '$'): clients write none of them and read only {READABLE_RESERVED} (the stage's reports)"
        )));
    }
    Ok(())
}

impl Service {
    /// The service over `meta`: its committing thread starts now; the
    /// event hub runs once [`Hub::run`] is spawned (the core does).
    pub(crate) fn new(
        meta: Metadata,
        auth_enabled: bool,
        commands: tokio::sync::mpsc::Sender<Command>,
    ) -> Result<Service, String> {
        let committed: Arc<tokio::sync::Notify> = Arc::default();
        let wake = committed.clone();
        let writes = Committer::start(meta.clone(), Arc::new(move || wake_all(&wake)))?;
        let auth = Auth::new(meta.clone(), auth_enabled);
        let metrics = Metrics::with_audit_counter(auth.audit_suppressed());
        Ok(Service {
            committed,
            commands,
            // Each request's reducer work is bounded (docs/oplogs.md).
            oplogs: chorus_store::oplog::Oplogs::new(&meta)
                .with_budget(chorus_store::oplog::DEFAULT_REQUEST_BUDGET),
            auth,
            meta,
            view: Arc::default(),
            writes,
            hub: Hub::new(),
            metrics: Arc::new(metrics),
            max_clock_skew: std::time::Duration::from_millis(
                crate::validate::MAX_CLOCK_SKEW_DEFAULT_MS,
            ),
            forward: false,
        })
    }

    /// Who may run `op` with `token`: the reserved-name rule, then (auth
    /// on) the token; a refusal is audited.
    pub(crate) fn authorize(
        &self,
        token: Option<&str>,
        op: &Op,
        transport: &str,
    ) -> Result<Grant, ApiError> {
        if let Op::Get { key, .. } | Op::Put { key, .. } = op {
            // A read refuses what a write would, rather than call it absent.
            let max = self.meta.store().options().limits.max_key_bytes;
            chorus_core::validate_key(key.as_bytes(), max)
                .map_err(|e| ApiError::bad(e.to_string()))?;
        }
        let reach = op.reach()?;
        reserved_rule(reach.prefix(), op.writes())?;
        if matches!(reach, Reach::Nothing) {
            return Ok(Grant::default());
        }
        self.check(token, &reach, op.writes(), transport, op.name())
    }

    /// The token check for `reach` alone (watches, the cluster view): the
    /// grant, or a refusal, audited.
    pub(crate) fn check(
        &self,
        token: Option<&str>,
        reach: &Reach,
        writes: bool,
        transport: &str,
        op: &str,
    ) -> Result<Grant, ApiError> {
        let access = if writes { Access::Write } else { Access::Read };
        match self.auth.check_target(token, reach.target(), access) {
            Ok(g) => Ok(g),
            Err(e) => {
                self.auth
                    .audit_refused(token, transport, op, &reach.text(), &e);
                Err(e.into())
            }
        }
    }

    /// Records a write (or a read that may write) in the audit log.
    pub(crate) fn audit(&self, grant: &Grant, transport: &str, line: Option<&AuditLine>, ok: bool) {
        if let Some(AuditLine(name, target)) = line {
            self.auth.audit(grant, transport, name, target, ok);
        }
    }

    /// Who `grant` reads as, for the writer identity values show
    /// (docs/auth.md, "Writer identity on values"): a token with scope `*`
    /// and read-write (a session token, or a token recorded with that
    /// scope) sees token ids; any other reader, and every reader with auth
    /// off, opaque ids.
    pub(crate) fn viewer(&self, grant: &Grant) -> Viewer {
        let admin = self.auth.enabled()
            && grant.token_id.as_deref().is_some_and(|id| {
                matches!(self.auth.session(id), Ok(Some(_)))
                    || matches!(self.auth.token(id), Ok(Some(t))
                        if scope_is_all(&t.scope) && t.access == TokenAccess::ReadWrite)
            });
        if admin {
            Viewer::Admin
        } else {
            Viewer::opaque(self.meta.store())
        }
    }

    /// [`Service::viewer`], asked only when one of `values` records a
    /// token (otherwise there is no writer to show, and any view renders
    /// the same).
    fn viewer_of<'a>(
        &self,
        grant: &Grant,
        values: impl IntoIterator<Item = &'a chorus_core::object::Value>,
    ) -> Viewer {
        if records_a_writer(values) {
            self.viewer(grant)
        } else {
            Viewer::Admin
        }
    }

    /// This service with its writes recording `grant`'s token.
    fn stamped(&self, grant: &Grant) -> (Metadata, chorus_store::oplog::Oplogs) {
        let meta = grant.meta();
        if meta.is_empty() {
            (self.meta.clone(), self.oplogs.clone())
        } else {
            (self.meta.stamped(meta.clone()), self.oplogs.stamped(meta))
        }
    }

    /// A key write as one write of a group commit.
    pub(crate) fn batch_put(grant: &Grant, op: Op) -> Result<BatchPut, ApiError> {
        let Op::Put {
            fp,
            key,
            value,
            context,
            if_absent,
        } = op
        else {
            return Err(ApiError::internal(
                "batch_put of an operation that is not a put",
            ));
        };
        Ok(BatchPut {
            full_prefix: fp,
            key: key.into_bytes(),
            value: value.map_or(PutValue::Tombstone, PutValue::Bytes),
            options: PutOptions { context, if_absent },
            meta: grant.meta(),
        })
    }

    /// What a key write answers.
    pub(crate) fn put_json(fp: &FullPrefix, key: &str, deleted: bool, info: &CommitInfo) -> Value {
        json!({"full_prefix": fp.to_string(), "key": key, "seq": info.seq, "deleted": deleted})
    }

    /// Runs a key write through group commit and waits for it.
    pub(crate) async fn put(&self, grant: &Grant, op: Op) -> Result<Value, ApiError> {
        let Op::Put { fp, key, value, .. } = &op else {
            return Err(ApiError::internal("put of an operation that is not a put"));
        };
        let (fp, key, deleted) = (fp.clone(), key.clone(), value.is_none());
        let info = self.writes.write(Service::batch_put(grant, op)?).await?;
        Ok(Service::put_json(&fp, &key, deleted, &info))
    }

    /// Runs any operation but a key write, on the caller's thread (it may
    /// block: call it where blocking is allowed).
    pub(crate) fn run(&self, grant: &Grant, op: Op) -> Result<Value, ApiError> {
        let (meta, oplogs) = if op.writes() {
            self.stamped(grant)
        } else {
            (self.meta.clone(), self.oplogs.clone())
        };
        let docs = |store: &str| -> Result<Docs, ApiError> { Ok(Docs::open(&meta, store)?) };
        let out = match op {
            Op::Ping => json!({"node": self.meta.store().node_id().to_string()}),
            Op::Get {
                fp,
                key,
                resolver,
                allow_put,
            } => {
                let opts = GetOptions {
                    resolver,
                    allow_put,
                    ..GetOptions::default()
                };
                match meta.get(&fp, key.as_bytes(), &opts)? {
                    Some(read) => read_json(&read, &fp, &self.viewer_of(grant, &read.values)),
                    None => {
                        let mut e = ApiError::not_found(format!(
                            "{fp}/{key} is absent or deleted: to create it so that a concurrent create is kept as a sibling, write with the empty context this error carries"
                        ));
                        e.context = Some(context_to_string(&Object::empty_context()));
                        return Err(e);
                    }
                }
            }
            Op::Put { .. } => {
                return Err(ApiError::internal(
                    "a key write must go through group commit",
                ));
            }
            Op::List { fp, matching, page } => {
                let opts = IterOptions {
                    matching,
                    ..IterOptions::default()
                };
                let mut items = meta.to_list(&Scope::FullPrefix(fp.clone()), &opts)?;
                items.sort_by(|a, b| a.key.cmp(&b.key));
                let (items, next) =
                    page.take(items, |i| String::from_utf8_lossy(&i.key).into_owned());
                let viewer = self.viewer_of(grant, items.iter().flat_map(|i| &i.read.values));
                let mut out = list_json(&items, &fp, &viewer);
                out["next"] = json!(next);
                out
            }
            Op::Prefixes { page } => {
                let snap = meta.store().snapshot()?;
                let mut names: Vec<String> = snap
                    .prefixes()
                    .filter(|fp| !fp.is_reserved())
                    .map(|fp| fp.prefix().to_string())
                    .collect();
                names.sort();
                names.dedup();
                let (names, next) = page.take(names, Clone::clone);
                json!({"prefixes": names, "next": next})
            }
            Op::Subprefixes { prefix, page } => {
                let snap = meta.store().snapshot()?;
                let mut names: Vec<Value> = snap
                    .prefixes()
                    .filter(|fp| fp.prefix() == prefix)
                    .map(|fp| json!({"subprefix": fp.subprefix(), "keys": snap.len_in(fp)}))
                    .collect();
                names.sort_by(|a, b| a["subprefix"].as_str().cmp(&b["subprefix"].as_str()));
                let (names, next) = page.take(names, |v| {
                    v["subprefix"].as_str().unwrap_or_default().to_string()
                });
                json!({"prefix": prefix, "subprefixes": names, "next": next})
            }
            Op::Hash { fp } => {
                let hash = meta.prefix_hash(&fp)?;
                json!({"full_prefix": fp.to_string(), "hash": hex(&hash)})
            }
            Op::HashPrefix { prefix } => {
                FullPrefix::new(&prefix, "x")?;
                let hash = meta.prefix_hash_all(&prefix)?;
                json!({"prefix": prefix, "hash": hex(&hash)})
            }
            Op::DocCreate { store, doc } => docs(&store)?.create(doc)?.to_json(),
            Op::DocUpdate {
                store,
                doc,
                keep_both,
            } => docs(&store)?.update(doc, keep_both)?.to_json(),
            Op::DocUpsert { store, doc } => docs(&store)?.upsert(doc)?.to_json(),
            Op::DocDelete { store, id, rev } => docs(&store)?.delete(&id, &rev)?.to_json(),
            Op::DocResolve { store, id, rev } => docs(&store)?.resolve(&id, &rev)?.to_json(),
            Op::DocGet {
                store,
                id,
                rev,
                conflicts,
            } => {
                let d = docs(&store)?;
                match (rev, conflicts) {
                    (Some(_), true) => {
                        return Err(ApiError::bad(
                            "rev and conflicts cannot be combined: ask for one",
                        ));
                    }
                    (Some(rev), false) => d.get_rev(&id, &rev)?,
                    (None, true) => d.get_with_conflicts(&id)?,
                    (None, false) => d.get(&id)?,
                }
            }
            Op::DocConflicts { store, id, page } => {
                let d = docs(&store)?;
                match page {
                    Some((limit, after)) => {
                        d.conflicts_page(&id, limit, after.as_deref())?.to_json(&id)
                    }
                    None => {
                        let groups: Vec<Vec<String>> = d
                            .conflicts(&id)?
                            .iter()
                            .map(|g| g.iter().map(ToString::to_string).collect())
                            .collect();
                        json!({"conflicts": groups})
                    }
                }
            }
            Op::DocAll { store, page } => {
                // In id order, reading only what the page shows.
                let (docs, next) = docs(&store)?.page(page.limit, page.after.as_deref())?;
                json!({"docs": docs, "next": next})
            }
            Op::LogPush {
                fp,
                path,
                kind,
                payload,
            } => json!({"value": oplogs.push(&fp, &path, &kind, payload)?}),
            Op::LogGet { fp, path } => json!({"value": oplogs.get(&fp, &path)?}),
            Op::LogOps { fp, path } => oplogs.log(&fp, &path)?.to_json(),
        };
        Ok(out)
    }

    /// Tells the core (and the event hub) that something was committed, so
    /// that it replicates and shows at once.
    pub(crate) fn wrote(&self) {
        wake_all(&self.committed);
    }
}

/// Wakes everyone waiting for a commit now (the core and the event hub),
/// and leaves a permit for whichever looks next.
fn wake_all(committed: &tokio::sync::Notify) {
    committed.notify_waiters();
    committed.notify_one();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
