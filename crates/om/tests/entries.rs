//! OM's entry semantics over the keys: history on overwrite, restore,
//! the trash on a type change, groups, inheritance, listings, deletes,
//! and how all of it exports as OM lays it out on disk.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_core::Kind;
use chorus_om::{
    OmType, Snapshot, delete_entry, export_tree, history, import_tree, list_entries, read_entry,
    read_inherited, restore, write_entry,
};
use chorus_store::Metadata;

mod common;
use common::{assert_same_meta, fp, key_count, store};

/// 2023-11-14 22:13:20 UTC plus `secs`.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn write(meta: &Metadata, loc: &str, path: &[&str], ty: OmType, raw: &str, secs: u64) {
    write_entry(meta, &fp(), loc, path, ty, raw, "alice", at(secs)).expect("write");
}

fn read(meta: &Metadata, loc: &str, path: &[&str]) -> Option<(OmType, String)> {
    read_entry(meta, &fp(), loc, path).expect("read")
}

fn entry(ty: OmType, raw: &str) -> Option<(OmType, String)> {
    Some((ty, raw.to_string()))
}

#[test]
fn overwrites_keep_history_and_restore_brings_values_back() {
    let s = store();
    let m = &s.meta;
    write(m, "shots", &["fps"], OmType::Int, "24", 0);
    assert_eq!(read(m, "shots", &["fps"]), entry(OmType::Int, "24"));
    assert_eq!(read(m, "shots", &[]), entry(OmType::Meta, ""));
    assert!(
        history(m, &fp(), "shots", &["fps"])
            .expect("history")
            .is_empty()
    );

    write(m, "shots", &["fps"], OmType::Int, "25", 1);
    assert_eq!(read(m, "shots", &["fps"]), entry(OmType::Int, "25"));
    let snaps = history(m, &fp(), "shots", &["fps"]).expect("history");
    assert_eq!(
        snaps,
        [Snapshot {
            stamp: "20231114-221321".into(),
            user: "alice".into(),
            ty: OmType::Int,
            raw: "24".into(),
        }]
    );
    assert_eq!(
        read(m, "shots", &[".history", "fps&20231114-221321", "user"]),
        entry(OmType::String, "\"alice\"")
    );

    // The same value again changes nothing.
    let keys = key_count(m, &fp());
    write(m, "shots", &["fps"], OmType::Int, "25", 2);
    assert_eq!(key_count(m, &fp()), keys);
    assert_eq!(
        history(m, &fp(), "shots", &["fps"]).expect("history").len(),
        1
    );

    restore(m, &fp(), "shots", &["fps"], "20231114-221321", "bob", at(3)).expect("restore");
    assert_eq!(read(m, "shots", &["fps"]), entry(OmType::Int, "24"));
    let snaps = history(m, &fp(), "shots", &["fps"]).expect("history");
    let stamps: Vec<&str> = snaps.iter().map(|s| s.stamp.as_str()).collect();
    assert_eq!(stamps, ["20231114-221323", "20231114-221321"]);
    assert_eq!(
        (snaps[0].user.as_str(), snaps[0].raw.as_str()),
        ("bob", "25")
    );

    let err = restore(m, &fp(), "shots", &["fps"], "20000101-000000", "bob", at(4))
        .expect_err("no such snapshot");
    assert_eq!(err.kind(), Kind::NotFound);
    let err = restore(m, &fp(), "shots", &["fps"], "yesterday", "bob", at(4)).expect_err("bad");
    assert_eq!(err.kind(), Kind::BadRequest);
}

#[test]
fn a_type_change_moves_the_old_entry_to_the_trash() {
    let s = store();
    let m = &s.meta;
    write(m, "", &["status"], OmType::Int, "1", 0);
    write(m, "", &["status"], OmType::String, "\"done\"", 5);
    assert_eq!(read(m, "", &["status"]), entry(OmType::String, "\"done\""));
    assert_eq!(read(m, "", &[".trash", "status"]), entry(OmType::Int, "1"));
    assert_eq!(read(m, "", &[".trash"]), entry(OmType::Folder, ""));
    let snaps = history(m, &fp(), "", &["status"]).expect("history");
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].ty, snaps[0].raw.as_str()), (OmType::Int, "1"));

    // Another change replaces what the trash held under that name.
    write(m, "", &["status"], OmType::Bool, "true", 6);
    assert_eq!(
        read(m, "", &[".trash", "status"]),
        entry(OmType::String, "\"done\"")
    );
}

