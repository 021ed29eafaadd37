//! Operations on the files of a data directory: creating it, loading a
//! generation, recovering after a crash, writing a new generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use chorus_core::object::Hlc;

use crate::backend::{self, Backend, LogFile};
use crate::error::{Error, Result};
use crate::format::{self, CheckpointEntry, HEADER_LEN, LogHeader, Payload, PrefixGroup, Raw};
use crate::index::{Applier, Index, State};
use crate::layout::Layout;
use crate::log;
use crate::shm::Shm;
use crate::sys;
use chorus_core::NodeId;

/// Largest checkpoint frame written by compaction and repair.
const CHECKPOINT_FRAME_BYTES: usize = 4 << 20;

/// The log file of one generation, open.
#[derive(Clone)]
pub(crate) struct Tail {
    pub(crate) generation: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn LogFile>,
    /// Length of the file as last seen: committed frames, then zeros written
    /// ahead so that appends overwrite blocks the file already has. Other
    /// writers may have grown it since; only recovery ever shrinks it.
    pub(crate) allocated: u64,
}

/// The fixed parts of an open directory.
pub(crate) struct Dir {
    pub(crate) layout: Layout,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) shm: Shm,
    pub(crate) boot: [u8; 16],
    pub(crate) node_id: NodeId,
}

/// Refuses network filesystems unless allowed.
pub(crate) fn check_local(dir: &Path, allow_network_fs: bool) -> Result<()> {
    if allow_network_fs {
        return Ok(());
    }
    match sys::network_fs(dir) {
        Some(fstype) => Err(Error::NetworkFilesystem {
            path: dir.to_path_buf(),
            fstype,
        }),
        None => Ok(()),
    }
}

