//! Bad trees: each is refused with a message naming what is wrong, and
//! the store holds nothing afterwards (a good location beside the bad one
//! is not written either).

use std::path::Path;

use chorus_core::Kind;
use chorus_om::{OmError, Progress, import_tree};
use chorus_store::Limits;

mod common;
use common::{file, fp, key_count, store, store_with};

/// Imports a tree made by `make` (beside a good location) into a new
/// store; returns the error, after checking that nothing was written.
fn refused_with(limits: Limits, make: impl FnOnce(&Path)) -> String {
    let s = store_with(limits);
    let src = tempfile::tempdir().expect("tmp");
    file(src.path(), "good/.meta/fine.int", b"1");
    make(src.path());
    let err: OmError = import_tree(&s.meta, &fp(), src.path(), &mut |_: Progress| Ok(()))
        .expect_err("the tree is refused");
    assert_eq!(err.kind(), Kind::BadRequest, "{err}");
    assert_eq!(key_count(&s.meta, &fp()), 0, "nothing is written");
    let msg = err.to_string();
    assert!(msg.contains("nothing was imported"), "{msg}");
    msg
}

fn refused(make: impl FnOnce(&Path)) -> String {
    refused_with(Limits::default(), make)
}

#[test]
fn two_entries_with_one_name() {
    let msg = refused(|r| {
        file(r, ".meta/a.int", b"1");
        file(r, ".meta/a.string", b"\"1\"");
    });
    assert!(msg.contains(".meta/a.int"), "{msg}");
    assert!(msg.contains(".meta/a.string"), "{msg}");
    assert!(msg.contains("different suffixes"), "{msg}");
    // A group and a value of one name are a duplicate too.
    let msg = refused(|r| {
        file(r, ".meta/g.dict/x.int", b"1");
        file(r, ".meta/g.bool", b"true");
    });
    assert!(msg.contains("g.dict") && msg.contains("g.bool"), "{msg}");
}

#[test]
fn content_that_is_not_json() {
    let msg = refused(|r| file(r, "x/.meta/bad.string", b"unquoted text"));
    assert!(msg.contains("x/.meta/bad.string"), "{msg}");
    assert!(msg.contains("not valid JSON"), "{msg}");
    assert!(msg.contains("line 1 column 1"), "{msg}");
}

#[test]
fn unknown_or_missing_suffixes() {
    let msg = refused(|r| file(r, ".meta/x.foo", b"1"));
    assert!(msg.contains(".meta/x.foo"), "{msg}");
    assert!(msg.contains("\"foo\""), "{msg}");
    assert!(
        msg.contains("bool, int, float, string, text, null, tuple, date"),
        "{msg}"
    );
    let msg = refused(|r| file(r, ".meta/README", b"1"));
    assert!(msg.contains("README has no suffix"), "{msg}");
    // Files inside .history need a suffix too.
    let msg = refused(|r| file(r, ".meta/.history/a&20140101-000000/value", b"1"));
    assert!(msg.contains("value has no suffix"), "{msg}");
    // A folder without a group suffix outside .history and .trash.
    let msg = refused(|r| file(r, ".meta/stuff/a.int", b"1"));
    assert!(msg.contains("without a group suffix"), "{msg}");
}

#[test]
fn text_that_is_not_utf8() {
    let msg = refused(|r| file(r, ".meta/x.string", b"\"\xff\xfe\""));
    assert!(msg.contains("x.string is not UTF-8"), "{msg}");
}

#[test]
fn symbolic_links_are_not_followed() {
    let msg = refused(|r| {
        file(r, "target.int", b"1");
        file(r, ".meta/real.int", b"1");
        std::os::unix::fs::symlink(r.join("target.int"), r.join(".meta/link.int")).expect("a link");
    });
    assert!(msg.contains("link.int is a symbolic link"), "{msg}");
    let msg = refused(|r| {
        file(r, "elsewhere/x.int", b"1");
        std::fs::create_dir_all(r.join("loc")).expect("mkdir");
        std::os::unix::fs::symlink(r.join("elsewhere"), r.join("loc/.meta")).expect("a link");
    });
    assert!(msg.contains("loc/.meta is a symbolic link"), "{msg}");
}

#[test]
fn special_files_are_refused() {
    let msg = refused(|r| {
        std::fs::create_dir_all(r.join(".meta")).expect("mkdir");
        let made = std::process::Command::new("mkfifo")
            .arg(r.join(".meta/pipe.int"))
            .status()
            .expect("run mkfifo");
        assert!(made.success());
    });
    assert!(msg.contains("pipe.int is not a regular file"), "{msg}");
}

#[test]
fn large_files_are_refused() {
    let msg = refused(|r| {
        let mut big = vec![b'1'; (1 << 20) + 1];
        big[0] = b'2';
        file(r, ".meta/big.int", &big);
    });
    assert!(msg.contains("big.int is 1048577 bytes"), "{msg}");
    assert!(msg.contains("limit of 1048576"), "{msg}");
}

#[test]
fn deep_trees_are_refused() {
    let deep: String = (0..70).map(|i| format!("d{i}/")).collect();
    let msg = refused(|r| file(r, &format!("{deep}.meta/x.int"), b"1"));
    assert!(msg.contains("more than 64 folders deep"), "{msg}");
    let groups: String = (0..70).map(|i| format!("g{i}.dict/")).collect();
    let msg = refused(|r| file(r, &format!(".meta/{groups}x.int"), b"1"));
    assert!(msg.contains("more than 64 folders deep"), "{msg}");
}

#[test]
fn keys_over_the_store_limit() {
    let limits = Limits {
        max_key_bytes: 40,
        ..Limits::default()
    };
    let long = "n".repeat(60);
    let msg = refused_with(limits, |r| file(r, &format!(".meta/{long}.int"), b"1"));
    assert!(msg.contains("over the store's limit of 40 bytes"), "{msg}");
    assert!(msg.contains(&long), "{msg}");
}

#[test]
fn every_problem_is_listed() {
    let msg = refused(|r| {
        file(r, "a/.meta/x.foo", b"1");
        file(r, "b/.meta/y.int", b"nope");
    });
    assert!(msg.contains("x.foo") && msg.contains("y.int"), "{msg}");
}

#[test]
fn a_missing_root_or_a_meta_root_is_refused() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    let err = import_tree(&s.meta, &fp(), &src.path().join("nope"), &mut |_| Ok(()))
        .expect_err("missing");
    assert_eq!(err.kind(), Kind::NotFound);
    file(src.path(), ".meta/a.int", b"1");
    let err = import_tree(&s.meta, &fp(), &src.path().join(".meta"), &mut |_| Ok(()))
        .expect_err("a .meta root");
    assert!(
        err.to_string().contains("pass the folder that holds it"),
        "{err}"
    );
    let reserved = chorus_core::FullPrefix::parse("$om/x").expect("a prefix");
    let err = import_tree(&s.meta, &reserved, src.path(), &mut |_| Ok(())).expect_err("reserved");
    assert_eq!(err.kind(), Kind::BadRequest);
    assert_eq!(key_count(&s.meta, &fp()), 0);
}
