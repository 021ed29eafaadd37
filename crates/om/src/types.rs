//! OM's types (the suffixes of its files and folders) and how a key's
//! value encodes one entry.

use crate::error::OmError;

/// The type of an entry: what its suffix says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OmType {
    /// `name.bool`: `true` or `false`.
    Bool,
    /// `name.int`.
    Int,
    /// `name.float`.
    Float,
    /// `name.string`: a JSON string.
    String,
    /// `name.text`: a JSON string (longer text).
    Text,
    /// `name.null`.
    Null,
    /// `name.tuple`: a JSON array.
    Tuple,
    /// `name.date`.
    Date,
    /// `name.dict/`: a group of named entries.
    Dict,
    /// `name.list/`: a group of entries.
    List,
    /// A folder without a suffix: `.history`, `.trash`, `.versions` and
    /// the folders inside them (history snapshots `<name>&<stamp>`).
    Folder,
    /// A `.meta` folder itself (its key is `<loc>/.meta`).
    Meta,
}

/// Every type, in the order above.
const ALL: [OmType; 12] = [
    OmType::Bool,
    OmType::Int,
    OmType::Float,
    OmType::String,
    OmType::Text,
    OmType::Null,
    OmType::Tuple,
    OmType::Date,
    OmType::Dict,
    OmType::List,
    OmType::Folder,
    OmType::Meta,
];

impl OmType {
    /// The suffixes of value files, for messages.
    pub const FILE_SUFFIXES: [&'static str; 8] = [
        "bool", "int", "float", "string", "text", "null", "tuple", "date",
    ];

    /// The name the value of a key records (`"int"`, `"dict"`, `"folder"`,
    /// `"meta"`).
    pub fn name(self) -> &'static str {
        match self {
            OmType::Bool => "bool",
            OmType::Int => "int",
            OmType::Float => "float",
            OmType::String => "string",
            OmType::Text => "text",
            OmType::Null => "null",
            OmType::Tuple => "tuple",
            OmType::Date => "date",
            OmType::Dict => "dict",
            OmType::List => "list",
            OmType::Folder => "folder",
            OmType::Meta => "meta",
        }
    }

    /// The suffix of the file or folder on disk (`name.int`); `None` for
    /// [`OmType::Folder`] and [`OmType::Meta`], which keep their whole name.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            OmType::Folder | OmType::Meta => None,
            t => Some(t.name()),
        }
    }

    /// The type a file or folder suffix names (`"int"` -> `Int`, `"dict"`
    /// -> `Dict`); `None` for anything else (`folder` and `meta` are not
    /// suffixes).
    pub fn parse(suffix: &str) -> Option<OmType> {
        ALL.into_iter().find(|t| t.suffix() == Some(suffix))
    }

    /// The type a key's value names ([`OmType::name`]), `folder` and `meta`
    /// included.
    pub fn from_name(name: &str) -> Option<OmType> {
        ALL.into_iter().find(|t| t.name() == name)
    }

    /// True for the types stored as files (they have a value).
    pub fn is_value(self) -> bool {
        !matches!(
            self,
            OmType::Dict | OmType::List | OmType::Folder | OmType::Meta
        )
    }

    /// True for the folders that hold entries (`dict`, `list`, `folder`).
    pub fn is_group(self) -> bool {
        matches!(self, OmType::Dict | OmType::List | OmType::Folder)
    }

    /// The JSON text an empty file of this type stands for: `false`, `0`,
    /// `0.0`, `""` (string and text), `null`, `[]` (tuple and list), `{}`
    /// (dict). A `date`'s default is the time it is read, so it has none
    /// here (`""`); nor have `folder` and `meta`.
    pub fn default_raw(self) -> &'static str {
        match self {
            OmType::Bool => "false",
            OmType::Int => "0",
            OmType::Float => "0.0",
            OmType::String | OmType::Text => "\"\"",
            OmType::Null => "null",
            OmType::Tuple | OmType::List => "[]",
            OmType::Dict => "{}",
            OmType::Date | OmType::Folder | OmType::Meta => "",
        }
    }
}

