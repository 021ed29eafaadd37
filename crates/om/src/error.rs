//! The one error of this crate: what was wrong, what to do, and its kind.

use std::fmt;

use chorus_core::Kind;

/// Every way an OM call can fail. Each message says what was wrong and
/// what to do; [`OmError::kind`] gives the status, code and exit code.
#[derive(Debug, Clone)]
pub enum OmError {
    /// The tree, a name, a value or an argument is wrong; nothing was
    /// written.
    Invalid(String),
    /// What was asked for does not exist.
    NotFound(String),
    /// Writing would overwrite something different (export without
    /// `force`); nothing was written.
    Conflict(String),
    /// A file system call failed.
    Io(String),
    /// The store failed (its own kind and message).
    Store(chorus_store::Error),
    /// The caller's progress callback stopped the import or export (what
    /// was written before stays).
    Stopped(String),
}

impl OmError {
    /// The kind of failure: `BadRequest` for a bad tree or input,
    /// `NotFound`, `Conflict`, `Storage` for file system errors, and the
    /// store's own kind for its errors.
    pub fn kind(&self) -> Kind {
        match self {
            OmError::Invalid(_) => Kind::BadRequest,
            OmError::NotFound(_) => Kind::NotFound,
            OmError::Conflict(_) => Kind::Conflict,
            OmError::Io(_) => Kind::Storage,
            OmError::Store(e) => e.kind(),
            OmError::Stopped(_) => Kind::Busy,
        }
    }

    /// A failed file system call on `path`.
    pub(crate) fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> Self {
        OmError::Io(format!(
            "could not {what} {}: {e}; check that it exists and that you may read and write it",
            path.display()
        ))
    }
}

impl fmt::Display for OmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OmError::Invalid(m)
            | OmError::NotFound(m)
            | OmError::Conflict(m)
            | OmError::Io(m)
            | OmError::Stopped(m) => f.write_str(m),
            OmError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OmError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<chorus_store::Error> for OmError {
    fn from(e: chorus_store::Error) -> Self {
        OmError::Store(e)
    }
}

/// Several problems found while checking a tree or a prefix, as one
/// message: the first [`SHOWN`] of them, and how many more.
pub(crate) struct Problems {
    list: Vec<String>,
    more: usize,
}

/// How many problems a message lists.
pub(crate) const SHOWN: usize = 20;

impl Problems {
    pub(crate) fn new() -> Self {
        Problems {
            list: Vec::new(),
            more: 0,
        }
    }

    pub(crate) fn push(&mut self, problem: String) {
        if self.list.len() < SHOWN {
            self.list.push(problem);
        } else {
            self.more += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Everything found, as one message starting with `head`.
    pub(crate) fn message(&self, head: &str, tail: &str) -> String {
        let mut m = format!("{head}:\n  {}", self.list.join("\n  "));
        if self.more > 0 {
            m.push_str(&format!("\n  (and {} more)", self.more));
        }
        m.push('\n');
        m.push_str(tail);
        m
    }
}
