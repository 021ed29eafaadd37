//! `export_tree`: the keys of one full prefix back into `.meta` folders.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use chorus_core::FullPrefix;
use chorus_store::{IterOptions, Metadata, Resolver, Scope};

use crate::error::{OmError, Problems};
use crate::keys::{META, parse_key};
use crate::store_io::newest;
use crate::types::{OmType, decode_value};
use crate::{MAX_ENTRIES, PROGRESS_EVERY, Phase, Progress};

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Locations (`.meta` folders) written.
    pub locations: u64,
    /// Files and folders inside them.
    pub entries: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Files and folders created or overwritten (`.meta` folders included).
    pub written: u64,
    /// Files and folders that were already there with the same content.
    pub unchanged: u64,
}

/// A key and the entry it holds.
type KeyEntry = (String, OmType, String);

/// One file or folder to write.
struct Planned {
    path: PathBuf,
    /// The file's content; `None` for a folder.
    content: Option<String>,
}

/// Writes every key of `fp` back as `.meta` folders under `root` (created
/// if missing): the same names, suffixes and bytes that were imported.
/// Everything is checked before the first write: keys that are not OM
/// entries, and a destination that holds a different file where one goes,
/// a file where a folder goes or a symbolic link on the way, are refused
/// with nothing written. `force` overwrites different files (never links
/// or folders). Files already identical are left untouched; files the
/// keys do not name are left alone.
pub fn export_tree(
    meta: &Metadata,
    fp: &FullPrefix,
    root: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress) -> Result<(), OmError>,
) -> Result<ExportReport, OmError> {
    let (keys, mut problems) = read_keys(meta, fp, progress)?;
    if keys.is_empty() && problems.is_empty() {
        return Err(OmError::NotFound(format!(
            "{fp} holds no Open Metadata keys: import a tree first (chorus om import PATH --into {fp}), or name the prefix you imported into"
        )));
    }
    let (plan, mut report) = plan(root, &keys, &mut problems);
    if !problems.is_empty() {
        return Err(not_om(fp, &problems));
    }
    let writes = check_destination(root, &plan, force, &mut report)?;
    let total = writes.len() as u64;
    for (i, p) in writes.iter().enumerate() {
        match &p.content {
            None => fs::create_dir_all(&p.path)
                .map_err(|e| OmError::io("create the folder", &p.path, &e))?,
            Some(text) => fs::write(&p.path, text.as_bytes())
                .map_err(|e| OmError::io("write", &p.path, &e))?,
        }
        let done = i as u64 + 1;
        if done == total || done.is_multiple_of(PROGRESS_EVERY) {
            progress(Progress {
                phase: Phase::Writing,
                done,
                total: Some(total),
            })?;
        }
    }
    Ok(report)
}

/// Every live key of `fp` and its entry, sorted, and the keys that hold
/// no OM entry.
fn read_keys(
    meta: &Metadata,
    fp: &FullPrefix,
    progress: &mut dyn FnMut(Progress) -> Result<(), OmError>,
) -> Result<(Vec<KeyEntry>, Problems), OmError> {
    let opts = IterOptions {
        resolver: Resolver::Lww,
        ..Default::default()
    };
    let mut problems = Problems::new();
    let mut out = Vec::new();
    for item in meta.iter(&Scope::FullPrefix(fp.clone()), &opts)? {
        let item = item?;
        let Some(bytes) = newest(Some(item.read)) else {
            continue;
        };
        let Ok(key) = String::from_utf8(item.key) else {
            problems.push("a key that is not UTF-8 text".to_string());
            continue;
        };
        match decode_value(&bytes) {
            Ok((ty, raw)) => out.push((key, ty, raw)),
            Err(e) => problems.push(format!("{key}: {e}")),
        }
        if out.len() > MAX_ENTRIES {
            return Err(OmError::Invalid(format!(
                "{fp} holds more than {MAX_ENTRIES} keys, more than one export handles"
            )));
        }
        if (out.len() as u64).is_multiple_of(PROGRESS_EVERY) {
            progress(Progress {
                phase: Phase::Scanning,
                done: out.len() as u64,
                total: None,
            })?;
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, problems))
}

fn not_om(fp: &FullPrefix, problems: &Problems) -> OmError {
    OmError::Invalid(problems.message(
        &format!("{fp} holds keys that are not Open Metadata entries"),
        "nothing was exported: export a prefix written by `chorus om import` or the om API, or delete these keys",
    ))
}

/// The files and folders the keys make, and the report's counts; keys
/// that make none are added to `problems`.
fn plan(root: &Path, keys: &[KeyEntry], problems: &mut Problems) -> (Vec<Planned>, ExportReport) {
    let types: HashMap<&str, OmType> = keys.iter().map(|(k, t, _)| (k.as_str(), *t)).collect();
    let mut locations = BTreeSet::new();
    let mut report = ExportReport::default();
    let mut plan = Vec::with_capacity(keys.len());
    for (key, ty, raw) in keys {
        let Some(parsed) = parse_key(key) else {
            problems.push(format!(
                "{key}: not of the form LOCATION/.meta/NAME/... (with no empty, '.' or '..' names)"
            ));
            continue;
        };
        let mut path = root.join(&parsed.location).join(META);
        if parsed.path.is_empty() {
            if *ty != OmType::Meta {
                problems.push(format!("{key}: a .meta key holds a {ty}, not meta"));
            }
            locations.insert(parsed.location);
            plan.push(Planned {
                path,
                content: None,
            });
            continue;
        }
        match file_names(key, &parsed.path, *ty, &types) {
            Ok(names) => path.extend(names),
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        }
        locations.insert(parsed.location);
        report.entries += 1;
        if ty.is_value() {
            report.bytes += raw.len() as u64;
        }
        plan.push(Planned {
            path,
            content: ty.is_value().then(|| raw.clone()),
        });
    }
    report.locations = locations.len() as u64;
    (plan, report)
}

