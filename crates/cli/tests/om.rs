//! `chorus om import` and `chorus om export` as real processes: a tree
//! comes back byte for byte, bad trees exit 2 and write nothing, a second
//! import writes nothing, and an export refuses to overwrite different
//! files (exit 3) unless --force.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::{chorus, code, ok, ok_json, stderr, stdout};

fn file(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

/// Every type, nested and empty groups, empty files, four locations at
/// different depths, a history snapshot, the trash, and files outside
/// `.meta`.
fn tree(root: &Path) {
    let files: &[(&str, &[u8])] = &[
        (".meta/title.string", b"\"h\xc3\xa9llo \\\"you\\\"\""),
        (".meta/count.int", b"3"),
        (".meta/ratio.float", b"1.5"),
        (".meta/ok.bool", b"false"),
        (".meta/none.null", b"null"),
        (".meta/pair.tuple", b"[1, 2]"),
        (".meta/day.date", b"\"2014-05-06\""),
        (".meta/about.text", b"\"two\\nlines\"\n"),
        (".meta/zero.int", b""),
        (".meta/cfg.dict/mode.string", b"\"fast\""),
        (".meta/cfg.dict/ids.list/0.int", b"7"),
        (
            ".meta/.history/count&20140101-000000/user.string",
            b"\"marcus\"",
        ),
        (".meta/.history/count&20140101-000000/value.int", b"2"),
        (".meta/.trash/gone.int", b"1"),
        ("a/.meta/x.int", b"1"),
        ("a/b/c/.meta/y.string", b"\"deep\""),
        ("readme.txt", b"not metadata"),
    ];
    for (rel, content) in files {
        file(root, rel, content);
    }
    fs::create_dir_all(root.join(".meta/cfg.dict/empty.dict")).expect("mkdir");
    fs::create_dir_all(root.join("a/b/.meta")).expect("mkdir");
}

/// Every path with a `.meta` component under `root`, and its bytes
/// (`None` for a folder).
fn meta_contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("an entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let in_meta = rel.components().any(|c| c.as_os_str() == ".meta");
            if path.is_dir() {
                if in_meta {
                    out.insert(rel, None);
                }
                stack.push(path);
            } else if in_meta {
                out.insert(rel, Some(fs::read(&path).expect("read")));
            }
        }
    }
    out
}

fn init(d: &Path) {
    ok(chorus(d, &["init"]));
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn import_then_export_gives_the_same_meta_folders() {
    let data = tempfile::tempdir().expect("tmp");
    let src = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let d = data.path();
    init(d);
    tree(src.path());

    let o = ok(chorus(d, &["om", "import", s(src.path())]));
    let text = stdout(&o);
    assert!(
        text.starts_with("imported 4 locations, 22 entries"),
        "{text}"
    );
    assert!(
        text.contains("into om/default: 26 keys written, 0 unchanged"),
        "{text}"
    );
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));

    let e = ok_json(&chorus(d, &["--json", "om", "export", s(out.path())]));
    assert_eq!(e["locations"], 4);
    assert_eq!(e["entries"], 22);
    assert_eq!(e["written"], 26);
    assert_eq!(e["full_prefix"], "om/default");
    let (a, b) = (meta_contents(src.path()), meta_contents(out.path()));
    assert_eq!(a.len(), 26);
    assert_eq!(a, b);
    assert!(!out.path().join("readme.txt").exists());

    // A second import changes nothing.
    let again = ok_json(&chorus(d, &["--json", "om", "import", s(src.path())]));
    assert_eq!(again["written"], 0);
    assert_eq!(again["unchanged"], 26);
    assert_eq!(again["commits"], 0);
}

#[test]
fn prefixes_are_chosen_with_into_and_from() {
    let data = tempfile::tempdir().expect("tmp");
    let src = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let d = data.path();
    init(d);
    file(src.path(), "show/.meta/fps.int", b"24");
    ok(chorus(
        d,
        &["om", "import", s(src.path()), "--into", "proj/meta"],
    ));
    let got = ok_json(&chorus(
        d,
        &["--json", "get", "proj/meta", "show/.meta/fps"],
    ));
    assert_eq!(
        got["values"][0]["value"], r#"{"type":"int","raw":"24"}"#,
        "{got}"
    );

    let missing = chorus(d, &["om", "export", s(out.path())]);
    assert_eq!(code(&missing), 1, "{}", stderr(&missing));
    assert!(stderr(&missing).contains("holds no Open Metadata keys"));

    ok(chorus(
        d,
        &["om", "export", s(out.path()), "--from", "proj/meta"],
    ));
    assert_eq!(
        fs::read(out.path().join("show/.meta/fps.int")).expect("read"),
        b"24"
    );
    let bad = chorus(d, &["om", "import", s(src.path()), "--into", "noslash"]);
    assert_eq!(code(&bad), 2);
}

#[test]
fn a_bad_tree_exits_2_and_writes_nothing() {
    let data = tempfile::tempdir().expect("tmp");
    let src = tempfile::tempdir().expect("tmp");
    let d = data.path();
    init(d);
    file(src.path(), "good/.meta/fine.int", b"1");
    file(src.path(), "bad/.meta/a.int", b"1");
    file(src.path(), "bad/.meta/a.string", b"\"1\"");
    file(src.path(), "bad/.meta/broken.int", b"{");
    let o = chorus(d, &["--json", "om", "import", s(src.path())]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("a.int") && err.contains("a.string"), "{err}");
    assert!(
        err.contains("broken.int") && err.contains("not valid JSON"),
        "{err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON error");
    assert_eq!(j["code"], "bad_request");
    let listed = ok_json(&chorus(d, &["--json", "ls"]));
    assert_eq!(listed["prefixes"], serde_json::json!([]), "{listed}");
}

#[test]
fn export_refuses_different_files_unless_forced() {
    let data = tempfile::tempdir().expect("tmp");
    let src = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    let d = data.path();
    init(d);
    tree(src.path());
    ok(chorus(d, &["om", "import", s(src.path())]));
    ok(chorus(d, &["om", "export", s(out.path())]));
    file(out.path(), "a/.meta/x.int", b"2");
    fs::remove_file(out.path().join(".meta/count.int")).expect("rm");

    let o = chorus(d, &["om", "export", s(out.path())]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("x.int holds different content"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("--force"));
    assert!(
        !out.path().join(".meta/count.int").exists(),
        "nothing written"
    );

    let f = ok_json(&chorus(
        d,
        &["--json", "om", "export", s(out.path()), "--force"],
    ));
    assert_eq!(f["written"], 2);
    assert_eq!(meta_contents(src.path()), meta_contents(out.path()));
}

#[test]
fn no_progress_line_when_stderr_is_not_a_terminal() {
    let data = tempfile::tempdir().expect("tmp");
    let src = tempfile::tempdir().expect("tmp");
    let d = data.path();
    init(d);
    for i in 0..1_500 {
        file(src.path(), &format!(".meta/n{i}.int"), b"1");
    }
    let o = ok(chorus(d, &["om", "import", s(src.path())]));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1500 entries"), "{}", stdout(&o));
}
