//! Helpers of the OM tests: a store in a temporary directory, trees of
//! `.meta` folders, and a comparison of two trees' `.meta` contents.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chorus_core::FullPrefix;
use chorus_store::{IterOptions, Limits, Metadata, Options, Scope, Store, SyncMode};

/// A store in its own temporary directory.
pub struct TestStore {
    pub meta: Metadata,
    _dir: tempfile::TempDir,
}

/// Opens a new store with `limits`.
pub fn store_with(limits: Limits) -> TestStore {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(
        &dir.path().join("data"),
        Options {
            create: true,
            sync: SyncMode::Never,
            limits,
            ..Options::default()
        },
    )
    .expect("open a store");
    TestStore {
        meta: Metadata::new(store),
        _dir: dir,
    }
}

/// Opens a new store with the default limits.
pub fn store() -> TestStore {
    store_with(Limits::default())
}

/// The full prefix the tests import into.
pub fn fp() -> FullPrefix {
    FullPrefix::parse("om/default").expect("a full prefix")
}

/// How many live keys `fp` holds.
pub fn key_count(meta: &Metadata, fp: &FullPrefix) -> usize {
    meta.to_list(&Scope::FullPrefix(fp.clone()), &IterOptions::default())
        .expect("list the keys")
        .len()
}

/// Writes a file, creating its folders.
pub fn file(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("a parent")).expect("create the folders");
    fs::write(&path, content).expect("write a file");
}

/// Creates a folder (and its parents).
pub fn folder(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).expect("create a folder");
}

/// A tree with every type, nested dict and list groups, empty files and
/// empty groups, four locations at different depths (one with an empty
/// `.meta`), a history snapshot, trash, and files outside `.meta`.
pub fn rich_tree(root: &Path) {
    let values: &[(&str, &[u8])] = &[
        (
            ".meta/name.string",
            b"\"root \\\"quoted\\\" h\xc3\xa9llo \xe2\x9c\x93\"",
        ),
        (".meta/count.int", b"5"),
        (".meta/ratio.float", b"0.5"),
        (".meta/weird.float", b"NaN"),
        (".meta/flag.bool", b"true"),
        (".meta/nothing.null", b"null"),
        (".meta/pair.tuple", b"[1, \"two\"]"),
        (".meta/when.date", b"\"2014-01-02T03:04:05\""),
        (".meta/notes.text", b"\"line one\\nline two\"\n"),
        (".meta/zero.int", b""),
        (".meta/blank.string", b""),
        (".meta/dotted.name.int", b"7"),
        (".meta/settings.dict/theme.string", b"\"dark\""),
        (".meta/settings.dict/sizes.list/0.int", b"1"),
        (".meta/settings.dict/sizes.list/1.int", b"2"),
        (".meta/settings.dict/nested.dict/deep.bool", b"false"),
        (
            ".meta/.history/count&20140101-120000/user.string",
            b"\"marcus\"",
        ),
        (".meta/.history/count&20140101-120000/value.int", b"4"),
        (".meta/.trash/old.string", b"\"gone\""),
        (".meta/.trash/oldgroup.dict/x.int", b"1"),
        ("shots/.meta/frame.int", b"12"),
        ("shots/s010/deep/er/.meta/title.text", b"\"deep one\""),
        ("café/.meta/owner.string", b"\"z\""),
        ("notes.txt", b"outside .meta"),
        ("shots/plain.txt", b"not metadata"),
        ("plain/inside/file.txt", b"no .meta here"),
    ];
    for (rel, content) in values {
        file(root, rel, content);
    }
    folder(root, ".meta/settings.dict/hollow.dict");
    folder(root, ".meta/vacant.list");
    folder(root, "shots/s010/.meta");
}

/// What a tree holds inside its `.meta` folders: every path (relative to
/// the root) with a `.meta` component, mapped to its bytes (`None` for a
/// folder).
pub fn meta_contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list a folder") {
            let entry = entry.expect("an entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_path_buf();
            let in_meta = rel.components().any(|c| c.as_os_str() == ".meta");
            let ft = entry.file_type().expect("a file type");
            assert!(!ft.is_symlink(), "no links expected: {}", path.display());
            if ft.is_dir() {
                if in_meta {
                    out.insert(rel, None);
                }
                stack.push(path);
            } else if in_meta {
                out.insert(rel, Some(fs::read(&path).expect("read a file")));
            }
        }
    }
    out
}

/// Fails unless the two trees' `.meta` contents are the same, naming
/// what is missing, extra or different.
#[track_caller]
pub fn assert_same_meta(a: &Path, b: &Path) {
    let (left, right) = (meta_contents(a), meta_contents(b));
    let missing: Vec<_> = left.keys().filter(|k| !right.contains_key(*k)).collect();
    let extra: Vec<_> = right.keys().filter(|k| !left.contains_key(*k)).collect();
    let different: Vec<_> = left
        .iter()
        .filter(|(k, v)| right.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && different.is_empty(),
        "missing {missing:?}, extra {extra:?}, different {different:?}"
    );
    assert!(!left.is_empty(), "the trees hold no .meta content");
}