/// The file and folder names of an entry's path: each name with the
/// suffix of its type (groups found by their own keys).
fn file_names(
    key: &str,
    path: &[String],
    ty: OmType,
    types: &HashMap<&str, OmType>,
) -> Result<Vec<String>, String> {
    if ty == OmType::Meta {
        return Err(format!("{key}: only a .meta key may hold the type meta"));
    }
    let mut names = Vec::with_capacity(path.len());
    let mut prefix_len = key.len() - path.iter().map(|p| p.len() + 1).sum::<usize>();
    for (i, name) in path.iter().enumerate() {
        prefix_len += name.len() + 1;
        let t = if i + 1 == path.len() {
            ty
        } else {
            let group = &key[..prefix_len];
            match types.get(group) {
                Some(t) if t.is_group() => *t,
                Some(t) => {
                    return Err(format!(
                        "{key}: its parent {group} is a {t}, not a group (dict, list or folder)"
                    ));
                }
                None => {
                    return Err(format!(
                        "{key}: its parent group {group} has no key, so its suffix is unknown"
                    ));
                }
            }
        };
        names.push(match t.suffix() {
            Some(s) => format!("{name}.{s}"),
            None => name.clone(),
        });
    }
    Ok(names)
}

/// What the destination holds where the plan writes: refuses links,
/// files where folders go (and the reverse), and different files unless
/// `force`. Returns the writes to make (identical files and existing
/// folders are skipped).
fn check_destination<'a>(
    root: &Path,
    plan: &'a [Planned],
    force: bool,
    report: &mut ExportReport,
) -> Result<Vec<&'a Planned>, OmError> {
    let mut problems = Problems::new();
    let mut different = 0u64;
    let mut writes = Vec::new();
    match fs::metadata(root) {
        Ok(md) if !md.is_dir() => {
            return Err(OmError::Invalid(format!(
                "{} is not a folder: export into a folder (it is created if missing)",
                root.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(OmError::io("read", root, &e)),
    }
    // Every folder on the way from the root, checked once.
    let mut ancestors: BTreeSet<PathBuf> = BTreeSet::new();
    for p in plan {
        let mut at = p.path.parent();
        while let Some(dir) = at {
            if dir == root || !dir.starts_with(root) {
                break;
            }
            if !ancestors.insert(dir.to_path_buf()) {
                break;
            }
            at = dir.parent();
        }
    }
    for dir in &ancestors {
        if let Some(problem) = not_a_folder(dir) {
            problems.push(problem);
        }
    }
    for p in plan {
        match (&p.content, fs::symlink_metadata(&p.path)) {
            // Not a directory: a file is in the way of a folder above,
            // which the check of the folders on the way reported.
            (_, Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                writes.push(p)
            }
            (_, Err(e)) => return Err(OmError::io("read", &p.path, &e)),
            (None, Ok(_)) => match not_a_folder(&p.path) {
                Some(problem) => problems.push(problem),
                None => report.unchanged += 1,
            },
            (Some(text), Ok(md)) => {
                if md.file_type().is_symlink() || !md.is_file() {
                    problems.push(format!(
                        "{} is a symbolic link, folder or special file where a file goes: remove it and export again",
                        p.path.display()
                    ));
                } else if md.len() == text.len() as u64
                    && fs::read(&p.path).map_err(|e| OmError::io("read", &p.path, &e))?
                        == text.as_bytes()
                {
                    report.unchanged += 1;
                } else if force {
                    writes.push(p);
                } else {
                    different += 1;
                    problems.push(format!("{} holds different content", p.path.display()));
                }
            }
        }
    }
    if !problems.is_empty() {
        let tail = if different > 0 && !force {
            "nothing was exported: export into an empty folder, or pass --force (force: true) to overwrite files with different content"
        } else {
            "nothing was exported: remove these and export again"
        };
        return Err(OmError::Conflict(problems.message(
            &format!(
                "{} holds files that the export would overwrite",
                root.display()
            ),
            tail,
        )));
    }
    report.written = writes.len() as u64;
    Ok(writes)
}

/// Why `dir` cannot be a folder of the export, if it cannot: it is a
/// link or not a folder (absent is fine).
fn not_a_folder(dir: &Path) -> Option<String> {
    let md = fs::symlink_metadata(dir).ok()?;
    if md.file_type().is_symlink() {
        return Some(format!(
            "{} is a symbolic link: export does not write through links; remove it or export elsewhere",
            dir.display()
        ));
    }
    (!md.is_dir()).then(|| {
        format!(
            "{} is a file where a folder goes: remove it and export again",
            dir.display()
        )
    })
}
