//! Reading a tree of `.meta` folders into keys, checking everything first:
//! the walk collects every problem (up to a bound) and returns either all
//! the keys or an error, never a part.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, FileType};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::error::{OmError, Problems};
use crate::keys::{META, check_component, meta_key_unchecked};
use crate::types::{OmType, check_raw, encode_value};
use crate::{
    MAX_DEPTH, MAX_ENTRIES, MAX_FILE_BYTES, MAX_TOTAL_BYTES, PROGRESS_EVERY, Phase, Progress,
    SPECIAL_FOLDERS,
};

/// Bytes an object adds around a value when the store encodes it (dots,
/// timestamps, node ids), with room to spare.
pub(crate) const OBJECT_OVERHEAD: usize = 4096;

/// One key read from the tree.
pub(crate) struct Found {
    pub(crate) key: String,
    pub(crate) ty: OmType,
    pub(crate) raw: String,
}

/// What a tree holds.
pub(crate) struct Scanned {
    /// Every key, sorted (a group's key before its children's).
    pub(crate) keys: Vec<Found>,
    /// How many `.meta` folders.
    pub(crate) locations: u64,
    /// How many files and folders inside them.
    pub(crate) entries: u64,
    /// The bytes of the files.
    pub(crate) bytes: u64,
}

/// The store's limits a key and its value must fit.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) key_bytes: usize,
    pub(crate) value_bytes: usize,
}

/// The walk's state: what it found and what was wrong.
struct Walk<'a> {
    limits: Limits,
    problems: Problems,
    out: Scanned,
    progress: &'a mut dyn FnMut(Progress) -> Result<(), OmError>,
}

/// A folder of a `.meta` tree waiting to be read.
struct MetaDir {
    dir: PathBuf,
    key: String,
    /// Inside `.history`, `.trash` or `.versions`: folders without a
    /// suffix are allowed.
    special: bool,
    depth: usize,
}

/// Reads every `.meta` folder under `root`; any problem fails the whole
/// scan with a message listing them.
pub(crate) fn scan(
    root: &Path,
    limits: Limits,
    progress: &mut dyn FnMut(Progress) -> Result<(), OmError>,
) -> Result<Scanned, OmError> {
    check_root(root)?;
    let mut walk = Walk {
        limits,
        problems: Problems::new(),
        out: Scanned {
            keys: Vec::new(),
            locations: 0,
            entries: 0,
            bytes: 0,
        },
        progress,
    };
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        for (name, ft) in walk.list(&dir)? {
            let path = dir.join(&name);
            if name == META {
                walk.location(&path, &rel, ft, depth + 1)?;
                continue;
            }
            if !ft.is_dir() {
                // Files, and symbolic links, outside .meta are not OM's.
                continue;
            }
            let Some(name) = name.to_str() else {
                walk.problems.push(format!(
                    "{}: the folder's name is not UTF-8; rename it (keys are text)",
                    path.display()
                ));
                continue;
            };
            if depth + 1 > MAX_DEPTH {
                walk.problems.push(too_deep(&path));
                continue;
            }
            let rel = match rel.as_str() {
                "" => name.to_string(),
                r => format!("{r}/{name}"),
            };
            stack.push((path, rel, depth + 1));
        }
    }
    if !walk.problems.is_empty() {
        return Err(OmError::Invalid(walk.problems.message(
            &format!("{} is not a valid Open Metadata tree", root.display()),
            "nothing was imported: fix these and import again",
        )));
    }
    let Walk { mut out, .. } = walk;
    out.keys.sort_by(|a, b| a.key.cmp(&b.key));
    (walk.progress)(Progress {
        phase: Phase::Scanning,
        done: out.entries,
        total: Some(out.entries),
    })?;
    Ok(out)
}

fn check_root(root: &Path) -> Result<(), OmError> {
    let md = fs::metadata(root).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => OmError::NotFound(format!(
            "{} does not exist: pass the folder that holds your .meta folders",
            root.display()
        )),
        _ => OmError::io("read", root, &e),
    })?;
    if !md.is_dir() {
        return Err(OmError::Invalid(format!(
            "{} is not a folder: pass the folder that holds your .meta folders",
            root.display()
        )));
    }
    if root.file_name().is_some_and(|n| n == META) {
        return Err(OmError::Invalid(format!(
            "{} is a .meta folder itself: pass the folder that holds it",
            root.display()
        )));
    }
    Ok(())
}