impl std::fmt::Display for OmType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why `raw` cannot be the content of a file of type `ty`, if it cannot:
/// it must be empty (the type's default) or one JSON value (Python's
/// `NaN`, `Infinity` and `-Infinity` are allowed in a `float`). Groups,
/// folders and `.meta` have no content (`raw` must be empty).
pub(crate) fn check_raw(ty: OmType, raw: &str) -> Result<(), String> {
    if !ty.is_value() {
        return match raw.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "a {ty} has no content of its own (raw must be \"\")"
            )),
        };
    }
    if raw.is_empty() {
        return Ok(());
    }
    if ty == OmType::Float && matches!(raw.trim(), "NaN" | "Infinity" | "-Infinity") {
        return Ok(());
    }
    serde_json::from_str::<serde_json::Value>(raw)
        .map(|_| ())
        .map_err(|e| format!("it is not valid JSON ({e})"))
}

/// The bytes of a key's value for an entry of type `ty` with content
/// `raw` (ignored for groups): `{"type":"int","raw":"5"}`, `{"type":"dict"}`.
pub fn encode_value(ty: OmType, raw: &str) -> Vec<u8> {
    let name = ty.name();
    if ty.is_value() {
        let raw = serde_json::Value::String(raw.to_string());
        format!("{{\"type\":\"{name}\",\"raw\":{raw}}}").into_bytes()
    } else {
        format!("{{\"type\":\"{name}\"}}").into_bytes()
    }
}

/// The entry a key's value holds: its type and content (`""` for groups).
pub fn decode_value(bytes: &[u8]) -> Result<(OmType, String), OmError> {
    let bad = |why: &str| {
        OmError::Invalid(format!(
            "{:?} is not an Open Metadata value ({why}): keys of an OM prefix hold {{\"type\":\"int\",\"raw\":\"5\"}}; write them with `chorus om import` or the om API",
            String::from_utf8_lossy(&bytes[..bytes.len().min(100)])
        ))
    };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
    let name = v
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| bad("no \"type\""))?;
    let ty = OmType::from_name(name).ok_or_else(|| bad("an unknown type"))?;
    if !ty.is_value() {
        return Ok((ty, String::new()));
    }
    let raw = v
        .get("raw")
        .and_then(|r| r.as_str())
        .ok_or_else(|| bad("no \"raw\" text"))?;
    Ok((ty, raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_names_round_trip() {
        for t in ALL {
            assert_eq!(OmType::from_name(t.name()), Some(t));
            match t.suffix() {
                Some(s) => assert_eq!(OmType::parse(s), Some(t)),
                None => assert_eq!(OmType::parse(t.name()), None),
            }
        }
        assert_eq!(OmType::parse("txt"), None);
        for s in OmType::FILE_SUFFIXES {
            assert!(OmType::parse(s).is_some_and(OmType::is_value));
        }
    }

    #[test]
    fn values_encode_with_the_type_first() {
        assert_eq!(
            encode_value(OmType::String, "\"a \\\"b\\\"\""),
            br#"{"type":"string","raw":"\"a \\\"b\\\"\""}"#.to_vec()
        );
        assert_eq!(encode_value(OmType::Dict, "ignored"), br#"{"type":"dict"}"#);
        for (t, raw) in [(OmType::Int, "5"), (OmType::Text, ""), (OmType::List, "")] {
            let decoded = decode_value(&encode_value(t, raw)).expect("decodes");
            assert_eq!(decoded, (t, raw.to_string()));
        }
        assert!(decode_value(b"{\"type\":\"int\"}").is_err());
        assert!(decode_value(b"{\"type\":\"weird\"}").is_err());
        assert!(decode_value(b"5").is_err());
    }

    #[test]
    fn raw_must_be_json_or_empty() {
        assert!(check_raw(OmType::Int, "").is_ok());
        assert!(check_raw(OmType::Int, "5").is_ok());
        assert!(check_raw(OmType::Float, "NaN").is_ok());
        assert!(check_raw(OmType::Int, "NaN").is_err());
        assert!(check_raw(OmType::String, "unquoted").is_err());
        assert!(check_raw(OmType::Dict, "").is_ok());
        assert!(check_raw(OmType::Dict, "{}").is_err());
    }
}
