//! Import then export: byte-identical `.meta` folders, the keys and values
//! in between, idempotent re-imports, and exports that refuse to
//! overwrite different content.

use std::fs;

use chorus_core::Kind;
use chorus_om::{OmType, Phase, Progress, decode_value, export_tree, import_tree};
use chorus_store::GetOptions;

mod common;
use common::{assert_same_meta, file, fp, key_count, meta_contents, rich_tree, store};

fn quiet() -> impl FnMut(Progress) -> Result<(), chorus_om::OmError> {
    |_| Ok(())
}

fn value_of(meta: &chorus_store::Metadata, key: &str) -> Vec<u8> {
    let read = meta
        .get(&fp(), key.as_bytes(), &GetOptions::default())
        .expect("read")
        .unwrap_or_else(|| panic!("{key} is absent"));
    assert_eq!(read.values.len(), 1);
    read.values[0].bytes().expect("a value").to_vec()
}

#[test]
fn a_tree_comes_back_byte_for_byte() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    rich_tree(src.path());
    let mut phases = Vec::new();
    let report = import_tree(&s.meta, &fp(), src.path(), &mut |p: Progress| {
        phases.push(p);
        Ok(())
    })
    .expect("import");
    assert_eq!(report.locations, 5);
    let entries_on_disk = meta_contents(src.path())
        .keys()
        .filter(|p| p.file_name().is_some_and(|n| n != ".meta"))
        .count() as u64;
    assert_eq!(report.entries, entries_on_disk);
    assert_eq!(report.written, report.entries + report.locations);
    assert_eq!(report.unchanged, 0);
    assert_eq!(
        key_count(&s.meta, &fp()) as u64,
        report.entries + report.locations
    );
    assert!(phases.iter().any(|p| p.phase == Phase::Writing));
    let last = phases.last().expect("progress was reported");
    assert_eq!(last.done, last.total.expect("a total"));

    let out = tempfile::tempdir().expect("tmp");
    let exported = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect("export");
    assert_eq!(exported.locations, report.locations);
    assert_eq!(exported.entries, report.entries);
    assert_eq!(exported.bytes, report.bytes);
    assert_same_meta(src.path(), out.path());
    assert_same_meta(out.path(), src.path());
    assert!(!out.path().join("notes.txt").exists());
    assert!(!out.path().join("plain").exists());
    assert!(out.path().join("shots/s010/.meta").is_dir());
    assert_eq!(
        fs::read(out.path().join(".meta/zero.int")).expect("an empty file"),
        b""
    );
}

#[test]
fn keys_and_values_follow_the_mapping() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    rich_tree(src.path());
    import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import");
    assert_eq!(
        value_of(&s.meta, ".meta/count"),
        br#"{"type":"int","raw":"5"}"#
    );
    assert_eq!(value_of(&s.meta, ".meta"), br#"{"type":"meta"}"#);
    assert_eq!(value_of(&s.meta, "shots/s010/.meta"), br#"{"type":"meta"}"#);
    assert_eq!(
        value_of(&s.meta, ".meta/zero"),
        br#"{"type":"int","raw":""}"#
    );
    assert_eq!(
        value_of(&s.meta, ".meta/settings/hollow"),
        br#"{"type":"dict"}"#
    );
    assert_eq!(value_of(&s.meta, ".meta/vacant"), br#"{"type":"list"}"#);
    assert_eq!(
        value_of(&s.meta, ".meta/settings/sizes/1"),
        br#"{"type":"int","raw":"2"}"#
    );
    assert_eq!(
        value_of(&s.meta, ".meta/.history/count&20140101-120000"),
        br#"{"type":"folder"}"#
    );
    assert_eq!(
        value_of(&s.meta, ".meta/.trash/oldgroup/x"),
        br#"{"type":"int","raw":"1"}"#
    );
    assert_eq!(
        value_of(&s.meta, ".meta/dotted.name"),
        br#"{"type":"int","raw":"7"}"#
    );
    let notes = decode_value(&value_of(&s.meta, ".meta/notes")).expect("decodes");
    assert_eq!(
        notes,
        (OmType::Text, "\"line one\\nline two\"\n".to_string())
    );
    assert_eq!(
        value_of(&s.meta, "shots/s010/deep/er/.meta/title"),
        br#"{"type":"text","raw":"\"deep one\""}"#
    );
}

#[test]
fn importing_the_same_tree_again_writes_nothing() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    rich_tree(src.path());
    let first = import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import");
    let seq = s.meta.store().status().expect("status").last_seq;
    let second = import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import again");
    assert_eq!(second.written, 0);
    assert_eq!(second.commits, 0);
    assert_eq!(second.unchanged, first.written);
    assert_eq!(s.meta.store().status().expect("status").last_seq, seq);

    // One changed file: one key written.
    file(src.path(), ".meta/count.int", b"6");
    let third = import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import a change");
    assert_eq!(third.written, 1);
    assert_eq!(
        value_of(&s.meta, ".meta/count"),
        br#"{"type":"int","raw":"6"}"#
    );
}

#[test]
fn a_large_tree_is_written_in_several_commits() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    for i in 0..2_500 {
        file(
            src.path(),
            &format!(".meta/n{i}.int"),
            i.to_string().as_bytes(),
        );
    }
    let report = import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import");
    assert_eq!(report.entries, 2_500);
    assert_eq!(report.commits, 3);
    let out = tempfile::tempdir().expect("tmp");
    export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect("export");
    assert_same_meta(src.path(), out.path());
}

