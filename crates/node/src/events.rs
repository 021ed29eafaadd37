//! Change events: one shape and one way of reading them for every
//! consumer (SSE watches, the ZeroMQ PUB socket, `chorus watch`).
//!
//! An event is one key of one commit, as JSON ([`event_json`]), with an id
//! ([`EventId`]) that is the same live and replayed: a consumer that
//! resumes after any id is sent each later event once. The [`Hub`] reads
//! the directory's change feed once, on one task, and hands each batch of
//! commits to every open stream through a bounded broadcast channel; a
//! stream that falls behind the channel reads the missed commits from the
//! feed itself ([`Follower`]), so a slow consumer costs its own reads,
//! never memory, and an idle one costs nothing.
//!
//! Chorus's own names (`$`-prefixed: `$auth`, `$cluster`, ...) are never
//! shown to a client, whether auth is on or not; the stage's reports
//! (`$stage`) only to a stream that names them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::FullPrefix;
use chorus_core::object::{Object, context_to_string};
use chorus_store::{Change, ChangedKey, Cursor, EventId, Feed, Match, Origin, Store};
use serde_json::{Value, json};

use crate::json::{Viewer, records_a_writer, value_json};

/// Commits read from the feed per read.
const BATCH: usize = 256;
/// Batches the broadcast channel holds for streams that are behind: with
/// [`BATCH_BYTES`], what a slow stream can keep alive is bounded (about
/// 32 MiB, more only by single commits over the budget); a stream further
/// behind reads the feed itself.
const CHANNEL: usize = 32;
/// Rendered bytes per batch before the hub starts another (a batch holds
/// at least one commit).
const BATCH_BYTES: usize = 1 << 20;
/// How often the hub looks at the feed when nobody told it of a commit
/// (commits by other processes on the directory, merges).
const POLL: Duration = Duration::from_millis(10);

/// One key of one commit, as every interface shows it: its id and commit
/// sequence number, full prefix and key (a document's or a log's record
/// shows under the document's or log's key, with `"record"` naming it),
/// whether a peer sent it, and its values, context and tombstone flag (or
/// `"removed": true` once a tombstone was collected), each value's writer
/// as `viewer` may see it.
pub fn event_json(
    id: &EventId,
    seq: u64,
    origin: &Origin,
    k: &ChangedKey,
    viewer: &Viewer,
) -> Value {
    let object = k.value.as_deref().and_then(|b| Object::decode(b).ok());
    event_json_of(id, seq, origin, k, object.as_ref(), viewer)
}

/// [`event_json`] of the key's object, decoded.
fn event_json_of(
    id: &EventId,
    seq: u64,
    origin: &Origin,
    k: &ChangedKey,
    object: Option<&Object>,
    viewer: &Viewer,
) -> Value {
    let (base, record) = match chorus_store::split_record(&k.key) {
        Some((base, name)) => (base, Some(name)),
        None => (&k.key[..], None),
    };
    let mut data = json!({
        "id": id.to_string(),
        "seq": seq,
        "full_prefix": k.full_prefix.to_string(),
        "key": text_or_base64(base),
        "from_peer": matches!(origin, Origin::Peer(_)),
    });
    if std::str::from_utf8(base).is_err() {
        data["key_encoding"] = json!("base64");
    }
    if let Some(name) = record {
        data["record"] = json!(String::from_utf8_lossy(name));
    }
    match object {
        Some(o) => {
            let values = o.values().into_iter();
            let values: Vec<Value> = values
                .map(|v| value_json(v, &k.full_prefix, viewer))
                .collect();
            data["values"] = json!(values);
            data["context"] = json!(context_to_string(&o.context()));
            data["tombstone"] = json!(o.is_tombstone());
        }
        None => data["removed"] = json!(true),
    }
    data
}

fn text_or_base64(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => STANDARD.encode(bytes),
    }
}

/// The event a stream ends with when compaction dropped commits it had
/// not read.
pub fn overflow_json(first_seq: u64) -> Value {
    json!({"code": "overflow", "message": format!(
        "changes before seq {first_seq} were compacted before this stream read them: re-read the data, then watch again"
    )})
}

/// Which keys a stream shows: every key, a prefix, or a full prefix,
/// optionally only keys matching a glob. Reserved names never.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The prefix, if any.
    pub prefix: Option<String>,
    /// The subprefix (with `prefix`), if any.
    pub sub: Option<String>,
    /// Only keys (a record's document or log key) matching this.
    pub matching: Option<Match>,
}