#[test]
fn groups_are_created_replaced_and_trashed_whole() {
    let s = store();
    let m = &s.meta;
    write(m, "a", &["render", "size", "width"], OmType::Int, "1920", 0);
    assert_eq!(read(m, "a", &["render"]), entry(OmType::Dict, ""));
    assert_eq!(read(m, "a", &["render", "size"]), entry(OmType::Dict, ""));
    write(m, "a", &["render", "size", "width"], OmType::Int, "1280", 1);
    // The history of a nested entry lives in its group.
    assert_eq!(
        read(
            m,
            "a",
            &[
                "render",
                "size",
                ".history",
                "width&20231114-221321",
                "value"
            ]
        ),
        entry(OmType::Int, "1920")
    );
    assert_eq!(
        history(m, &fp(), "a", &["render", "size", "width"])
            .expect("history")
            .len(),
        1
    );

    // A value where the group was: the group goes to the trash whole.
    write(m, "a", &["render"], OmType::Text, "\"flat\"", 2);
    assert_eq!(read(m, "a", &["render"]), entry(OmType::Text, "\"flat\""));
    assert_eq!(read(m, "a", &["render", "size", "width"]), None);
    assert_eq!(read(m, "a", &[".trash", "render"]), entry(OmType::Dict, ""));
    assert_eq!(
        read(m, "a", &[".trash", "render", "size", "width"]),
        entry(OmType::Int, "1280")
    );
    // Groups have no history.
    assert!(
        history(m, &fp(), "a", &["render"])
            .expect("history")
            .is_empty()
    );

    // A child where a value was: the value goes to history and trash.
    write(m, "a", &["render", "mode"], OmType::String, "\"fast\"", 3);
    assert_eq!(read(m, "a", &["render"]), entry(OmType::Dict, ""));
    assert_eq!(
        read(m, "a", &[".trash", "render"]),
        entry(OmType::Text, "\"flat\"")
    );
    assert_eq!(read(m, "a", &[".trash", "render", "size"]), None);
    assert_eq!(
        history(m, &fp(), "a", &["render"]).expect("history").len(),
        1
    );

    // An empty list group.
    write(m, "a", &["frames"], OmType::List, "", 4);
    assert_eq!(read(m, "a", &["frames"]), entry(OmType::List, ""));
}

#[test]
fn values_are_inherited_from_the_nearest_location() {
    let s = store();
    let m = &s.meta;
    write(m, "", &["fps"], OmType::Int, "24", 0);
    write(m, "show/seq", &["owner"], OmType::String, "\"eve\"", 0);
    let found = read_inherited(m, &fp(), "show/seq/shot", &["fps"])
        .expect("read")
        .expect("inherited from the root");
    assert_eq!((found.location.as_str(), found.raw.as_str()), ("", "24"));
    write(m, "show", &["fps"], OmType::Int, "25", 1);
    let found = read_inherited(m, &fp(), "show/seq/shot", &["fps"])
        .expect("read")
        .expect("inherited from show");
    assert_eq!(
        (found.location.as_str(), found.raw.as_str()),
        ("show", "25")
    );
    let own = read_inherited(m, &fp(), "show/seq", &["owner"])
        .expect("read")
        .expect("its own");
    assert_eq!(own.location, "show/seq");
    assert_eq!(
        read_inherited(m, &fp(), "show", &["owner"]).expect("read"),
        None
    );
    assert_eq!(read(m, "show/seq/shot", &["fps"]), None);
}

#[test]
fn listings_show_direct_children_without_history_or_trash() {
    let s = store();
    let m = &s.meta;
    write(m, "x", &["b"], OmType::Int, "1", 0);
    write(m, "x", &["b"], OmType::Int, "2", 1);
    write(m, "x", &["a", "inner"], OmType::Bool, "true", 0);
    write(m, "x", &["c"], OmType::Null, "", 0);
    let top = list_entries(m, &fp(), "x", &[]).expect("list");
    assert_eq!(
        top,
        [
            ("a".to_string(), OmType::Dict),
            ("b".to_string(), OmType::Int),
            ("c".to_string(), OmType::Null),
        ]
    );
    assert_eq!(
        list_entries(m, &fp(), "x", &["a"]).expect("list"),
        [("inner".to_string(), OmType::Bool)]
    );
    assert!(
        list_entries(m, &fp(), "nowhere", &[])
            .expect("list")
            .is_empty()
    );
    let err = list_entries(m, &fp(), "x", &["missing"]).expect_err("no group");
    assert_eq!(err.kind(), Kind::NotFound);
    let err = list_entries(m, &fp(), "x", &["b"]).expect_err("a value");
    assert_eq!(err.kind(), Kind::BadRequest);
}

