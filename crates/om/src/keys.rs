//! Keys: `<loc>/.meta/<p1>/.../<pn>` (`.meta/...` for the root location).

use crate::SPECIAL_FOLDERS;
use crate::error::OmError;

/// The name of the folder that holds a location's metadata.
pub(crate) const META: &str = ".meta";

/// The key of a location's `.meta` folder: `<loc>/.meta`, or `.meta` for
/// the root location `""`.
pub fn meta_key(location: &str) -> Result<String, OmError> {
    check_location(location)?;
    Ok(meta_key_unchecked(location))
}

/// The key of an entry: `path` holds the names of its groups then its own
/// name, without suffixes (`["shots", "frames"]` for
/// `.meta/shots.dict/frames.int`).
pub fn entry_key(location: &str, path: &[&str]) -> Result<String, OmError> {
    check_location(location)?;
    for name in path {
        check_component(name).map_err(OmError::Invalid)?;
    }
    Ok(join(&meta_key_unchecked(location), path))
}

pub(crate) fn meta_key_unchecked(location: &str) -> String {
    match location {
        "" => META.to_string(),
        loc => format!("{loc}/{META}"),
    }
}

/// `base/p1/.../pn`.
pub(crate) fn join<S: AsRef<str>>(base: &str, path: &[S]) -> String {
    let mut key = base.to_string();
    for p in path {
        key.push('/');
        key.push_str(p.as_ref());
    }
    key
}

/// Checks a location: `""` (the root) or folder names joined by `/`.
pub(crate) fn check_location(location: &str) -> Result<(), OmError> {
    if location.is_empty() {
        return Ok(());
    }
    for part in location.split('/') {
        let bad = match part {
            "" => Some("an empty folder name (a leading, trailing or doubled '/')"),
            "." | ".." => Some("'.' or '..'"),
            META => Some("a .meta folder (a location is the folder that holds .meta)"),
            p if p.contains('\0') => Some("a zero byte"),
            _ => None,
        };
        if let Some(why) = bad {
            return Err(OmError::Invalid(format!(
                "the location {location:?} holds {why}: write it relative to the tree's root with '/' between folders, \"\" for the root"
            )));
        }
    }
    Ok(())
}

/// Why `name` cannot be one component of a key, if it cannot.
pub(crate) fn check_component(name: &str) -> Result<(), String> {
    let why = match name {
        "" => "is empty",
        "." | ".." => "is '.' or '..'",
        n if n.contains('/') => "contains '/'",
        n if n.contains('\0') => "contains a zero byte",
        _ => return Ok(()),
    };
    Err(format!(
        "the name {name:?} {why}: entry names are non-empty and hold no '/' (pass groups as separate names)"
    ))
}

/// Checks the name of an entry an API call writes: a component that is
/// not one of OM's own folders.
pub(crate) fn check_entry_name(name: &str) -> Result<(), OmError> {
    check_component(name).map_err(OmError::Invalid)?;
    if SPECIAL_FOLDERS.contains(&name) {
        return Err(OmError::Invalid(format!(
            "{name} is OM's own folder (history and trash are kept there): pick another name"
        )));
    }
    Ok(())
}

/// A key split into its location and the names under `.meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedKey {
    pub(crate) location: String,
    pub(crate) path: Vec<String>,
}

/// Splits a key at its first `.meta` component (a location never holds
/// one); `None` when the key has none or its location is malformed.
pub(crate) fn parse_key(key: &str) -> Option<ParsedKey> {
    let parts: Vec<&str> = key.split('/').collect();
    let at = parts.iter().position(|p| *p == META)?;
    let location = parts[..at].join("/");
    check_location(&location).ok()?;
    let path: Vec<String> = parts[at + 1..].iter().map(|s| s.to_string()).collect();
    if path.iter().any(|p| check_component(p).is_err()) {
        return None;
    }
    Some(ParsedKey { location, path })
}

/// The location's parent location (`"a/b"` -> `"a"`, `"a"` -> `""`);
/// `None` for the root.
pub(crate) fn parent_location(location: &str) -> Option<&str> {
    if location.is_empty() {
        return None;
    }
    Some(location.rsplit_once('/').map_or("", |(parent, _)| parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_location_meta_and_names() {
        assert_eq!(meta_key("").expect("root"), ".meta");
        assert_eq!(meta_key("a/b").expect("nested"), "a/b/.meta");
        assert_eq!(entry_key("", &["x"]).expect("root entry"), ".meta/x");
        assert_eq!(
            entry_key("a", &["g", "x"]).expect("nested entry"),
            "a/.meta/g/x"
        );
        for bad in ["/a", "a/", "a//b", "a/../b", "a/.meta", "."] {
            assert!(meta_key(bad).is_err(), "{bad}");
        }
        assert!(entry_key("", &["a/b"]).is_err());
        assert!(entry_key("", &[""]).is_err());
        assert!(entry_key("", &[".."]).is_err());
    }

    #[test]
    fn keys_split_at_the_first_meta() {
        let p = parse_key("a/b/.meta/g/.meta/x").expect("parses");
        assert_eq!(p.location, "a/b");
        assert_eq!(p.path, ["g", ".meta", "x"]);
        let root = parse_key(".meta").expect("parses");
        assert_eq!(root.location, "");
        assert!(root.path.is_empty());
        assert_eq!(parse_key("a/b"), None);
        assert_eq!(parse_key("a//.meta/x"), None);
        assert_eq!(parse_key(".meta/x/../y"), None);
        assert_eq!(parse_key(".meta/"), None);
    }

    #[test]
    fn parent_locations_climb_to_the_root() {
        assert_eq!(parent_location("a/b"), Some("a"));
        assert_eq!(parent_location("a"), Some(""));
        assert_eq!(parent_location(""), None);
    }
}