fn too_deep(path: &Path) -> String {
    format!(
        "{}: more than {MAX_DEPTH} folders deep; import a folder further down, or flatten the tree",
        path.display()
    )
}

impl Walk<'_> {
    /// A folder's entries, sorted by name, without following links.
    fn list(&mut self, dir: &Path) -> Result<Vec<(OsString, FileType)>, OmError> {
        let read = fs::read_dir(dir).map_err(|e| OmError::io("list the folder", dir, &e))?;
        let mut entries = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| OmError::io("list the folder", dir, &e))?;
            let ft = entry
                .file_type()
                .map_err(|e| OmError::io("read", &entry.path(), &e))?;
            entries.push((entry.file_name(), ft));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// One `.meta` folder, of the location `rel`.
    fn location(
        &mut self,
        path: &Path,
        rel: &str,
        ft: FileType,
        depth: usize,
    ) -> Result<(), OmError> {
        if ft.is_symlink() {
            self.problems.push(format!(
                "{} is a symbolic link: import does not follow links; replace it by the folder itself",
                path.display()
            ));
            return Ok(());
        }
        if !ft.is_dir() {
            self.problems.push(format!(
                "{} is not a folder: OM keeps metadata in a folder named .meta; rename or remove it",
                path.display()
            ));
            return Ok(());
        }
        if depth > MAX_DEPTH {
            self.problems.push(too_deep(path));
            return Ok(());
        }
        let key = meta_key_unchecked(rel);
        self.out.locations += 1;
        self.add(path, key.clone(), OmType::Meta, String::new())?;
        let mut stack = vec![MetaDir {
            dir: path.to_path_buf(),
            key,
            special: false,
            depth,
        }];
        while let Some(d) = stack.pop() {
            self.meta_dir(&d, &mut stack)?;
        }
        Ok(())
    }

    /// The entries of one folder inside a `.meta` folder.
    fn meta_dir(&mut self, d: &MetaDir, stack: &mut Vec<MetaDir>) -> Result<(), OmError> {
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for (name, ft) in self.list(&d.dir)? {
            let path = d.dir.join(&name);
            let Some(name) = name.to_str() else {
                self.problems.push(format!(
                    "{}: the name is not UTF-8; rename it (keys are text)",
                    path.display()
                ));
                continue;
            };
            let classified = if ft.is_symlink() {
                Err(format!(
                    "{} is a symbolic link: import does not follow links; replace it by the file or folder itself",
                    path.display()
                ))
            } else if ft.is_dir() {
                classify_dir(&path, name, d.special)
            } else if ft.is_file() {
                classify_file(&path, name)
            } else {
                Err(format!(
                    "{} is not a regular file or folder (a device, socket or pipe): remove it from .meta",
                    path.display()
                ))
            };
            let (comp, ty) = match classified {
                Ok(c) => c,
                Err(problem) => {
                    self.problems.push(problem);
                    continue;
                }
            };
            if let Err(why) = check_component(&comp) {
                self.problems
                    .push(format!("{}: {why}; rename it", path.display()));
                continue;
            }
            if let Some(other) = seen.insert(comp.clone(), path.clone()) {
                self.problems.push(format!(
                    "{} and {} are two entries named {comp:?} with different suffixes: OM allows one entry per name; remove or rename one of them",
                    other.display(),
                    path.display()
                ));
                continue;
            }
            let key = format!("{}/{comp}", d.key);
            if ft.is_dir() {
                if d.depth + 1 > MAX_DEPTH {
                    self.problems.push(too_deep(&path));
                    continue;
                }
                stack.push(MetaDir {
                    dir: path.clone(),
                    key: key.clone(),
                    special: d.special || SPECIAL_FOLDERS.contains(&name),
                    depth: d.depth + 1,
                });
                self.out.entries += 1;
                self.add(&path, key, ty, String::new())?;
            } else if let Some(raw) = self.read_value(&path, ty) {
                self.out.entries += 1;
                self.out.bytes += raw.len() as u64;
                if self.out.bytes > MAX_TOTAL_BYTES {
                    return Err(OmError::Invalid(format!(
                        "the .meta files under this tree hold more than {MAX_TOTAL_BYTES} bytes: import parts of it (sub-folders) one at a time; nothing was imported"
                    )));
                }
                self.add(&path, key, ty, raw)?;
            }
        }
        Ok(())
    }

    /// Records a key (checked against the store's limits).
    fn add(&mut self, path: &Path, key: String, ty: OmType, raw: String) -> Result<(), OmError> {
        if key.len() > self.limits.key_bytes {
            self.problems.push(format!(
                "{}: its key is {} bytes long, over the store's limit of {} bytes; use shorter names or a shallower tree",
                path.display(),
                key.len(),
                self.limits.key_bytes
            ));
            return Ok(());
        }
        let encoded = encode_value(ty, &raw).len() + OBJECT_OVERHEAD;
        if encoded > self.limits.value_bytes {
            self.problems.push(format!(
                "{}: its value takes {encoded} bytes once encoded, over the store's limit of {} bytes; make it smaller",
                path.display(),
                self.limits.value_bytes
            ));
            return Ok(());
        }
        if self.out.keys.len() >= MAX_ENTRIES {
            return Err(OmError::Invalid(format!(
                "this tree holds more than {MAX_ENTRIES} .meta entries: import parts of it (sub-folders) one at a time; nothing was imported"
            )));
        }
        self.out.keys.push(Found { key, ty, raw });
        if (self.out.keys.len() as u64).is_multiple_of(PROGRESS_EVERY) {
            (self.progress)(Progress {
                phase: Phase::Scanning,
                done: self.out.entries,
                total: None,
            })?;
        }
        Ok(())
    }

    /// A value file's text, if it is one (a problem is recorded if not).
    fn read_value(&mut self, path: &Path, ty: OmType) -> Option<String> {
        match read_text(path).and_then(|raw| {
            check_raw(ty, &raw).map_err(|why| {
                format!(
                    "{}: {why}; OM files hold one JSON value (what json.dumps writes) or nothing: fix or remove it",
                    path.display()
                )
            })?;
            Ok(raw)
        }) {
            Ok(raw) => Some(raw),
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }
}