impl Scope {
    /// `PREFIX` or `PREFIX/SUBPREFIX`, checked as names.
    pub fn parse(text: Option<&str>) -> Result<Scope, chorus_core::NameError> {
        let Some(text) = text else {
            return Ok(Scope::default());
        };
        match text.split_once('/') {
            Some((p, s)) => {
                FullPrefix::new(p, s)?;
                Ok(Scope {
                    prefix: Some(p.to_string()),
                    sub: Some(s.to_string()),
                    matching: None,
                })
            }
            None => {
                FullPrefix::new(text, "x")?;
                Ok(Scope {
                    prefix: Some(text.to_string()),
                    sub: None,
                    matching: None,
                })
            }
        }
    }

    /// Whether the stream shows this key. Of Chorus's own names only the
    /// stage's reports show, and only to a stream that asked for them by
    /// name (`$stage`).
    pub fn shows(&self, fp: &FullPrefix, key: &[u8]) -> bool {
        if fp.is_reserved()
            && (fp.prefix() != crate::service::READABLE_RESERVED
                || self.prefix.as_deref() != Some(fp.prefix()))
        {
            return false;
        }
        if self.prefix.as_deref().is_some_and(|p| p != fp.prefix())
            || self.sub.as_deref().is_some_and(|s| s != fp.subprefix())
        {
            return false;
        }
        match &self.matching {
            None => true,
            Some(m) => m.matches(chorus_store::split_record(key).map_or(key, |(b, _)| b)),
        }
    }
}

/// One event, rendered once for every stream that shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Its id.
    pub id: EventId,
    /// Its commit's sequence number.
    seq: u64,
    /// Its place among the commit's keys.
    index: usize,
    full_prefix: FullPrefix,
    key: Vec<u8>,
    /// `PREFIX/SUBPREFIX/KEY` (a record's document or log key): the PUB
    /// socket's topic.
    pub topic: Arc<str>,
    /// [`event_json`], serialised.
    pub json: Arc<str>,
    /// The whole SSE frame (`id:`, `event: change`, `data:`), made once
    /// for every stream: writers shown as opaque ids (`json` too).
    pub sse: bytes::Bytes,
    /// The frame for a stream whose reader sees token ids, when it
    /// differs (some value records a token).
    admin_sse: Option<bytes::Bytes>,
}

impl Rendered {
    /// Renders one key of a commit; `opaque` is the view of readers who
    /// do not see token ids.
    fn new(change: &Change, index: usize, k: &ChangedKey, opaque: &Viewer) -> Rendered {
        let id = EventId::new(change.position, index);
        let object = k.value.as_deref().and_then(|b| Object::decode(b).ok());
        let render = |viewer: &Viewer| {
            event_json_of(&id, change.seq, &change.origin, k, object.as_ref(), viewer).to_string()
        };
        // Compact JSON has no newline, so it is one data line.
        let frame =
            |json: &str| bytes::Bytes::from(format!("id: {id}\nevent: change\ndata: {json}\n\n"));
        let json = render(opaque);
        let admin_sse = object
            .as_ref()
            .filter(|o| records_a_writer(o.values()))
            .map(|_| frame(&render(&Viewer::Admin)));
        let base = chorus_store::split_record(&k.key).map_or(&k.key[..], |(b, _)| b);
        let topic = format!("{}/{}", k.full_prefix, String::from_utf8_lossy(base));
        let sse = frame(&json);
        Rendered {
            admin_sse,
            sse,
            id,
            seq: change.seq,
            index,
            full_prefix: k.full_prefix.clone(),
            key: k.key.clone(),
            topic: topic.into(),
            json: json.into(),
        }
    }
}

impl Rendered {
    /// The SSE frame for a reader who sees token ids (`admin`) or not.
    pub fn sse_for(&self, admin: bool) -> &bytes::Bytes {
        match (&self.admin_sse, admin) {
            (Some(frame), true) => frame,
            _ => &self.sse,
        }
    }
}

/// Commits read from the feed at once, rendered: the cursor they were
/// read from and the one after them.
#[derive(Debug)]
pub struct Batch {
    from: Cursor,
    next: Cursor,
    events: Vec<Arc<Rendered>>,
}