#[test]
fn export_refuses_to_overwrite_different_content_unless_forced() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    rich_tree(src.path());
    import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import");
    let out = tempfile::tempdir().expect("tmp");
    export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect("export");

    // Again into the same folder: everything is already there.
    let again = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect("again");
    assert_eq!(again.written, 0);
    assert_eq!(again.unchanged, again.entries + again.locations);

    // A changed file and a removed one: refused, nothing written.
    file(out.path(), ".meta/count.int", b"99");
    fs::remove_file(out.path().join(".meta/flag.bool")).expect("remove");
    let err = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet())
        .expect_err("a different file is in the way");
    assert_eq!(err.kind(), Kind::Conflict);
    let msg = err.to_string();
    assert!(msg.contains("count.int"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    assert!(msg.contains("nothing was exported"), "{msg}");
    assert_eq!(
        fs::read(out.path().join(".meta/count.int")).expect("read"),
        b"99"
    );
    assert!(!out.path().join(".meta/flag.bool").exists());

    let forced = export_tree(&s.meta, &fp(), out.path(), true, &mut quiet()).expect("forced");
    assert_eq!(forced.written, 2);
    assert_same_meta(src.path(), out.path());
}

#[test]
fn export_refuses_links_and_files_in_the_way_even_forced() {
    let s = store();
    let src = tempfile::tempdir().expect("tmp");
    rich_tree(src.path());
    import_tree(&s.meta, &fp(), src.path(), &mut quiet()).expect("import");
    let elsewhere = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink(elsewhere.path(), out.path().join("shots")).expect("a link");
    file(
        out.path(),
        ".meta/settings.dict",
        b"a file where a folder goes",
    );
    let err = export_tree(&s.meta, &fp(), out.path(), true, &mut quiet()).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(
        msg.contains("settings.dict is a file where a folder goes"),
        "{msg}"
    );
    assert!(
        fs::read_dir(elsewhere.path())
            .expect("list")
            .next()
            .is_none()
    );
    assert!(!out.path().join(".meta/count.int").exists());
}

#[test]
fn export_of_an_empty_prefix_or_foreign_keys_is_refused() {
    let s = store();
    let out = tempfile::tempdir().expect("tmp");
    let err = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect_err("empty");
    assert_eq!(err.kind(), Kind::NotFound);
    assert!(err.to_string().contains("import a tree first"), "{err}");

    let put = |key: &str, value: &[u8]| {
        s.meta
            .put(
                &fp(),
                key.as_bytes(),
                chorus_store::PutValue::Bytes(value.to_vec()),
                &Default::default(),
            )
            .expect("put");
    };
    put(".meta/ok", br#"{"type":"int","raw":"1"}"#);
    put("stray", br#"{"type":"int","raw":"1"}"#);
    put(".meta/g/child", br#"{"type":"int","raw":"1"}"#);
    put(".meta/junk", b"not json");
    put(".meta/../escape", br#"{"type":"int","raw":"1"}"#);
    let err = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect_err("refused");
    assert_eq!(err.kind(), Kind::BadRequest);
    let msg = err.to_string();
    for part in ["stray", ".meta/junk", "../escape"] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    assert!(fs::read_dir(out.path()).expect("list").next().is_none());
}

#[test]
fn export_names_a_child_whose_group_has_no_key() {
    let s = store();
    s.meta
        .put(
            &fp(),
            b".meta/g/child",
            chorus_store::PutValue::Bytes(br#"{"type":"int","raw":"1"}"#.to_vec()),
            &Default::default(),
        )
        .expect("put");
    let out = tempfile::tempdir().expect("tmp");
    let err = export_tree(&s.meta, &fp(), out.path(), false, &mut quiet()).expect_err("refused");
    assert!(
        err.to_string().contains("parent group .meta/g has no key"),
        "{err}"
    );
}
