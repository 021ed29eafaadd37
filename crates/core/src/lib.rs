//! Chorus data types with no IO at all.
//!
//! This crate never touches a file, a socket, a clock or a random number
//! generator: everything here is a pure function of its inputs, so it can be
//! used by the store, the gossip cores and the simulator alike.

#![forbid(unsafe_code)]

pub mod channels;
pub mod docs;
pub mod dvvset;
mod hash;
mod kind;
mod names;
mod node;
pub mod object;
pub mod oplog;

pub use hash::{key_hash, object_hash};
pub use kind::Kind;
pub use names::{FullPrefix, MAX_NAME_BYTES, NameError, validate_key};
pub use node::NodeId;
