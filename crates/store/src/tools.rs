//! `check` verifies a data directory without changing it; `repair` salvages
//! every intact commit of a damaged log into a new generation.

use std::path::{Path, PathBuf};

use crate::backend::{self, LogFile};
use crate::dirops::{Dir, check_local};
use crate::error::{Error, Result};
use crate::format::{self, FRAME_HEADER_LEN, FrameParse, HEADER_LEN, LogHeader};
use crate::index::{Applier, Index, State};
use crate::layout::{Layout, WriterLock};
use crate::log;
use crate::shm::Shm;
use crate::store::Options;
use crate::sys;
use chorus_core::NodeId;

/// Something `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Damage with intact data after it, or inside the committed part of
    /// the log: the store refuses to open until repaired.
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// An unfinished write at the end of the log; the next writer cuts it.
    TornTail {
        /// Where it starts.
        offset: u64,
        /// Bytes it spans.
        bytes: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// Bytes past the committed end that no writer acknowledged (a writer
    /// is writing now, or died while writing); the next writer cuts them.
    Unpublished {
        /// Where they start.
        offset: u64,
        /// How many.
        bytes: u64,
    },
    /// A file left by an interrupted compaction; the next writer removes it.
    StaleFile {
        /// Its name.
        name: String,
    },
}

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The directory checked.
    pub dir: PathBuf,
    /// The node id, if readable.
    pub node_id: Option<NodeId>,
    /// The current generation.
    pub generation: u64,
    /// Length of the current log file.
    pub log_bytes: u64,
    /// The committed end published in the shared map, when it is valid.
    pub committed_bytes: Option<u64>,
    /// Intact frames read.
    pub frames: u64,
    /// Commits in them.
    pub commits: u64,
    /// Live keys after replaying them.
    pub keys: usize,
    /// Everything noteworthy, worst first.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// True when nothing needs `repair` (torn tails and stale files fix
    /// themselves at the next write).
    pub fn is_healthy(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Corruption { .. }))
    }
}

/// Verifies the store in `dir` without changing it: every frame's checksum
/// and payload, the header, the pointer and the node id.
pub fn check(dir: &Path, options: &Options) -> Result<CheckReport> {
    let backend = options.backend.as_ref();
    let layout = Layout::new(dir);
    let generation = layout.read_current(backend)?;
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        node_id: None,
        generation,
        log_bytes: 0,
        committed_bytes: None,
        frames: 0,
        commits: 0,
        keys: 0,
        findings: Vec::new(),
    };
    match layout.read_node_id(backend) {
        Ok(id) => report.node_id = Some(id),
        Err(Error::Corruption {
            file,
            offset,
            detail,
        }) => report.findings.push(Finding::Corruption {
            file,
            offset,
            detail,
        }),
        Err(e) => return Err(e),
    }
    let path = layout.log(generation);
    let file = backend
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    report.log_bytes = file.len().map_err(|e| Error::io("stat", &path, e))?;
    if let Err(Error::Corruption {
        file,
        offset,
        detail,
    }) = log::read_header(file.as_ref(), &path)
    {
        report.findings.push(Finding::Corruption {
            file,
            offset,
            detail,
        });
        return Ok(report);
    }
    let shm = Shm::open(&layout.shm())?;
    let (shm_generation, shm_end) = shm.published();
    if shm.is_valid(sys::boot_id().unwrap_or([0; 16])) && shm_generation == generation {
        report.committed_bytes = Some(shm_end);
    }
    let scan = log::scan(file.as_ref(), &path)?;
    report.frames = scan.frames;
    report.commits = scan.commits;
    report.keys = count_keys(file.as_ref(), &path, scan.end)?;
    match (&scan.damage, report.committed_bytes) {
        (Some(d), _) if !scan.torn => report.findings.push(Finding::Corruption {
            file: path.clone(),
            offset: d.offset,
            detail: format!("{} with intact frames after it", d.detail),
        }),
        (Some(d), Some(committed)) if d.offset < committed => {
            report.findings.push(Finding::Corruption {
                file: path.clone(),
                offset: d.offset,
                detail: format!(
                    "{} inside the committed part of the log (committed up to {committed})",
                    d.detail
                ),
            })
        }
        (Some(d), Some(_)) => report.findings.push(Finding::Unpublished {
            offset: d.offset,
            bytes: scan.file_len - d.offset,
        }),
        (Some(d), None) => report.findings.push(Finding::TornTail {
            offset: d.offset,
            bytes: scan.file_len - d.offset,
            detail: d.detail.clone(),
        }),
        (None, Some(committed)) if scan.end > committed => {
            report.findings.push(Finding::Unpublished {
                offset: committed,
                bytes: scan.end - committed,
            })
        }
        (None, _) => {}
    }
    for name in backend
        .list_dir(dir)
        .map_err(|e| Error::io("list", dir, e))?
    {
        let stale_log = Layout::parse_log_name(&name).is_some_and(|g| g != generation);
        if stale_log || name.ends_with(".tmp") {
            report.findings.push(Finding::StaleFile { name });
        }
    }
    Ok(report)
}

fn count_keys(file: &dyn LogFile, path: &Path, end: u64) -> Result<usize> {
    let mut index = Index::default();
    let mut applier = Applier::new();
    log::replay(file, path, HEADER_LEN, end, |p| {
        applier.apply(&mut index, &p);
    })?;
    Ok(index.keys())
}

