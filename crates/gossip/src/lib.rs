//! Chorus's gossip protocols as state machines with no IO.
//!
//! Nothing in this crate opens a socket, reads a clock or draws an unseeded
//! random number. Every protocol is a plain struct: the caller hands it a
//! message from a peer, a timer that fired, or a transport event, together
//! with the current time, and then drains its outputs (messages to send,
//! timers to set, changes for the layer above). Given the same seed and the
//! same inputs, every output is the same, which is what lets the simulator
//! run 10,000 of them and replay a run exactly.

#![forbid(unsafe_code)]

pub mod hyparview;
pub mod merkle;
pub mod plumtree;
mod rng;

pub use rng::Rng;