/// Creates the node id and the first generation if they do not exist yet.
/// Runs under the writer lock, so concurrent first opens agree on one id.
/// `now_ms` (the store's clock) starts the log's timestamps.
pub(crate) fn create_locked(
    layout: &Layout,
    backend: &dyn Backend,
    now_ms: u64,
) -> Result<(NodeId, bool)> {
    let node_id = match layout.read_node_id(backend) {
        Ok(id) => id,
        Err(Error::NotInitialized { .. }) => {
            let id = NodeId::from_bytes(
                sys::random_bytes().map_err(|e| Error::io("read", "/dev/urandom", e))?,
            );
            let path = layout.node_id();
            backend::write_atomic(backend, &path, format!("{id}\n").as_bytes())
                .map_err(|e| Error::io("write", &path, e))?;
            id
        }
        Err(e) => return Err(e),
    };
    match layout.read_current(backend) {
        Ok(_) => return Ok((node_id, false)),
        Err(Error::NotInitialized { .. }) => {}
        Err(e) => return Err(e),
    }
    let header = LogHeader {
        generation: 1,
        base_seq: 0,
        node_id,
        base_ts: Hlc::tick(Hlc::default(), now_ms).0,
    };
    let path = layout.log(1);
    let file = backend
        .create(&path)
        .map_err(|e| Error::io("create", &path, e))?;
    file.write_all_at(&header.encode(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("write", &path, e))?;
    backend
        .sync_dir(&layout.dir)
        .map_err(|e| Error::io("sync", &layout.dir, e))?;
    layout.write_current(backend, 1)?;
    Ok((node_id, true))
}

impl Dir {
    pub(crate) fn open_log(&self, generation: u64) -> Result<(Tail, LogHeader)> {
        let path = self.layout.log(generation);
        let file: Arc<dyn LogFile> = Arc::from(
            self.backend
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?,
        );
        let header = log::read_header(file.as_ref(), &path)?;
        if header.generation != generation {
            return Err(Error::corruption(
                &path,
                16,
                format!(
                    "the header says generation {}, the file name {generation}",
                    header.generation
                ),
            ));
        }
        if header.node_id != self.node_id {
            return Err(Error::corruption(
                &path,
                32,
                format!(
                    "the log belongs to node {}, this directory is node {}",
                    header.node_id, self.node_id
                ),
            ));
        }
        let allocated = file.len().map_err(|e| Error::io("stat", &path, e))?;
        Ok((
            Tail {
                generation,
                path,
                file,
                allocated,
            },
            header,
        ))
    }

    /// Loads generation `generation` up to its committed end `end`.
    pub(crate) fn load(&self, generation: u64, end: u64) -> Result<(Tail, State)> {
        let (tail, header) = self.open_log(generation)?;
        let mut state = State {
            generation,
            end: HEADER_LEN,
            last_seq: header.base_seq,
            last_ts: header.base_ts,
            index: Index::default(),
            channels: crate::channels::Mark::default(),
        };
        apply_range(&tail, &mut state, end)?;
        Ok((tail, state))
    }

    /// Rebuilds the shared map from the files. Lock held.
    ///
    /// When the map is from this boot and names the current generation, its
    /// published end is exact: bytes past it are a dead writer's unacknowledged
    /// leftovers and are cut. Otherwise (after a reboot) the whole log is
    /// scanned: intact frames are kept, a torn tail is cut, and damage with
    /// intact data after it is corruption.
    pub(crate) fn recover_locked(&self) -> Result<()> {
        let generation = self.layout.read_current(self.backend.as_ref())?;
        let (tail, _) = self.open_log(generation).map_err(|e| match e {
            Error::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            } => Error::corruption(
                self.layout.current(),
                0,
                format!(
                    "it names {}, which does not exist",
                    Layout::log_name(generation)
                ),
            ),
            other => other,
        })?;
        let path = &tail.path;
        let file = tail.file.as_ref();
        let len = file.len().map_err(|e| Error::io("stat", path, e))?;
        let (shm_generation, shm_end) = self.shm.published();
        let trusted = self.shm.is_valid(self.boot) && shm_generation == generation;
        let end = if trusted {
            if shm_end > len {
                return Err(Error::corruption(
                    path,
                    len,
                    format!(
                        "the log is {len} bytes long but {shm_end} bytes were committed: something other than Chorus truncated it"
                    ),
                ));
            }
            if len > shm_end {
                warn!(path = %path.display(), bytes = len - shm_end, "cutting bytes a dead writer left past the committed end");
                truncate(file, path, shm_end)?;
            }
            shm_end
        } else {
            let scan = log::scan(file, path)?;
            if let Some(d) = &scan.damage {
                if !scan.torn {
                    return Err(Error::corruption(
                        path,
                        d.offset,
                        format!("{} with intact frames after it", d.detail),
                    ));
                }
                warn!(path = %path.display(), offset = d.offset, detail = %d.detail, "cutting a torn tail");
                truncate(file, path, scan.end)?;
            }
            scan.end
        };
        self.remove_stale(generation)?;
        self.shm.reset(self.boot, generation, end);
        Ok(())
    }

    /// Removes log files of other generations and temporary files. Lock held.
    fn remove_stale(&self, generation: u64) -> Result<()> {
        let dir = &self.layout.dir;
        let names = self
            .backend
            .list_dir(dir)
            .map_err(|e| Error::io("list", dir, e))?;
        let mut removed = false;
        for name in names {
            let stale_log = Layout::parse_log_name(&name).is_some_and(|g| g != generation);
            if stale_log || name.ends_with(".tmp") {
                let path = dir.join(&name);
                self.backend
                    .remove_file(&path)
                    .map_err(|e| Error::io("remove", &path, e))?;
                removed = true;
            }
        }
        if removed {
            self.backend
                .sync_dir(dir)
                .map_err(|e| Error::io("sync", dir, e))?;
        }
        Ok(())
    }

    /// Writes `index` as generation `generation` (to a temporary name, synced,
    /// then renamed into place). Returns the new log's end. Lock held.
    pub(crate) fn write_generation(
        &self,
        generation: u64,
        index: &Index,
        base_seq: u64,
        ts: u64,
    ) -> Result<u64> {
        let path = self.layout.log(generation);
        let tmp = backend::tmp_path(&path);
        let result = self.write_generation_at(&tmp, generation, index, base_seq, ts);
        let end = match result {
            Ok(end) => end,
            Err(e) => {
                let _ = self.backend.remove_file(&tmp);
                return Err(e);
            }
        };
        self.backend
            .rename(&tmp, &path)
            .map_err(|e| Error::io("rename", &tmp, e))?;
        self.backend
            .sync_dir(&self.layout.dir)
            .map_err(|e| Error::io("sync", &self.layout.dir, e))?;
        Ok(end)
    }

    fn write_generation_at(
        &self,
        tmp: &Path,
        generation: u64,
        index: &Index,
        base_seq: u64,
        ts: u64,
    ) -> Result<u64> {
        let file = self
            .backend
            .create(tmp)
            .map_err(|e| Error::io("create", tmp, e))?;
        let header = LogHeader {
            generation,
            base_seq,
            node_id: self.node_id,
            base_ts: ts,
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| Error::io("write", tmp, e))?;
        let mut end = HEADER_LEN;
        let mut frame = Vec::with_capacity(CHECKPOINT_FRAME_BYTES + 4096);
        let mut groups: Vec<PrefixGroup<'_>> = Vec::new();
        let mut size = 0usize;
        let mut flush = |groups: &mut Vec<PrefixGroup<'_>>, end: &mut u64| -> Result<()> {
            if groups.is_empty() {
                return Ok(());
            }
            frame.clear();
            format::encode_frame(&Payload::Checkpoint(std::mem::take(groups)), &mut frame)
                .map_err(Error::InvalidInput)?;
            file.write_all_at(&frame, *end)
                .map_err(|e| Error::io("write", tmp, e))?;
            *end += frame.len() as u64;
            Ok(())
        };
        let mut last_prefix: Option<&chorus_core::FullPrefix> = None;
        for (fp, key, entry) in index.iter_all() {
            let same = groups
                .last()
                .is_some_and(|g| g.prefix == fp.prefix() && g.subprefix == fp.subprefix());
            if !same {
                // The prefix's sum goes with its first group only.
                let first = last_prefix.is_none_or(|last| last != fp);
                last_prefix = Some(fp);
                groups.push(PrefixGroup {
                    prefix: fp.prefix(),
                    subprefix: fp.subprefix(),
                    sum: if first { index.prefix_sum(fp) } else { 0 },
                    entries: Vec::new(),
                });
            }
            if let Some(g) = groups.last_mut() {
                g.entries.push(CheckpointEntry {
                    seq: entry.seq,
                    key: Raw(key.as_bytes()),
                    value: Raw(&entry.value),
                });
            }
            size += key.len() + entry.value.len() + 16;
            if size >= CHECKPOINT_FRAME_BYTES {
                flush(&mut groups, &mut end)?;
                size = 0;
            }
        }
        flush(&mut groups, &mut end)?;
        file.sync_data().map_err(|e| Error::io("sync", tmp, e))?;
        Ok(end)
    }
}

/// Applies the frames in `[state.end, end)` of `tail` to `state`.
pub(crate) fn apply_range(tail: &Tail, state: &mut State, end: u64) -> Result<()> {
    assert_eq!(
        tail.generation, state.generation,
        "frames applied from another generation's log"
    );
    let mut applier = Applier::new();
    let index = &mut state.index;
    let mut high = (state.last_seq, state.last_ts);
    log::replay(tail.file.as_ref(), &tail.path, state.end, end, |payload| {
        let (seq, ts) = applier.apply(index, &payload);
        high = (high.0.max(seq), high.1.max(ts));
    })?;
    state.last_seq = high.0;
    state.last_ts = high.1;
    state.end = end;
    Ok(())
}

fn truncate(file: &dyn LogFile, path: &Path, len: u64) -> Result<()> {
    file.set_len(len)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io("truncate", path, e))
}
