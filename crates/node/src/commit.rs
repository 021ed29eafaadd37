//! Group commit for every interface: key writes from HTTP and ZeroMQ wait
//! in one bounded queue; one thread takes everything waiting and hands it
//! to the store as one batch ([`Metadata::put_all`]: one log append, one
//! sync), then answers each writer.
//!
//! The queue is bounded ([`QUEUE`]): a write that finds it full is refused
//! at once as busy (503 / `busy`), never buffered.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use chorus_store::{BatchPut, CommitInfo, Metadata};

use crate::error::ApiError;

/// Writes waiting at most.
pub(crate) const QUEUE: usize = 4096;
/// Writes per batch at most.
const BATCH: usize = 1024;

/// What a writer is told.
pub(crate) type Reply = Box<dyn FnOnce(Result<CommitInfo, ApiError>) + Send>;

struct Pending {
    put: BatchPut,
    reply: Reply,
}

/// The queue of key writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: SyncSender<Pending>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

impl Committer {
    /// Starts the committing thread; it stops when every handle is gone.
    /// `committed` is called after each batch that wrote anything.
    pub(crate) fn start(
        meta: Metadata,
        committed: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Committer, String> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("chorus-commit".into())
            .spawn(move || run(&meta, &rx, committed.as_ref()))
            .map_err(|e| format!("cannot start the committing thread: {e}"))?;
        Ok(Committer { tx })
    }

    /// Queues a write; `reply` is called once with its outcome: on the
    /// committing thread after the sync, or at once, on the caller's
    /// thread, with `busy` when the queue is full.
    pub(crate) fn submit(&self, put: BatchPut, reply: Reply) {
        match self.tx.try_send(Pending { put, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(p)) => (p.reply)(Err(ApiError::busy(format!(
                "{QUEUE} writes are waiting to commit: retry"
            )))),
            Err(TrySendError::Disconnected(p)) => (p.reply)(Err(ApiError::internal(
                "the committing thread stopped: restart the node",
            ))),
        }
    }

    /// Queues a write and waits for its outcome.
    pub(crate) async fn write(&self, put: BatchPut) -> Result<CommitInfo, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            put,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        );
        rx.await
            .map_err(|_| ApiError::internal("the committing thread dropped a write"))?
    }
}

fn run(meta: &Metadata, rx: &Receiver<Pending>, committed: &(dyn Fn() + Send + Sync)) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (puts, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.put, p.reply)).unzip();
        let outcomes = meta.put_all(puts);
        if outcomes.iter().any(Result::is_ok) {
            committed();
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            reply(outcome.map_err(ApiError::from));
        }
    }
}
