//! The log's byte layout. `docs/design.md` draws it; this module is the one
//! place that reads or writes it.
//!
//! ```text
//! file   = header frame*
//! header = magic "CHORUSLG" | format u32 | flags u32 | generation u64
//!        | base_seq u64 | node_id [16] | base_ts u64 | 0u32 | crc32c(bytes 0..60) u32
//!          (64 bytes, little-endian)
//! frame  = len u32 | crc32c(len_le ++ payload) u32 | payload[len]
//! payload = version u8 (=1) | postcard(Payload)
//! ```

use serde::{Deserialize, Serialize, Serializer};

use chorus_core::NodeId;

/// First bytes of every log file.
pub(crate) const LOG_MAGIC: [u8; 8] = *b"CHORUSLG";
/// Version of the file layout (header and frame framing).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Version of the payload encoding, the first byte of every payload.
pub(crate) const PAYLOAD_VERSION: u8 = 1;
/// Length of the file header.
pub(crate) const HEADER_LEN: u64 = 64;
/// Length of a frame's `len` and `crc` fields.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// No frame payload is ever longer than this, whatever the configured limits.
pub(crate) const FRAME_PAYLOAD_MAX: usize = 256 << 20;

/// The fixed header at the start of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogHeader {
    pub(crate) generation: u64,
    /// Sequence number of the last commit folded into this generation before
    /// its first frame; commits in it continue from `base_seq + 1`.
    pub(crate) base_seq: u64,
    pub(crate) node_id: NodeId,
    pub(crate) base_ts: u64,
}

impl LogHeader {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&LOG_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_seq.to_le_bytes());
        b[32..48].copy_from_slice(self.node_id.as_bytes());
        b[48..56].copy_from_slice(&self.base_ts.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; the error says what is wrong with it.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_LEN as usize {
            return Err(format!(
                "the file is {} bytes long, shorter than its {HEADER_LEN}-byte header",
                b.len()
            ));
        }
        if b[0..8] != LOG_MAGIC {
            return Err("the file does not start with the Chorus log magic".into());
        }
        let crc = u32_at(b, 60);
        if crc != crc32c::crc32c(&b[0..60]) {
            return Err("the header checksum does not match".into());
        }
        if u32_at(b, 12) != 0 || u32_at(b, 56) != 0 {
            return Err("reserved header fields are not zero (written by a newer Chorus?)".into());
        }
        let format = u32_at(b, 8);
        if format != FORMAT_VERSION {
            return Err(format!(
                "log format version {format} is not supported by this build (it reads version {FORMAT_VERSION}): use a newer Chorus"
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[32..48]);
        Ok(LogHeader {
            generation: u64_at(b, 16),
            base_seq: u64_at(b, 24),
            node_id: NodeId::from_bytes(id),
            base_ts: u64_at(b, 48),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Where a commit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Written by a process on this node's directory.
    Local,
    /// Merged from the peer with this node id.
    Peer([u8; 16]),
}

/// Bytes that serialize as one length-prefixed run, not a sequence of `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Raw<'a>(#[serde(borrow)] pub(crate) &'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// One key written by a commit; `value: None` removes the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WriteRec<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) subprefix: &'a str,
    #[serde(borrow)]
    pub(crate) key: Raw<'a>,
    #[serde(borrow)]
    pub(crate) value: Option<Raw<'a>>,
}

/// One commit: everything it wrote, applied all at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommitRec<'a> {
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    pub(crate) origin: Origin,
    #[serde(borrow)]
    pub(crate) writes: Vec<WriteRec<'a>>,
}

/// One live key in a checkpoint frame, with the sequence number of the
/// commit that last wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointEntry<'a> {
    pub(crate) seq: u64,
    #[serde(borrow)]
    pub(crate) key: Raw<'a>,
    #[serde(borrow)]
    pub(crate) value: Raw<'a>,
}

/// The live keys of one full prefix in a checkpoint frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PrefixGroup<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) subprefix: &'a str,
    /// The prefix's running hash sum (see the index) in the first group of
    /// each prefix, 0 in the groups that continue it in later frames: replay
    /// adds it instead of hashing every entry again.
    pub(crate) sum: u128,
    #[serde(borrow)]
    pub(crate) entries: Vec<CheckpointEntry<'a>>,
}