#[test]
fn deletes_go_to_the_trash_or_away() {
    let s = store();
    let m = &s.meta;
    write(m, "", &["g", "x"], OmType::Int, "1", 0);
    write(m, "", &["v"], OmType::Int, "2", 0);
    assert!(delete_entry(m, &fp(), "", &["g"], false).expect("delete"));
    assert_eq!(read(m, "", &["g"]), None);
    assert_eq!(read(m, "", &["g", "x"]), None);
    assert_eq!(read(m, "", &[".trash", "g", "x"]), entry(OmType::Int, "1"));
    assert!(delete_entry(m, &fp(), "", &["v"], true).expect("delete"));
    assert_eq!(read(m, "", &["v"]), None);
    assert_eq!(read(m, "", &[".trash", "v"]), None);
    assert!(!delete_entry(m, &fp(), "", &["v"], true).expect("already gone"));
}

#[test]
fn bad_writes_are_refused_and_change_nothing() {
    let s = store();
    let m = &s.meta;
    let bad = |path: &[&str], ty: OmType, raw: &str| {
        write_entry(m, &fp(), "loc", path, ty, raw, "alice", at(0)).expect_err("refused")
    };
    let err = bad(&["x"], OmType::String, "not json");
    assert_eq!(err.kind(), Kind::BadRequest);
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert!(bad(&[], OmType::Int, "1").to_string().contains("empty"));
    assert!(
        bad(&[".history"], OmType::Int, "1")
            .to_string()
            .contains("OM's own")
    );
    assert!(bad(&["a/b"], OmType::Int, "1").to_string().contains("'/'"));
    assert!(
        bad(&["x"], OmType::Folder, "")
            .to_string()
            .contains("folder")
    );
    assert!(
        bad(&["x"], OmType::Dict, "{}")
            .to_string()
            .contains("raw must be")
    );
    let err = write_entry(m, &fp(), "a/../b", &["x"], OmType::Int, "1", "u", at(0))
        .expect_err("a bad location");
    assert!(err.to_string().contains("'.' or '..'"), "{err}");
    let err = write_entry(
        m,
        &fp(),
        "",
        &["x"],
        OmType::Int,
        "1",
        "u",
        UNIX_EPOCH - Duration::from_secs(1),
    )
    .expect_err("a time before 1970");
    assert_eq!(err.kind(), Kind::BadRequest);
    assert_eq!(key_count(m, &fp()), 0);
}

#[test]
fn entries_written_through_the_api_export_as_om_lays_them_out() {
    let s = store();
    let m = &s.meta;
    write(m, "shot", &["fps"], OmType::Int, "24", 0);
    write(m, "shot", &["fps"], OmType::Float, "23.976", 1);
    write(m, "shot", &["cam", "lens"], OmType::Int, "35", 1);
    write(m, "shot", &["cam", "lens"], OmType::Int, "50", 2);
    let out = tempfile::tempdir().expect("tmp");
    export_tree(m, &fp(), out.path(), false, &mut |_| Ok(())).expect("export");
    let read_file = |rel: &str| {
        std::fs::read_to_string(out.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    assert_eq!(read_file("shot/.meta/fps.float"), "23.976");
    assert_eq!(read_file("shot/.meta/.trash/fps.int"), "24");
    assert_eq!(
        read_file("shot/.meta/.history/fps&20231114-221321/value.int"),
        "24"
    );
    assert_eq!(
        read_file("shot/.meta/.history/fps&20231114-221321/user.string"),
        "\"alice\""
    );
    assert_eq!(
        read_file("shot/.meta/cam.dict/.history/lens&20231114-221322/value.int"),
        "35"
    );
    assert_eq!(read_file("shot/.meta/cam.dict/lens.int"), "50");

    // And that tree imports into another prefix with the same keys.
    let other = chorus_core::FullPrefix::parse("om/copy").expect("a prefix");
    import_tree(m, &other, out.path(), &mut |_| Ok(())).expect("import");
    assert_eq!(key_count(m, &other), key_count(m, &fp()));
    let again = tempfile::tempdir().expect("tmp");
    export_tree(m, &other, again.path(), false, &mut |_| Ok(())).expect("export");
    assert_same_meta(out.path(), again.path());
}
