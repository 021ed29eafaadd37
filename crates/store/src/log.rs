//! Reading the log: frames in order, and the classification of damage into a
//! torn tail (a write that never finished) or corruption (damage with intact
//! data after it).

use std::path::Path;

use crate::backend::LogFile;
use crate::error::{Error, Result};
use crate::format::{
    self, FRAME_HEADER_LEN, FRAME_PAYLOAD_MAX, FrameParse, HEADER_LEN, LogHeader, Payload,
};

const CHUNK: usize = 4 << 20;
/// Most checksum work spent looking for an intact frame after a damaged one;
/// past it the damage is called corruption (refusing is the safe answer).
const SEARCH_BUDGET_BYTES: u64 = 1 << 30;

/// Reads the header of a log file.
pub(crate) fn read_header(file: &dyn LogFile, path: &Path) -> Result<LogHeader> {
    let mut b = [0u8; HEADER_LEN as usize];
    let mut done = 0;
    while done < b.len() {
        let n = file
            .read_at(&mut b[done..], done as u64)
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    LogHeader::decode(&b[..done])
        .map_err(|d| Error::corruption(path, 0, format!("bad log header: {d}")))
}

/// Damage found while reading frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) offset: u64,
    pub(crate) detail: String,
}

/// One step of a [`FrameReader`].
pub(crate) enum Step<'b> {
    Frame { offset: u64, payload: &'b [u8] },
    End,
    Damaged(Damage),
}

/// Sequential, buffered reading of frames from `pos` up to `limit`.
pub(crate) struct FrameReader<'f> {
    file: &'f dyn LogFile,
    path: &'f Path,
    pos: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Scanning to the physical end: zeros from here to the limit are space
    /// written ahead for appends, the clean end of the log.
    zeros_end: bool,
}

impl<'f> FrameReader<'f> {
    pub(crate) fn new(file: &'f dyn LogFile, path: &'f Path, pos: u64, limit: u64) -> Self {
        FrameReader {
            file,
            path,
            pos,
            limit,
            buf: Vec::new(),
            buf_start: pos,
            zeros_end: false,
        }
    }

    /// Reads to the physical end of the file, where a run of zeros is the
    /// preallocated space after the last frame.
    pub(crate) fn reading_to_physical_end(mut self) -> Self {
        self.zeros_end = true;
        self
    }

    /// True when every byte from `pos` to the limit is zero.
    fn rest_is_zero(&self) -> Result<bool> {
        let mut chunk = vec![0u8; CHUNK.min((self.limit - self.pos) as usize)];
        let mut at = self.pos;
        while at < self.limit {
            let want = ((self.limit - at) as usize).min(chunk.len());
            let got = self
                .file
                .read_at(&mut chunk[..want], at)
                .map_err(|e| Error::io("read", self.path, e))?;
            if got == 0 {
                break;
            }
            if chunk[..got].iter().any(|b| *b != 0) {
                return Ok(false);
            }
            at += got as u64;
        }
        Ok(true)
    }

    /// Offset of the next frame (the end of the intact run so far).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Makes at least `n` bytes from `pos` available, unless the limit or the
    /// end of the file comes first. Returns how many are available.
    fn fill(&mut self, n: usize) -> Result<usize> {
        let have = (self.buf_start + self.buf.len() as u64).saturating_sub(self.pos) as usize;
        if have >= n {
            return Ok(have);
        }
        let skip = (self.pos - self.buf_start) as usize;
        self.buf.drain(..skip);
        self.buf_start = self.pos;
        let room = self.limit.saturating_sub(self.pos);
        let want = (n.max(CHUNK) as u64).min(room) as usize;
        let mut filled = self.buf.len();
        self.buf.resize(want.max(filled), 0);
        while filled < want {
            let off = self.buf_start + filled as u64;
            let got = self
                .file
                .read_at(&mut self.buf[filled..want], off)
                .map_err(|e| Error::io("read", self.path, e))?;
            if got == 0 {
                break;
            }
            filled += got;
        }
        self.buf.truncate(filled);
        Ok(filled)
    }

    /// The next frame, the end, or the damage that stops reading.
    pub(crate) fn step(&mut self) -> Result<Step<'_>> {
        if self.pos >= self.limit {
            return Ok(Step::End);
        }
        if self.zeros_end {
            let have = self.fill(FRAME_HEADER_LEN)?;
            let at = (self.pos - self.buf_start) as usize;
            if self.buf[at..at + have].iter().all(|b| *b == 0) && self.rest_is_zero()? {
                return Ok(Step::End);
            }
        }
        let mut need = FRAME_HEADER_LEN;
        loop {
            let have = self.fill(need)?;
            let at = (self.pos - self.buf_start) as usize;
            match format::parse_frame(&self.buf[at..at + have]) {
                FrameParse::Intact { total } => {
                    let offset = self.pos;
                    self.pos += total as u64;
                    return Ok(Step::Frame {
                        offset,
                        payload: &self.buf[at + FRAME_HEADER_LEN..at + total],
                    });
                }
                FrameParse::Short { need: more }
                    if more > have && (more as u64) <= self.limit - self.pos && more > need =>
                {
                    need = more;
                }
                FrameParse::Short { .. } => {
                    return Ok(Step::Damaged(Damage {
                        offset: self.pos,
                        detail: format!("a frame cut short ({have} bytes before the end)"),
                    }));
                }
                FrameParse::Bad(detail) => {
                    return Ok(Step::Damaged(Damage {
                        offset: self.pos,
                        detail,
                    }));
                }
            }
        }
    }
}