/// What a frame carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Payload<'a> {
    /// One or more commits (more than one when a group commit shares a frame).
    #[serde(borrow)]
    Commits(Vec<CommitRec<'a>>),
    /// Part of the live state, written by compaction and repair at the start
    /// of a new generation.
    #[serde(borrow)]
    Checkpoint(Vec<PrefixGroup<'a>>),
}

/// Encodes a payload as a complete frame, appended to `out`.
pub(crate) fn encode_frame(payload: &Payload<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.push(PAYLOAD_VERSION);
    let mut out2 = postcard::to_extend(payload, std::mem::take(out)).map_err(|e| e.to_string())?;
    let len = out2.len() - start - FRAME_HEADER_LEN;
    if len > FRAME_PAYLOAD_MAX {
        out2.truncate(start);
        *out = out2;
        return Err(format!(
            "a frame of {len} bytes exceeds the format's limit of {FRAME_PAYLOAD_MAX} bytes"
        ));
    }
    let len_le = (len as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len_le);
    crc = crc32c::crc32c_append(crc, &out2[start + FRAME_HEADER_LEN..]);
    out2[start..start + 4].copy_from_slice(&len_le);
    out2[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    *out = out2;
    Ok(())
}

/// The outcome of looking for a frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameParse {
    /// A whole, intact frame whose payload is `buf[FRAME_HEADER_LEN..total]`.
    Intact { total: usize },
    /// The buffer ends before the frame does; `need` bytes make it whole.
    Short { need: usize },
    /// The bytes are not an intact frame.
    Bad(String),
}

/// Checks the frame at the start of `buf` (its length and checksum only).
pub(crate) fn parse_frame(buf: &[u8]) -> FrameParse {
    if buf.len() < FRAME_HEADER_LEN {
        return FrameParse::Short {
            need: FRAME_HEADER_LEN,
        };
    }
    let len = u32_at(buf, 0) as usize;
    if len == 0 {
        return FrameParse::Bad("a frame of length zero".into());
    }
    if len > FRAME_PAYLOAD_MAX {
        return FrameParse::Bad(format!(
            "a frame length of {len} bytes, beyond the format's limit"
        ));
    }
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        return FrameParse::Short { need: total };
    }
    let mut crc = crc32c::crc32c(&buf[0..4]);
    crc = crc32c::crc32c_append(crc, &buf[FRAME_HEADER_LEN..total]);
    if crc != u32_at(buf, 4) {
        return FrameParse::Bad("a frame checksum mismatch".into());
    }
    FrameParse::Intact { total }
}

/// Decodes an intact frame's payload.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<Payload<'_>, String> {
    match payload.split_first() {
        Some((&PAYLOAD_VERSION, rest)) => {
            let (p, left) = postcard::take_from_bytes(rest)
                .map_err(|e| format!("an undecodable payload ({e})"))?;
            if !left.is_empty() {
                return Err(format!("{} stray bytes after the payload", left.len()));
            }
            Ok(p)
        }
        Some((v, _)) => Err(format!(
            "payload version {v}, which this build cannot read (it reads version {PAYLOAD_VERSION}): use a newer Chorus"
        )),
        None => Err("an empty payload".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Payload<'static> {
        Payload::Commits(vec![CommitRec {
            seq: 7,
            ts: 1_700_000_000_000,
            origin: Origin::Local,
            writes: vec![
                WriteRec {
                    prefix: "config",
                    subprefix: "web",
                    key: Raw(b"port"),
                    value: Some(Raw(b"8080")),
                },
                WriteRec {
                    prefix: "config",
                    subprefix: "web",
                    key: Raw(b"old"),
                    value: None,
                },
            ],
        }])
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = LogHeader {
            generation: 3,
            base_seq: 99,
            node_id: NodeId::from_bytes([7; 16]),
            base_ts: 5,
        };
        let b = h.encode();
        assert_eq!(LogHeader::decode(&b), Ok(h));
        for bit in 0..b.len() * 8 {
            let mut bad = b;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(LogHeader::decode(&bad).is_err(), "bit {bit} went unnoticed");
        }
    }

    #[test]
    fn frame_round_trips() {
        let mut out = Vec::new();
        encode_frame(&sample(), &mut out).expect("encodes");
        let FrameParse::Intact { total } = parse_frame(&out) else {
            panic!("frame not intact")
        };
        assert_eq!(total, out.len());
        let Payload::Commits(c) = decode_payload(&out[FRAME_HEADER_LEN..total]).expect("decodes")
        else {
            panic!("wrong kind")
        };
        assert_eq!(c[0].seq, 7);
        assert_eq!(c[0].writes[0].value, Some(Raw(&b"8080"[..])));
        assert_eq!(c[0].writes[1].value, None);
    }

    #[test]
    fn every_truncation_is_short_and_every_bit_flip_is_caught() {
        let mut out = Vec::new();
        encode_frame(&sample(), &mut out).expect("encodes");
        for cut in 0..out.len() {
            assert!(
                matches!(parse_frame(&out[..cut]), FrameParse::Short { .. }),
                "cut at {cut}"
            );
        }
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(parse_frame(&bad), FrameParse::Intact { .. }),
                "bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn unknown_payload_version_is_refused() {
        assert!(
            decode_payload(&[9, 0])
                .expect_err("version 9 is unknown")
                .contains("payload version 9")
        );
    }
}
