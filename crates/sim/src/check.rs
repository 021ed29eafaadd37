//! Checkers (stand-in until the full checkers land).

use chorus_store::Metadata;
use chorus_store::oplog::Oplogs;

use crate::client::History;

/// Something a checker found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Which checker.
    pub checker: &'static str,
    /// The key, if one.
    pub key: Option<String>,
    /// What is wrong.
    pub detail: String,
}

impl Violation {
    /// A bound exceeded.
    pub fn bound(node: u32, name: &str, size: usize, bound: usize) -> Violation {
        Violation {
            checker: "bounds",
            key: None,
            detail: format!("n{node}: {name} holds {size}, over its bound {bound}"),
        }
    }
    /// No convergence.
    pub fn not_converged(ms: u64) -> Violation {
        Violation {
            checker: "convergence",
            key: None,
            detail: format!("the replicas did not converge within {ms} ms of the heal"),
        }
    }
    /// The key it is about.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Every checker.
pub fn check_all(_replicas: &[(u32, Metadata, Oplogs)], _history: &History) -> Vec<Violation> {
    Vec::new()
}