/// What a follower hands its consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An event.
    Event(Arc<Rendered>),
    /// Compaction dropped commits the follower had not read: the stream
    /// ends with this (see [`overflow_json`]).
    Overflow(u64),
}

/// One consumer's place in the feed: takes the hub's batches, and reads
/// the feed itself for whatever it missed.
#[derive(Debug)]
pub struct Follower {
    cursor: Cursor,
    after: EventId,
    scope: Scope,
}

impl Follower {
    /// A follower of the events after `after`.
    pub fn new(after: EventId, scope: Scope) -> Follower {
        Follower {
            cursor: after.resume(),
            after,
            scope,
        }
    }

    /// Where it is: everything up to here was handed out.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn wants(&self, seq: u64, index: usize, fp: &FullPrefix, key: &[u8]) -> bool {
        seq > self.cursor.seq() && !self.after.covers(seq, index) && self.scope.shows(fp, key)
    }

    fn emit(&self, change: &Change, out: &mut Vec<Item>, opaque: &Viewer) {
        for (i, k) in change.keys.iter().enumerate() {
            if self.wants(change.seq, i, &k.full_prefix, &k.key) {
                out.push(Item::Event(Arc::new(Rendered::new(change, i, k, opaque))));
            }
        }
    }

    /// Reads the feed from its own cursor: at most one batch. Returns
    /// whether it reached the end.
    pub fn read(
        &mut self,
        store: &Store,
        out: &mut Vec<Item>,
    ) -> Result<bool, chorus_store::Error> {
        match store.changes_since(&self.cursor, BATCH)? {
            Feed::Changes { changes, next } => {
                let opaque = Viewer::opaque(store);
                for c in &changes {
                    self.emit(c, out, &opaque);
                }
                let done = changes.is_empty();
                self.cursor = next;
                Ok(done)
            }
            Feed::Gap { first_seq, resume } => {
                self.cursor = resume;
                out.push(Item::Overflow(first_seq));
                Ok(true)
            }
        }
    }

    /// Takes a batch from the hub: the commits it has not handed out yet.
    /// Returns false when the batch starts beyond what it read (commits
    /// between were missed): read the feed ([`Follower::read`]) first.
    pub fn take(&mut self, batch: &Batch, out: &mut Vec<Item>) -> bool {
        if batch.next.seq() <= self.cursor.seq() && batch.from.seq() <= self.cursor.seq() {
            return true; // already read from the feed
        }
        if batch.from.seq() > self.cursor.seq() {
            return false;
        }
        for e in &batch.events {
            if self.wants(e.seq, e.index, &e.full_prefix, &e.key) {
                out.push(Item::Event(e.clone()));
            }
        }
        self.cursor = batch.next;
        true
    }
}

/// The one reader of the feed for every open stream.
#[derive(Clone)]
pub struct Hub {
    tx: tokio::sync::broadcast::Sender<Arc<Batch>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("streams", &self.tx.receiver_count())
            .finish()
    }
}