/// A file's text: at most [`MAX_FILE_BYTES`], UTF-8.
fn read_text(path: &Path) -> Result<String, String> {
    let too_big = |len: u64| {
        format!(
            "{} is {len} bytes, over the limit of {MAX_FILE_BYTES} bytes for one value: OM values are small; move large data out of .meta",
            path.display()
        )
    };
    let io = |e: std::io::Error| format!("could not read {}: {e}", path.display());
    let len = fs::symlink_metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    fs::File::open(path)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{} is not UTF-8 text (a bad byte at offset {}): OM files hold JSON text; fix or remove it",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// A folder's key name and type.
fn classify_dir(path: &Path, name: &str, special: bool) -> Result<(String, OmType), String> {
    if SPECIAL_FOLDERS.contains(&name) {
        return Ok((name.to_string(), OmType::Folder));
    }
    if let Some((stem, suffix)) = name.rsplit_once('.')
        && let Some(ty @ (OmType::Dict | OmType::List)) = OmType::parse(suffix)
    {
        return Ok((stem.to_string(), ty));
    }
    if special {
        return Ok((name.to_string(), OmType::Folder));
    }
    Err(format!(
        "{} is a folder without a group suffix: OM groups are NAME.dict or NAME.list folders (history and deleted entries live in .history and .trash); rename it or move it out of .meta",
        path.display()
    ))
}

/// A file's key name and type.
fn classify_file(path: &Path, name: &str) -> Result<(String, OmType), String> {
    let split = name.rsplit_once('.');
    if let Some((stem, suffix)) = split
        && let Some(ty) = OmType::parse(suffix).filter(|t| t.is_value())
    {
        return Ok((stem.to_string(), ty));
    }
    let found = match split {
        Some((_, suffix)) => format!("the unknown suffix {suffix:?}"),
        None => "no suffix".to_string(),
    };
    Err(format!(
        "{} has {found}: OM files are NAME.SUFFIX with SUFFIX one of {}; rename it or move it out of .meta",
        path.display(),
        OmType::FILE_SUFFIXES.join(", ")
    ))
}
