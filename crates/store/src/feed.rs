//! The change feed: every commit made on a data directory, by any process,
//! read back from the log in order, with where it came from.
//!
//! A [`Cursor`] names a point in the directory's history: the commits up to
//! its sequence number have been read, and the next one starts at its
//! offset in its log generation. Compaction starts a new generation whose
//! checkpoint replaces the commits before it: a reader whose cursor is
//! behind the checkpoint gets a [`Feed::Gap`] and must resynchronise from a
//! snapshot; a reader that was up to date continues in the new generation
//! as if nothing happened.

use chorus_core::FullPrefix;
use std::fmt;

use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN, Origin, Payload};
use crate::index::Bytes;
use crate::log::{self, FrameReader, Step};
use crate::store::Store;

/// A point in a directory's history. Printable and parseable
/// (`generation-offset-seq`), so a client can hand it back later, as an SSE
/// `Last-Event-ID` for instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    generation: u64,
    offset: u64,
    seq: u64,
}

impl Cursor {
    /// The sequence number of the last commit read.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The same read position with the commits up to `seq` counted as
    /// read: a position for each commit of a batch read from `self`
    /// (reading resumes at `self`'s offset and skips them).
    pub fn with_seq(self, seq: u64) -> Cursor {
        Cursor { seq, ..self }
    }

    /// Parses the printed form.
    pub fn parse(text: &str) -> Result<Cursor> {
        let bad = || {
            Error::InvalidInput(format!(
                "{text:?} is not a change-feed position: expected GENERATION-OFFSET-SEQ, as the feed printed it"
            ))
        };
        let mut parts = text.split('-').map(|p| p.parse::<u64>().map_err(|_| bad()));
        let (Some(g), Some(o), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Cursor {
            generation: g?,
            offset: o?,
            seq: s?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.generation, self.offset, self.seq)
    }
}

/// One key of one commit: the id every change event carries (SSE `id:`,
/// the `"id"` of a JSON event), printed `GENERATION-OFFSET-SEQ.INDEX` where
/// the cursor part is the commit's own position ([`Change::position`]) and
/// INDEX is the key's place among the keys the commit wrote. An event has
/// the same id live and replayed, whatever the reader's scope, so a client
/// that resumes from the last id it saw is sent each later event once: the
/// rest of a commit it saw part of, then the commits after it. (Compaction
/// renumbers: ids printed before it still resume, replays print new ones.)
///
/// A plain cursor (`G-O-S`) is accepted where an id is expected and means
/// the whole of commit S was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    commit: Cursor,
    /// Keys of `commit` seen: those with an index up to this one; `None`
    /// when every key was.
    index: Option<u32>,
}

impl EventId {
    /// The id of key `index` of the commit at `position`.
    pub fn new(position: Cursor, index: usize) -> EventId {
        EventId {
            commit: position,
            index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
        }
    }

    /// Everything up to the end of the commit `cursor` names.
    pub fn after(cursor: Cursor) -> EventId {
        EventId {
            commit: cursor,
            index: None,
        }
    }

    /// Where to read the feed from to resume after this event: the
    /// commit's frame, with the commits before it counted as read (the
    /// commit itself may be read again: skip what [`EventId::covers`]).
    pub fn resume(&self) -> Cursor {
        match self.index {
            Some(_) => Cursor {
                seq: self.commit.seq.saturating_sub(1),
                ..self.commit
            },
            None => self.commit,
        }
    }

    /// Whether key `index` of commit `seq` was seen by whoever holds this id.
    pub fn covers(&self, seq: u64, index: usize) -> bool {
        seq < self.commit.seq
            || (seq == self.commit.seq
                && self
                    .index
                    .is_none_or(|i| u32::try_from(index).is_ok_and(|x| x <= i)))
    }

    /// Parses the printed form, or a plain cursor.
    pub fn parse(text: &str) -> Result<EventId> {
        let (cursor, index) = match text.split_once('.') {
            Some((c, i)) => (c, Some(i)),
            None => (text, None),
        };
        let commit = Cursor::parse(cursor).map_err(|_| {
            Error::InvalidInput(format!(
                "{text:?} is not an event id: expected GENERATION-OFFSET-SEQ.INDEX (or a cursor, GENERATION-OFFSET-SEQ), as an event or the feed printed it"
            ))
        })?;
        let index = match index {
            None => None,
            Some(i) => Some(i.parse::<u32>().map_err(|_| {
                Error::InvalidInput(format!(
                    "{text:?} is not an event id: the part after '.' must be a key index (a whole number)"
                ))
            })?),
        };
        Ok(EventId { commit, index })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}.{i}", self.commit),
            None => write!(f, "{}", self.commit),
        }
    }
}

/// One key a commit wrote; `value: None` removed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedKey {
    /// Its full prefix.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Vec<u8>,
    /// What it holds now, or `None` if the commit removed it.
    pub value: Option<Bytes>,
}