/// Reads every frame in `[from, limit)`, handing each decoded payload to
/// `apply`. Any damage in the range is corruption: the range is known good.
pub(crate) fn replay(
    file: &dyn LogFile,
    path: &Path,
    from: u64,
    limit: u64,
    mut apply: impl FnMut(Payload<'_>),
) -> Result<()> {
    let mut reader = FrameReader::new(file, path, from, limit);
    loop {
        match reader.step()? {
            Step::End => return Ok(()),
            Step::Frame { offset, payload } => {
                let p = format::decode_payload(payload)
                    .map_err(|d| Error::corruption(path, offset, d))?;
                apply(p);
            }
            Step::Damaged(d) => {
                return Err(Error::corruption(
                    path,
                    d.offset,
                    format!("{} inside the committed part of the log", d.detail),
                ));
            }
        }
    }
}

/// What a scan of a log file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// End of the run of intact frames from the start.
    pub(crate) end: u64,
    /// Intact frames in that run.
    pub(crate) frames: u64,
    /// Commits in those frames.
    pub(crate) commits: u64,
    /// Where the run stopped before the end of the file, and why.
    pub(crate) damage: Option<Damage>,
    /// True when the damage is a torn tail (nothing intact follows it).
    pub(crate) torn: bool,
    /// Length of the file.
    pub(crate) file_len: u64,
}

/// Scans a whole log file from its first frame to its physical end, checking
/// every frame's checksum and payload, and classifies any damage.
pub(crate) fn scan(file: &dyn LogFile, path: &Path) -> Result<Scan> {
    let file_len = file.len().map_err(|e| Error::io("stat", path, e))?;
    let mut reader = FrameReader::new(file, path, HEADER_LEN, file_len).reading_to_physical_end();
    let mut frames = 0;
    let mut commits = 0;
    // An intact frame (its checksum holds) whose payload this build cannot
    // read was written, not torn: never cut, whatever follows it.
    let mut unreadable = false;
    let damage = loop {
        match reader.step()? {
            Step::End => break None,
            Step::Frame { offset, payload } => match format::decode_payload(payload) {
                Ok(Payload::Commits(c)) => {
                    frames += 1;
                    commits += c.len() as u64;
                }
                Ok(Payload::Checkpoint(_)) => frames += 1,
                Err(detail) => {
                    unreadable = true;
                    break Some(Damage { offset, detail });
                }
            },
            Step::Damaged(d) => break Some(d),
        }
    };
    let end = damage.as_ref().map_or(reader.pos(), |d| d.offset);
    let torn = match &damage {
        None => false,
        Some(_) if unreadable => false,
        Some(d) => !intact_frame_after(file, path, d.offset, file_len)?,
    };
    Ok(Scan {
        end,
        frames,
        commits,
        damage,
        torn,
        file_len,
    })
}

/// True when an intact frame starts anywhere in `(from, file_len)`.
///
/// A torn write leaves at most one frame's worth of bytes, so more than that
/// after the damage is corruption without looking further.
fn intact_frame_after(file: &dyn LogFile, path: &Path, from: u64, file_len: u64) -> Result<bool> {
    let rest = file_len.saturating_sub(from);
    if rest > (FRAME_HEADER_LEN + FRAME_PAYLOAD_MAX) as u64 {
        return Ok(true);
    }
    let mut buf = vec![0u8; rest as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(&mut buf[done..], from + done as u64)
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(find_intact(&buf, 1).is_some())
}

/// The first offset at or after `start` in `buf` where an intact frame
/// begins: its checksum holds, whatever its payload version (a frame from a
/// newer build is data, not a torn write). Candidates are filtered by a
/// plausible length and a non-zero first payload byte before their checksum
/// is computed, and the total checksum work is bounded; running out of
/// budget counts as "found" (the caller then refuses rather than truncates).
pub(crate) fn find_intact(buf: &[u8], start: usize) -> Option<usize> {
    let mut budget = SEARCH_BUDGET_BYTES;
    let mut i = start;
    while i + FRAME_HEADER_LEN < buf.len() {
        let mut len_le = [0u8; 4];
        len_le.copy_from_slice(&buf[i..i + 4]);
        let len = u32::from_le_bytes(len_le) as usize;
        let fits = len > 0 && i + FRAME_HEADER_LEN + len <= buf.len();
        if fits && buf[i + FRAME_HEADER_LEN] != 0 {
            budget = budget.saturating_sub(len as u64);
            if budget == 0 {
                return Some(i);
            }
            if let FrameParse::Intact { .. } = format::parse_frame(&buf[i..]) {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}