impl Hub {
    /// A hub; [`Hub::run`] feeds it.
    pub fn new() -> Hub {
        Hub {
            tx: tokio::sync::broadcast::channel(CHANNEL).0,
        }
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A receiver of the batches read from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    /// Reads the feed from its end now, whenever `committed` is notified
    /// and every [`POLL`], until the store fails to open its feed.
    pub async fn run(self, store: Store, committed: Arc<tokio::sync::Notify>) {
        let mut cursor = loop {
            match store.cursor() {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("the event hub cannot read the change feed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            let _ = tokio::time::timeout(POLL, committed.notified()).await;
            if self.tx.receiver_count() == 0 {
                // Nobody listens: keep up with the end without decoding.
                if let Ok(c) = store.cursor() {
                    cursor = c;
                }
                continue;
            }
            loop {
                let read = {
                    let store = store.clone();
                    tokio::task::block_in_place(|| store.changes_since(&cursor, BATCH))
                };
                match read {
                    Ok(Feed::Changes { changes, next }) => {
                        if changes.is_empty() {
                            cursor = next;
                            break;
                        }
                        let more = changes.len() >= BATCH;
                        let opaque = Viewer::opaque(&store);
                        let mut events = Vec::new();
                        let mut bytes = 0;
                        let last = changes.len() - 1;
                        for (n, c) in changes.iter().enumerate() {
                            for (i, k) in c.keys.iter().enumerate() {
                                let e = Rendered::new(c, i, k, &opaque);
                                bytes += e.json.len();
                                events.push(Arc::new(e));
                            }
                            // A commit's own position is a cursor after
                            // it: a batch may end at any commit.
                            if bytes >= BATCH_BYTES || n == last {
                                let end = if n == last { next } else { c.position };
                                let batch = Batch {
                                    from: cursor,
                                    next: end,
                                    events: std::mem::take(&mut events),
                                };
                                cursor = end;
                                bytes = 0;
                                let _ = self.tx.send(Arc::new(batch));
                            }
                        }
                        if !more {
                            break;
                        }
                    }
                    Ok(Feed::Gap { resume, .. }) => {
                        // Streams find the gap themselves when they read
                        // from their own cursors.
                        cursor = resume;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("the event hub cannot read the change feed: {e}");
                        break;
                    }
                }
            }
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_store::{Options, Write};

    fn store(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            Options {
                create: true,
                ..Options::default()
            },
        )
        .expect("store")
    }

    /// The batches the hub would send for the commits after `from`, one
    /// commit each.
    fn batches(store: &Store, from: Cursor) -> Vec<Batch> {
        let Ok(Feed::Changes { changes, next }) = store.changes_since(&from, 1000) else {
            panic!("no changes");
        };
        let mut out = Vec::new();
        let mut cursor = from;
        let last = changes.len() - 1;
        for (n, c) in changes.iter().enumerate() {
            let end = if n == last { next } else { c.position };
            out.push(Batch {
                from: cursor,
                next: end,
                events: c
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| Arc::new(Rendered::new(c, i, k, &Viewer::Admin)))
                    .collect(),
            });
            cursor = end;
        }
        out
    }

    fn keys(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some(String::from_utf8_lossy(&e.key).into_owned()),
                Item::Overflow(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_follower_hands_out_each_event_once_whether_from_batches_or_the_feed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = store(dir.path());
        let fp = FullPrefix::new("app", "cfg").expect("name");
        let start = s.cursor().expect("cursor");
        for c in 0..4 {
            let writes = (0..2)
                .map(|k| Write::put(&fp, format!("c{c}k{k}").as_bytes(), b"v"))
                .collect();
            s.write(writes).expect("write");
        }
        let all = batches(&s, start);
        assert_eq!(all.len(), 4);
        let every: Vec<String> = (0..4)
            .flat_map(|c| (0..2).map(move |k| format!("c{c}k{k}")))
            .collect();

        // From batches only, in order.
        let mut f = Follower::new(EventId::after(start), Scope::default());
        let mut out = Vec::new();
        for b in &all {
            assert!(f.take(b, &mut out));
        }
        assert_eq!(keys(&out), every);

        // A batch beyond what it read: it must read the feed first; then
        // batches it already read are skipped, and nothing shows twice.
        let mut f = Follower::new(EventId::after(start), Scope::default());
        let mut out = Vec::new();
        assert!(f.take(&all[0], &mut out));
        assert!(!f.take(&all[2], &mut out), "commit 2 was missed");
        while !f.read(&s, &mut out).expect("read") {}
        for b in &all[1..] {
            assert!(f.take(b, &mut out));
        }
        assert_eq!(keys(&out), every);

        // Resumed after the first key of commit 1: its second key, then on.
        let mut f = Follower::new(EventId::after(start), Scope::default());
        let mut first_two = Vec::new();
        f.take(&all[0], &mut first_two);
        f.take(&all[1], &mut first_two);
        let Item::Event(third) = &first_two[2] else {
            panic!("an event");
        };
        let mut f = Follower::new(third.id, Scope::default());
        let mut out = Vec::new();
        while !f.read(&s, &mut out).expect("read") {}
        assert_eq!(keys(&out), every[3..].to_vec());

        // Reserved names never show; a scope narrows.
        let scope = Scope::parse(Some("app/cfg")).expect("scope");
        assert!(scope.shows(&fp, b"k"));
        let reserved = FullPrefix::new("$cluster", "members").expect("name");
        assert!(!Scope::default().shows(&reserved, b"k"));
        let stage = FullPrefix::new("$stage", "reports").expect("name");
        assert!(!Scope::default().shows(&stage, b"k"));
        assert!(
            Scope::parse(Some("$stage"))
                .expect("scope")
                .shows(&stage, b"k")
        );
    }
}
