//! How a key's values look in JSON, the same for the HTTP API and the
//! command line: text where the bytes are UTF-8, else base64 with
//! `"encoding": "base64"`; a deleted value shows `"tombstone": true`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::object::{Value as ObjValue, context_to_string};
use chorus_store::Read;
use serde_json::{Value, json};

/// One value, with its timestamp, the node that wrote it and, when it
/// records any, its metadata (`"meta": {"token": ID, "priority": N,
/// "window_ms": W}`, only the fields recorded).
pub fn value_json(v: &ObjValue) -> Value {
    let mut o = json!({"timestamp": v.timestamp.ms(), "node": v.node.to_string()});
    let m = v.meta();
    if !m.is_empty() {
        let mut meta = json!({});
        if let Some(t) = &m.token {
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

/// A read: its values (siblings), the context to write back with, and
/// whether the key is deleted.
pub fn read_json(read: &Read) -> Value {
    let values: Vec<Value> = read.values.iter().map(value_json).collect();
    json!({"values": values, "context": context_to_string(&read.context), "tombstone": read.tombstone})
}

/// A stored object: its values (siblings), its context, and whether every
/// value is a tombstone.
pub fn object_json(object: &chorus_core::object::Object) -> Value {
    let values: Vec<Value> = object.values().into_iter().map(value_json).collect();
    let tombstone = object.values().iter().all(|v| v.bytes().is_none());
    json!({"values": values, "context": context_to_string(&object.context()), "tombstone": tombstone})
}

/// Listed keys: each a read plus its `key` (text, or base64 when the key
/// is not UTF-8), as `{"keys": [...]}`.
pub fn list_json(items: &[chorus_store::Item]) -> Value {
    let keys: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut o = read_json(&i.read);
            o["key"] = match std::str::from_utf8(&i.key) {
                Ok(s) => json!(s),
                Err(_) => json!(STANDARD.encode(&i.key)),
            };
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
