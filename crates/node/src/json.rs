//! How a key's values look in JSON, the same for the HTTP API, ZeroMQ and
//! the command line: text where the bytes are UTF-8, else base64 with
//! `"encoding": "base64"`; a deleted value shows `"tombstone": true`; the
//! writer's identity as the reader may see it ([`Viewer`]).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::FullPrefix;
use chorus_core::object::{Object, Value as ObjValue, context_to_string};
use chorus_store::{Read, Store};
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Who reads values, for the writer identity they show (`meta.token`;
/// docs/auth.md, "Writer identity on values").
#[derive(Clone, Debug)]
pub enum Viewer {
    /// Sees the id of the token that wrote each value: a token with scope
    /// `*` and read-write (a session token is one), and the data
    /// directory's owner (the command line on the directory).
    Admin,
    /// Sees an opaque writer id instead ([`WriterKey::writer_id`]): every
    /// other reader, and every reader of a node with auth off.
    Opaque(WriterKey),
    /// Sees no writer identity at all: no key could be had (the system's
    /// random number generator failed and the node holds no cluster key).
    Hidden,
}

impl Viewer {
    /// The opaque view of a node's readers: [`WriterKey::of_store`].
    pub fn opaque(store: &Store) -> Viewer {
        WriterKey::of_store(store).map_or(Viewer::Hidden, Viewer::Opaque)
    }

    /// The writer identity `token` shows as in full prefix `fp`, if any.
    pub fn writer(&self, token: &str, fp: &FullPrefix) -> Option<String> {
        match self {
            Viewer::Admin => Some(token.to_string()),
            Viewer::Opaque(key) => Some(key.writer_id(token, fp)),
            Viewer::Hidden => None,
        }
    }
}

/// The key of opaque writer ids.
#[derive(Clone)]
pub struct WriterKey([u8; 32]);

impl std::fmt::Debug for WriterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterKey(..)")
    }
}

/// Where the cluster key lives (docs/auth.md, Storage).
const CLUSTER_KEY: (&str, &str, &[u8]) = ("$auth", "keys", b"hmac");
/// What the writer key is derived for, so that it is never the key that
/// signs tokens.
const WRITER_KEY_LABEL: &[u8] = b"chorus writer id v1";

impl WriterKey {
    /// The writer key of a cluster key: HMAC-SHA256(cluster key, a fixed
    /// label).
    pub fn from_cluster_key(cluster_key: &[u8]) -> WriterKey {
        WriterKey(hmac_sha256(cluster_key, &[WRITER_KEY_LABEL]))
    }

    /// The key a node's readers get ids from: derived from the cluster key
    /// that signs tokens (the last writer's of its siblings, the same on
    /// every node once replicated), so ids agree across the cluster; on a
    /// node that holds no cluster key, a random key of this process (ids
    /// then differ between processes). `None` only when there is neither.
    pub fn of_store(store: &Store) -> Option<WriterKey> {
        let cluster_key = FullPrefix::new(CLUSTER_KEY.0, CLUSTER_KEY.1)
            .ok()
            .and_then(|fp| store.snapshot().ok()?.get(&fp, CLUSTER_KEY.2))
            .and_then(|bytes| Object::decode(&bytes).ok())
            .and_then(|o| {
                let mut values = o.values();
                values.sort();
                values.into_iter().rev().find_map(|v| {
                    v.bytes()
                        .filter(|b| b.len() == crate::auth::KEY_BYTES)
                        .map(<[u8]>::to_vec)
                })
            });
        match cluster_key {
            Some(k) => Some(WriterKey::from_cluster_key(&k)),
            None => process_key().map(|k| WriterKey(*k)),
        }
    }

    /// `w:` and the first 16 hex digits of HMAC-SHA256(key, token id, 0,
    /// full prefix): the same for one token within one full prefix, and
    /// unrelated between full prefixes or tokens for whoever lacks the key.
    pub fn writer_id(&self, token: &str, fp: &FullPrefix) -> String {
        let fp = fp.to_string();
        let mac = hmac_sha256(&self.0, &[token.as_bytes(), &[0], fp.as_bytes()]);
        let hex: String = mac[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("w:{hex}")
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// A random key made once per process, for a node without a cluster key.
fn process_key() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).ok().map(|()| k)
    })
    .as_ref()
}

/// True when some value records a token id: only then does rendering need
/// to know who reads.
pub fn records_a_writer<'a>(values: impl IntoIterator<Item = &'a ObjValue>) -> bool {
    values.into_iter().any(|v| v.meta().token.is_some())
}

/// One value of full prefix `fp`, with its timestamp, the node that wrote
/// it and, when it records any, its metadata (`"meta": {"token": WRITER,
/// "priority": N, "window_ms": W}`, only the fields recorded), the writer
/// as `viewer` may see it.
pub fn value_json(v: &ObjValue, fp: &FullPrefix, viewer: &Viewer) -> Value {
    let mut o = json!({"timestamp": v.timestamp.ms(), "node": v.node.to_string()});
    let m = v.meta();
    if !m.is_empty() {
        let mut meta = json!({});
        if let Some(t) = m.token.as_deref().and_then(|t| viewer.writer(t, fp)) {
            meta["token"] = json!(t);
        }
        if (m.priority, m.window_ms) != (0, 0) {
            meta["priority"] = json!(m.priority);
            meta["window_ms"] = json!(m.window_ms);
        }
        o["meta"] = meta;
    }
    match v.bytes() {
        None => o["tombstone"] = json!(true),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => o["value"] = json!(s),
            Err(_) => {
                o["value"] = json!(STANDARD.encode(b));
                o["encoding"] = json!("base64");
            }
        },
    }
    o
}

