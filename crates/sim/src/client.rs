//! Simulated clients (stand-in until the full workload lands).

use chorus_core::FullPrefix;
use chorus_gossip::Rng;
use chorus_store::oplog::Oplogs;
use chorus_store::{Metadata, PutOptions, PutValue};

/// What clients did.
#[derive(Debug, Default)]
pub struct History {
    acked: u64,
    failed: u64,
}

impl History {
    /// Operations acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acked
    }
    /// Operations that failed.
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

/// The clients.
pub struct Clients {
    rng: Rng,
    keys: usize,
    seq: u64,
}

impl Clients {
    /// Clients writing `keys` keys.
    pub fn new(seed: u64, keys: usize) -> Clients {
        Clients {
            rng: Rng::new(seed),
            keys: keys.max(1),
            seq: 0,
        }
    }

    /// One operation on `node`.
    pub fn step(
        &mut self,
        node: u32,
        meta: &Metadata,
        _oplogs: &Oplogs,
        history: &mut History,
        _now_ms: u64,
    ) -> String {
        self.seq += 1;
        let Ok(fp) = FullPrefix::new("sim", "kv") else {
            return String::new();
        };
        let key = format!("k{}", self.rng.below(self.keys));
        let value = format!("n{node}#{}", self.seq);
        let r = meta.put(
            &fp,
            key.as_bytes(),
            PutValue::Bytes(value.clone().into_bytes()),
            &PutOptions::default(),
        );
        match r {
            Ok(_) => history.acked += 1,
            Err(_) => history.failed += 1,
        }
        format!("put sim/kv/{key} = {value}")
    }
}