/// What `repair` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// False when the log had no damage and nothing was changed.
    pub repaired: bool,
    /// Generation before.
    pub old_generation: u64,
    /// Generation after (the same when nothing was repaired).
    pub new_generation: u64,
    /// Intact frames salvaged.
    pub frames_salvaged: u64,
    /// Commits salvaged.
    pub commits_salvaged: u64,
    /// Live keys in the new generation.
    pub keys: usize,
    /// Byte ranges `[start, end)` of the old log that could not be read.
    pub lost_ranges: Vec<(u64, u64)>,
    /// Where the damaged log was kept for inspection.
    pub kept_as: Option<PathBuf>,
}

/// Salvages every intact commit of the current log into a new generation,
/// keeping the damaged file beside it as `gen-N.log.damaged`.
pub fn repair(dir: &Path, options: &Options) -> Result<RepairReport> {
    check_local(dir, options.allow_network_fs)?;
    crate::modes::tighten(dir);
    let backend = options.backend.clone();
    let layout = Layout::new(dir);
    let generation = layout.read_current(backend.as_ref())?;
    let node_id = layout.read_node_id(backend.as_ref())?;
    let shm = Shm::open(&layout.shm())?;
    let writer = WriterLock::open(&layout.lock())?;
    let _guard = writer.acquire(options.lock_timeout, &shm)?;
    let path = layout.log(generation);
    let bytes =
        backend::read_whole(backend.as_ref(), &path).map_err(|e| Error::io("read", &path, e))?;
    let header = LogHeader::decode(&bytes).ok();
    let mut state = State {
        generation,
        end: HEADER_LEN,
        last_seq: header.map_or(0, |h| h.base_seq),
        last_ts: header.map_or(0, |h| h.base_ts),
        index: Index::default(),
        channels: crate::channels::Mark::default(),
    };
    let mut report = RepairReport {
        repaired: false,
        old_generation: generation,
        new_generation: generation,
        frames_salvaged: 0,
        commits_salvaged: 0,
        keys: 0,
        lost_ranges: Vec::new(),
        kept_as: None,
    };
    if header.is_none() {
        report
            .lost_ranges
            .push((0, HEADER_LEN.min(bytes.len() as u64)));
    }
    salvage(&bytes, &mut state, &mut report)
        .map_err(|(offset, detail)| Error::corruption(&path, offset, detail))?;
    // Checkpoint frames carry their prefixes' hash sums; with frames lost,
    // those no longer match the keys that remain: hash them all again.
    state.index.rehash();
    report.keys = state.index.keys();
    if report.lost_ranges.is_empty() {
        return Ok(report);
    }
    let dir_ops = Dir {
        layout: layout.clone(),
        backend: backend.clone(),
        shm,
        boot: sys::boot_id().unwrap_or([0; 16]),
        node_id,
    };
    let new = generation + 1;
    let end = dir_ops.write_generation(new, &state.index, state.last_seq, state.last_ts)?;
    // Switch first: a crash after this leaves a complete new generation in
    // charge (at worst the damaged file is then removed as stale, not kept).
    layout.write_current(backend.as_ref(), new)?;
    let kept = path.with_extension("log.damaged");
    backend
        .rename(&path, &kept)
        .map_err(|e| Error::io("rename", &path, e))?;
    dir_ops.shm.reset(dir_ops.boot, new, end);
    report.repaired = true;
    report.new_generation = new;
    report.kept_as = Some(kept);
    Ok(report)
}

/// Applies every intact frame of `bytes` in order, skipping damaged
/// stretches to the next intact frame. Refuses (with the offset) when an
/// intact frame holds a payload version this build cannot read: that is a
/// newer build's data, which only a newer build may repair.
fn salvage(
    bytes: &[u8],
    state: &mut State,
    report: &mut RepairReport,
) -> std::result::Result<(), (u64, String)> {
    let mut applier = Applier::new();
    let mut pos = HEADER_LEN as usize;
    while pos < bytes.len() {
        if bytes[pos..].iter().all(|b| *b == 0) {
            break; // space written ahead for appends
        }
        if let FrameParse::Intact { .. } = format::parse_frame(&bytes[pos..])
            && bytes[pos + FRAME_HEADER_LEN] != format::PAYLOAD_VERSION
        {
            return Err((
                pos as u64,
                format!(
                    "an intact frame of payload version {}, which this build cannot read: repair it with a newer Chorus",
                    bytes[pos + FRAME_HEADER_LEN]
                ),
            ));
        }
        if let FrameParse::Intact { total } = format::parse_frame(&bytes[pos..])
            && let Ok(payload) = format::decode_payload(&bytes[pos + FRAME_HEADER_LEN..pos + total])
        {
            let (seq, ts) = applier.apply(&mut state.index, &payload);
            state.last_seq = state.last_seq.max(seq);
            state.last_ts = state.last_ts.max(ts);
            report.frames_salvaged += 1;
            if let format::Payload::Commits(c) = &payload {
                report.commits_salvaged += c.len() as u64;
            }
            pos += total;
            continue;
        }
        let next = log::find_intact(bytes, pos + 1).unwrap_or(bytes.len());
        report.lost_ranges.push((pos as u64, next as u64));
        pos = next;
    }
    Ok(())
}