/// A read of a key of `fp`: its values (siblings), the context to write
/// back with, and whether the key is deleted.
pub fn read_json(read: &Read, fp: &FullPrefix, viewer: &Viewer) -> Value {
    let values: Vec<Value> = read
        .values
        .iter()
        .map(|v| value_json(v, fp, viewer))
        .collect();
    json!({"values": values, "context": context_to_string(&read.context), "tombstone": read.tombstone})
}

/// A stored object of `fp`: its values (siblings), its context, and
/// whether every value is a tombstone.
pub fn object_json(object: &Object, fp: &FullPrefix, viewer: &Viewer) -> Value {
    let values: Vec<Value> = object
        .values()
        .into_iter()
        .map(|v| value_json(v, fp, viewer))
        .collect();
    let tombstone = object.values().iter().all(|v| v.bytes().is_none());
    json!({"values": values, "context": context_to_string(&object.context()), "tombstone": tombstone})
}

/// Listed keys of `fp`: each a read plus its `key` (text, or base64 with
/// `"key_encoding": "base64"` when the key is not UTF-8), as
/// `{"keys": [...]}`.
pub fn list_json(items: &[chorus_store::Item], fp: &FullPrefix, viewer: &Viewer) -> Value {
    let keys: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut o = read_json(&i.read, fp, viewer);
            match std::str::from_utf8(&i.key) {
                Ok(s) => o["key"] = json!(s),
                Err(_) => {
                    o["key"] = json!(STANDARD.encode(&i.key));
                    o["key_encoding"] = json!("base64");
                }
            }
            o
        })
        .collect();
    json!({ "keys": keys })
}

/// Whole numbers in JSON bodies: `3` or `3.0` (JSON Schema's `integer`
/// counts both), within the field's range; anything else is refused.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error as _};

    fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(u) = n.as_u64() {
            return Ok(u);
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(f as u64),
            _ => Err(D::Error::custom(format!(
                "{n} is not a whole number of at least 0"
            ))),
        }
    }

    /// A whole number that fits `T`.
    pub(crate) fn de<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let n = number(d)?;
        T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
    }

    /// An optional whole number (null or absent: none).
    pub(crate) fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| number(n).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use chorus_core::NodeId;
    use chorus_core::object::{Hlc, Meta};

    use super::*;

    fn fp(text: &str) -> FullPrefix {
        FullPrefix::parse(text).expect("a full prefix")
    }

    #[test]
    fn writer_ids_are_per_token_and_full_prefix_and_hide_the_token() {
        let key = WriterKey::from_cluster_key(&[7; 32]);
        let a = key.writer_id("9d0e7a51c2b4f6e3", &fp("app/a"));
        assert_eq!(a, key.writer_id("9d0e7a51c2b4f6e3", &fp("app/a")));
        assert!(a.starts_with("w:") && a.len() == 18, "{a}");
        assert!(a[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert!(!a.contains("9d0e7a51c2b4f6e3"));
        for other in [
            key.writer_id("9d0e7a51c2b4f6e3", &fp("app/b")),
            key.writer_id("9d0e7a51c2b4f6e4", &fp("app/a")),
            // The separator keeps (token, prefix) pairs apart.
            key.writer_id("9d0e7a51c2b4f6e3a", &fp("pp/a")),
            WriterKey::from_cluster_key(&[8; 32]).writer_id("9d0e7a51c2b4f6e3", &fp("app/a")),
        ] {
            assert_ne!(a, other);
        }
        // The same cluster key gives the same ids on every node.
        let again = WriterKey::from_cluster_key(&[7; 32]);
        assert_eq!(again.writer_id("9d0e7a51c2b4f6e3", &fp("app/a")), a);
    }

    #[test]
    fn a_value_shows_its_writer_as_the_viewer_may_see_it() {
        let v = chorus_core::object::Value::data(b"x", Hlc(5 << 16), NodeId::from_bytes([1; 16]))
            .with_meta(Meta {
                token: Some("9d0e7a51c2b4f6e3".into()),
                priority: 2,
                window_ms: 10,
            });
        let at = fp("app/a");
        let admin = value_json(&v, &at, &Viewer::Admin);
        assert_eq!(admin["meta"]["token"], "9d0e7a51c2b4f6e3");
        let key = WriterKey::from_cluster_key(&[7; 32]);
        let other = value_json(&v, &at, &Viewer::Opaque(key.clone()));
        assert_eq!(
            other["meta"]["token"],
            key.writer_id("9d0e7a51c2b4f6e3", &at).as_str()
        );
        assert_eq!(other["meta"]["priority"], 2);
        let hidden = value_json(&v, &at, &Viewer::Hidden);
        assert!(hidden["meta"].get("token").is_none(), "{hidden}");
        assert!(records_a_writer([&v]));
        let plain = chorus_core::object::Value::data(b"x", Hlc(5), NodeId::from_bytes([1; 16]));
        assert!(!records_a_writer([&plain]));
    }
}