/// One commit, as the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number.
    pub seq: u64,
    /// Its own place in the feed: its log generation, the offset of the
    /// frame that holds it, and its sequence number. The same however the
    /// feed was read, so ids made from it ([`EventId::new`]) are stable.
    pub position: Cursor,
    /// Its hybrid timestamp.
    pub ts: u64,
    /// Made here, or merged from a peer.
    pub origin: Origin,
    /// Everything it wrote.
    pub keys: Vec<ChangedKey>,
}

/// What [`Store::changes_since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The commits after the cursor, in order (possibly none), and where
    /// to continue.
    Changes {
        /// The commits.
        changes: Vec<Change>,
        /// The cursor after them.
        next: Cursor,
    },
    /// Compaction replaced commits the cursor had not read: they are in the
    /// state, no longer in the log. Resynchronise from a snapshot taken
    /// now, then continue from `resume`.
    Gap {
        /// The first commit the log still has.
        first_seq: u64,
        /// The cursor at the end of the log now.
        resume: Cursor,
    },
}

impl Store {
    /// The cursor at the end of the history as this process sees it now.
    pub fn cursor(&self) -> Result<Cursor> {
        let (state, _, _) = self.feed_view()?;
        Ok(Cursor {
            generation: state.generation,
            offset: state.end,
            seq: state.last_seq,
        })
    }

    /// The commits after `cursor`, whole frames at a time until at least
    /// `max` commits (a group commit shares one frame), made by any process
    /// on the directory. An empty list means the cursor is at the end.
    pub fn changes_since(&self, cursor: &Cursor, max: usize) -> Result<Feed> {
        let (state, file, path) = self.feed_view()?;
        if cursor.generation > state.generation
            || (cursor.generation == state.generation
                && (cursor.offset < HEADER_LEN || cursor.offset > state.end))
        {
            return Err(Error::InvalidInput(format!(
                "change-feed position {cursor} is not in this directory's history (it is at {}-{}-{}): was it printed by another node?",
                state.generation, state.end, state.last_seq
            )));
        }
        let start = if cursor.generation == state.generation {
            cursor.offset
        } else {
            let header = log::read_header(file.as_ref(), &path)?;
            if header.base_seq > cursor.seq {
                return Ok(Feed::Gap {
                    first_seq: header.base_seq + 1,
                    resume: Cursor {
                        generation: state.generation,
                        offset: state.end,
                        seq: state.last_seq,
                    },
                });
            }
            HEADER_LEN
        };
        let mut reader = FrameReader::new(file.as_ref(), &path, start, state.end);
        let mut changes = Vec::new();
        let mut next = Cursor {
            generation: state.generation,
            offset: start,
            seq: cursor.seq,
        };
        while changes.len() < max.max(1) {
            match reader.step()? {
                Step::End => break,
                Step::Frame { offset, payload } => {
                    let payload = format::decode_payload(payload)
                        .map_err(|d| Error::corruption(&path, offset, d))?;
                    let frame = Cursor {
                        generation: state.generation,
                        offset,
                        seq: 0,
                    };
                    collect(&payload, frame, cursor.seq, &mut changes, &mut next.seq)?;
                }
                Step::Damaged(d) if d.offset == cursor.offset && changes.is_empty() => {
                    // The log is checked where it was written; a frame that
                    // does not start where the position says means the
                    // position is wrong, not the log.
                    return Err(Error::InvalidInput(format!(
                        "change-feed position {cursor} is not at a commit boundary ({}): use a position the feed printed",
                        d.detail
                    )));
                }
                Step::Damaged(d) => {
                    return Err(Error::corruption(&path, d.offset, d.detail));
                }
            }
            next.offset = reader.pos();
        }
        Ok(Feed::Changes { changes, next })
    }
}

/// Adds the commits of a frame that come after `after` to `changes`.
fn collect(
    payload: &Payload<'_>,
    frame: Cursor,
    after: u64,
    changes: &mut Vec<Change>,
    last: &mut u64,
) -> Result<()> {
    let Payload::Commits(commits) = payload else {
        // A checkpoint: the state before the generation's first commit.
        return Ok(());
    };
    for commit in commits.iter().filter(|c| c.seq > after) {
        let mut keys = Vec::with_capacity(commit.writes.len());
        for w in &commit.writes {
            let full_prefix = FullPrefix::new(w.prefix, w.subprefix).map_err(|e| {
                Error::InvalidInput(format!("a logged full prefix is invalid: {e}"))
            })?;
            keys.push(ChangedKey {
                full_prefix,
                key: w.key.0.to_vec(),
                value: w.value.map(|v| Bytes::from(v.0)),
            });
        }
        *last = commit.seq;
        changes.push(Change {
            seq: commit.seq,
            position: frame.with_seq(commit.seq),
            ts: commit.ts,
            origin: commit.origin,
            keys,
        });
    }
    Ok(())
}
