//! The address space: a full prefix `(prefix, subprefix)` plus a key.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Longest prefix or subprefix, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a prefix, subprefix or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The text had no `/` between prefix and subprefix.
    #[error("full prefix {0:?} has no '/': write it as PREFIX/SUBPREFIX, for example 'config/web'")]
    MissingSlash(String),
    /// A prefix or subprefix was empty.
    #[error("the {0} is empty: prefixes and subprefixes are non-empty names")]
    Empty(&'static str),
    /// A prefix or subprefix was longer than [`MAX_NAME_BYTES`].
    #[error("the {what} is {len} bytes long; the limit is {MAX_NAME_BYTES} bytes")]
    TooLong {
        /// "prefix" or "subprefix".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A prefix or subprefix held a `/` or a control character.
    #[error(
        "the {what} {name:?} contains {bad:?}: names may not contain '/' or control characters"
    )]
    BadChar {
        /// "prefix" or "subprefix".
        what: &'static str,
        /// The offending name.
        name: String,
        /// The offending character.
        bad: char,
    },
    /// A key was empty.
    #[error("the key is empty: keys are non-empty byte strings")]
    EmptyKey,
    /// A key was longer than the configured limit.
    #[error("the key is {len} bytes long; the limit is {limit} bytes")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// A `(prefix, subprefix)` pair: the namespace a key lives in.
///
/// Both parts are non-empty UTF-8 names of at most [`MAX_NAME_BYTES`] bytes
/// with no `/` and no control characters. Names that start with `$` are
/// reserved for Chorus itself (see [`FullPrefix::is_reserved`]). Cloning is
/// cheap: both parts are reference counted.
#[derive(Clone, Eq)]
pub struct FullPrefix {
    prefix: Arc<str>,
    subprefix: Arc<str>,
}

impl FullPrefix {
    /// Builds a full prefix from its two parts, validating both.
    pub fn new(prefix: &str, subprefix: &str) -> Result<Self, NameError> {
        check_name("prefix", prefix)?;
        check_name("subprefix", subprefix)?;
        Ok(FullPrefix {
            prefix: Arc::from(prefix),
            subprefix: Arc::from(subprefix),
        })
    }

    /// Parses the `prefix/subprefix` form used on command lines and in URLs.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let (prefix, subprefix) = text
            .split_once('/')
            .ok_or_else(|| NameError::MissingSlash(text.to_string()))?;
        Self::new(prefix, subprefix)
    }

    /// The prefix part.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subprefix part.
    pub fn subprefix(&self) -> &str {
        &self.subprefix
    }

    /// True when either part starts with `$`: such names belong to Chorus
    /// (`$cluster`, `$auth`, `$reducers`, ...), not to applications.
    pub fn is_reserved(&self) -> bool {
        self.prefix.starts_with('$') || self.subprefix.starts_with('$')
    }
}

impl PartialEq for FullPrefix {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl std::hash::Hash for FullPrefix {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.prefix.hash(state);
        self.subprefix.hash(state);
    }
}

impl PartialOrd for FullPrefix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FullPrefix {
    /// By prefix, then subprefix; clones of one value compare equal without
    /// reading their bytes.
    fn cmp(&self, other: &Self) -> Ordering {
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        if same(&self.prefix, &other.prefix) {
            if same(&self.subprefix, &other.subprefix) {
                return Ordering::Equal;
            }
            return self.subprefix.cmp(&other.subprefix);
        }
        self.prefix.cmp(&other.prefix)
    }
}

impl fmt::Display for FullPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.prefix, self.subprefix)
    }
}

impl fmt::Debug for FullPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FullPrefix({self})")
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty(what));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
        });
    }
    if let Some(bad) = name.chars().find(|c| *c == '/' || c.is_control()) {
        return Err(NameError::BadChar {
            what,
            name: name.to_string(),
            bad,
        });
    }
    Ok(())
}

/// Checks a key against the rules and a length limit in bytes.
pub fn validate_key(key: &[u8], limit: usize) -> Result<(), NameError> {
    if key.is_empty() {
        return Err(NameError::EmptyKey);
    }
    if key.len() > limit {
        return Err(NameError::KeyTooLong {
            len: key.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_and_subprefix() {
        let fp = FullPrefix::parse("config/web").expect("valid");
        assert_eq!(fp.prefix(), "config");
        assert_eq!(fp.subprefix(), "web");
        assert_eq!(fp.to_string(), "config/web");
        assert!(!fp.is_reserved());
        assert!(
            FullPrefix::parse("$cluster/members")
                .expect("valid")
                .is_reserved()
        );
    }

    #[test]
    fn refuses_malformed_names() {
        assert!(matches!(
            FullPrefix::parse("config"),
            Err(NameError::MissingSlash(_))
        ));
        assert!(matches!(
            FullPrefix::parse("/web"),
            Err(NameError::Empty("prefix"))
        ));
        assert!(matches!(
            FullPrefix::parse("config/"),
            Err(NameError::Empty("subprefix"))
        ));
        assert!(matches!(
            FullPrefix::parse("a/b/c"),
            Err(NameError::BadChar { bad: '/', .. })
        ));
        assert!(matches!(
            FullPrefix::new("a\n", "b"),
            Err(NameError::BadChar { bad: '\n', .. })
        ));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            FullPrefix::new(&long, "b"),
            Err(NameError::TooLong { .. })
        ));
        assert!(FullPrefix::new(&"x".repeat(MAX_NAME_BYTES), "b").is_ok());
    }

    #[test]
    fn orders_by_prefix_then_subprefix() {
        let p = |s: &str| FullPrefix::parse(s).expect("valid");
        let mut v = [p("b/a"), p("a/z"), p("a/b"), p("ab/a")];
        v.sort();
        let shown: Vec<String> = v.iter().map(|f| f.to_string()).collect();
        assert_eq!(shown, ["a/b", "a/z", "ab/a", "b/a"]);
        let x = p("a/b");
        assert_eq!(x, x.clone());
        assert_eq!(x, p("a/b"));
        assert_ne!(x, p("a/c"));
    }

    #[test]
    fn keys_are_non_empty_and_bounded() {
        assert_eq!(validate_key(b"", 10), Err(NameError::EmptyKey));
        assert!(validate_key(b"0123456789", 10).is_ok());
        assert_eq!(
            validate_key(b"0123456789a", 10),
            Err(NameError::KeyTooLong { len: 11, limit: 10 })
        );
    }
}
