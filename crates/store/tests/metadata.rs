//! The cluster-metadata API: siblings across processes, resolvers and
//! allow_put, tombstones, iteration, prefix hashes, transactions, bad input.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};

use chorus_core::FullPrefix;
use chorus_core::object::context_from_string;
use chorus_store::{
    Error, GetOptions, IterOptions, Match, Metadata, PutOptions, PutValue, Resolver, Scope,
};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-store-worker");

mod common;
use common::meta;

fn fp() -> FullPrefix {
    FullPrefix::parse("test/keys").expect("valid")
}

fn put(m: &Metadata, key: &str, value: &str) {
    m.put(
        &fp(),
        key.as_bytes(),
        PutValue::Bytes(value.into()),
        &PutOptions::default(),
    )
    .expect("put");
}

fn texts(read: &chorus_store::Read) -> Vec<String> {
    let mut t: Vec<String> = read
        .values
        .iter()
        .map(|v| {
            v.bytes().map_or("<deleted>".into(), |b| {
                String::from_utf8_lossy(b).into_owned()
            })
        })
        .collect();
    t.sort();
    t
}

fn worker(args: &[&str]) -> std::process::Child {
    Command::new(WORKER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    line.trim().to_string()
}

#[test]
fn two_processes_writing_with_the_context_they_read_leave_two_siblings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    put(&m, "k", "original");
    let mut a = worker(&["meta-put-after-read", d, "k", "from-a"]);
    let mut b = worker(&["meta-put-after-read", d, "k", "from-b"]);
    assert_eq!(first_line(&mut a), "read");
    assert_eq!(first_line(&mut b), "read");
    for w in [&mut a, &mut b] {
        writeln!(w.stdin.as_mut().expect("stdin"), "go").expect("tell");
    }
    for w in [a, b] {
        let out = w.wait_with_output().expect("wait");
        assert!(out.status.success());
    }
    let read = m
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(
        texts(&read),
        ["from-a", "from-b"],
        "both kept, the original superseded"
    );
    let mut other = worker(&["meta-values", d, "k"]);
    assert_eq!(
        first_line(&mut other),
        "values 2",
        "another process sees both"
    );
    other.wait().expect("wait");
    // A put with a context that covers both leaves one value.
    m.put(
        &fp(),
        b"k",
        PutValue::Bytes(b"merged".to_vec()),
        &PutOptions {
            context: Some(read.context),
            ..Default::default()
        },
    )
    .expect("put");
    let read = m
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["merged"]);
}

#[test]
fn resolving_with_allow_put_writes_one_value_that_other_processes_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let empty = PutOptions {
        context: Some(Vec::new()),
        ..Default::default()
    };
    for v in ["one", "two", "three"] {
        m.put(&fp(), b"k", PutValue::Bytes(v.into()), &empty)
            .expect("put a sibling");
    }
    let lww = GetOptions {
        resolver: Resolver::Lww,
        ..GetOptions::default()
    };
    let read = m.get(&fp(), b"k", &lww).expect("get").expect("present");
    assert_eq!(texts(&read), ["three"], "the newest wins");
    let mut other = worker(&["meta-values", d, "k"]);
    assert_eq!(
        first_line(&mut other),
        "values 3",
        "without allow_put nothing is written"
    );
    other.wait().expect("wait");
    let read = m
        .get(
            &fp(),
            b"k",
            &GetOptions {
                allow_put: true,
                ..lww
            },
        )
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["three"]);
    let mut other = worker(&["meta-values", d, "k"]);
    assert_eq!(
        first_line(&mut other),
        "values 1",
        "the resolution is in the log"
    );
    other.wait().expect("wait");
    // A function resolver.
    for v in ["a", "b"] {
        m.put(&fp(), b"f", PutValue::Bytes(v.into()), &empty)
            .expect("put");
    }
    let join = Resolver::Function(std::sync::Arc::new(
        |vs: &[chorus_core::object::Value]| {
            let mut parts: Vec<&[u8]> = vs.iter().filter_map(|v| v.bytes()).collect();
            parts.sort();
            Some(parts.join(&b'+'))
        },
    ));
    let read = m
        .get(
            &fp(),
            b"f",
            &GetOptions {
                resolver: join,
                allow_put: true,
                default: None,
            },
        )
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["a+b"]);
    let stored = m
        .get(&fp(), b"f", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&stored), ["a+b"]);
}

#[test]
fn put_with_a_function_resolves_on_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let empty = PutOptions {
        context: Some(Vec::new()),
        ..Default::default()
    };
    for v in ["3", "4"] {
        m.put(&fp(), b"n", PutValue::Bytes(v.into()), &empty)
            .expect("put");
    }
    let sum = PutValue::Function(Box::new(|siblings| {
        let total: u64 = siblings
            .iter()
            .filter_map(|v| v.bytes())
            .filter_map(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            .sum();
        Ok(Some(total.to_string().into_bytes()))
    }));
    m.put(&fp(), b"n", sum, &PutOptions::default())
        .expect("put");
    let read = m
        .get(&fp(), b"n", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["7"]);
}

#[test]
fn tombstones_hide_keys_from_get_and_iteration_unless_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    put(&m, "live", "1");
    put(&m, "dead", "2");
    m.delete(&fp(), b"dead", &PutOptions::default())
        .expect("delete");
    assert_eq!(
        m.get(&fp(), b"dead", &GetOptions::default()).expect("get"),
        None
    );
    let with_default = GetOptions {
        default: Some(b"fallback".to_vec()),
        ..GetOptions::default()
    };
    let read = m
        .get(&fp(), b"dead", &with_default)
        .expect("get")
        .expect("the default");
    assert_eq!(texts(&read), ["fallback"]);
    let keys = |opts: &IterOptions| -> Vec<String> {
        let mut k: Vec<String> = m
            .to_list(&Scope::FullPrefix(fp()), opts)
            .expect("iter")
            .into_iter()
            .map(|i| String::from_utf8_lossy(&i.key).into_owned())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&IterOptions::default()), ["live"]);
    let all = IterOptions {
        tombstones: true,
        ..IterOptions::default()
    };
    assert_eq!(keys(&all), ["dead", "live"]);
    let items = m
        .to_list(
            &Scope::FullPrefix(fp()),
            &IterOptions {
                default: Some(b"gone".to_vec()),
                ..all
            },
        )
        .expect("iter");
    let dead = items
        .iter()
        .find(|i| i.key == b"dead")
        .expect("dead listed");
    assert_eq!(texts(&dead.read), ["gone"]);
}

#[test]
fn iteration_scopes_and_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let other = FullPrefix::parse("test/other").expect("valid");
    let elsewhere = FullPrefix::parse("else/where").expect("valid");
    for k in ["a1", "a2", "b1", "notes.txt"] {
        put(&m, k, "v");
    }
    for p in [&other, &elsewhere] {
        m.put(
            p,
            b"x",
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
        .expect("put");
    }
    let count = |scope: Scope, matching: Match| {
        m.to_list(
            &scope,
            &IterOptions {
                matching,
                ..IterOptions::default()
            },
        )
        .expect("iter")
        .len()
    };
    assert_eq!(count(Scope::FullPrefix(fp()), Match::All), 4);
    assert_eq!(
        count(Scope::FullPrefix(fp()), Match::Exact(b"a1".to_vec())),
        1
    );
    assert_eq!(
        count(Scope::FullPrefix(fp()), Match::Prefix(b"a".to_vec())),
        2
    );
    assert_eq!(
        count(Scope::FullPrefix(fp()), Match::Glob("*.txt".into())),
        1
    );
    assert_eq!(count(Scope::FullPrefix(fp()), Match::Glob("?1".into())), 2);
    assert_eq!(count(Scope::Prefix("test".into()), Match::All), 5);
    assert_eq!(count(Scope::All, Match::All), 6);
    let total = m
        .fold(&Scope::All, &IterOptions::default(), 0usize, |n, item| {
            n + item.read.values.len()
        })
        .expect("fold");
    assert_eq!(total, 6);
}

#[test]
fn iteration_while_another_process_inserts_and_deletes_visits_each_key_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let mut churn = worker(&["meta-churn", d, "3000"]);
    let mut rounds = 0;
    loop {
        let items = m
            .to_list(
                &Scope::FullPrefix(fp()),
                &IterOptions {
                    tombstones: true,
                    ..IterOptions::default()
                },
            )
            .expect("iterate while another process writes");
        let mut keys: Vec<&[u8]> = items.iter().map(|i| i.key.as_slice()).collect();
        let before = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), before, "a key visited twice");
        rounds += 1;
        if churn.try_wait().expect("poll").is_some() {
            break;
        }
    }
    assert!(rounds > 1, "iterated {rounds} times during the churn");
    assert!(churn.wait().expect("wait").success());
}

#[test]
fn prefix_hashes_through_the_metadata_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let before = m.prefix_hash(&fp()).expect("hash");
    put(&m, "k", "v");
    let after = m.prefix_hash(&fp()).expect("hash");
    assert_ne!(before, after);
    assert_ne!(
        m.prefix_hash_all("test").expect("hash"),
        m.prefix_hash_all("none").expect("hash")
    );
}

#[test]
fn transactions_conflict_when_a_read_key_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    put(&m, "balance", "10");
    let mut tx = m.begin().expect("begin");
    let read = tx.get(&fp(), b"balance").expect("get").expect("present");
    assert_eq!(texts(&read), ["10"]);
    tx.put(&fp(), b"balance", b"11", None).expect("put");
    tx.put(&fp(), b"audit", b"+1", None).expect("put");
    put(&m, "balance", "20");
    let err = tx.commit().expect_err("conflict");
    assert!(
        matches!(&err, Error::WriteConflict { keys } if keys.len() == 1),
        "{err}"
    );
    assert_eq!(
        m.get(&fp(), b"audit", &GetOptions::default()).expect("get"),
        None,
        "nothing written"
    );
    let mut tx = m.begin().expect("begin");
    tx.get(&fp(), b"balance").expect("get");
    tx.put(&fp(), b"balance", b"21", None).expect("put");
    tx.delete(&fp(), b"audit", None).expect("delete");
    tx.commit().expect("commit");
    let read = m
        .get(&fp(), b"balance", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["21"]);
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let seq = || m.store().snapshot().expect("snapshot").seq();
    let start = seq();
    let reserved = FullPrefix::parse("$cluster/members").expect("valid name");
    let e = m
        .put(
            &reserved,
            b"k",
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
        .expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = m
        .put(
            &fp(),
            &[b'k'; 5000],
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
        .expect_err("oversize key");
    assert!(e.to_string().contains("limit"), "{e}");
    assert!(FullPrefix::parse("/x").is_err(), "empty prefix");
    assert!(context_from_string("not a context").is_err());
    assert_eq!(seq(), start, "nothing was written");
    m.put_reserved(
        &reserved,
        b"k",
        PutValue::Bytes(b"v".to_vec()),
        &PutOptions::default(),
    )
    .expect("Chorus's own services may write reserved names");
}

#[test]
fn writing_back_with_the_context_an_allow_put_read_returned_leaves_one_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let empty = PutOptions {
        context: Some(Vec::new()),
        ..Default::default()
    };
    for v in ["a", "b"] {
        m.put(&fp(), b"k", PutValue::Bytes(v.into()), &empty)
            .expect("put a sibling");
    }
    let lww = GetOptions {
        resolver: Resolver::Lww,
        allow_put: true,
        ..GetOptions::default()
    };
    let read = m.get(&fp(), b"k", &lww).expect("get").expect("present");
    let stored = m
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(
        read.context, stored.context,
        "the read returns the context of what it stored"
    );
    assert_eq!(
        read.values, stored.values,
        "and its value, with the commit's timestamp"
    );
    m.put(
        &fp(),
        b"k",
        PutValue::Bytes(b"next".to_vec()),
        &PutOptions {
            context: Some(read.context),
            ..Default::default()
        },
    )
    .expect("put");
    let after = m
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&after), ["next"]);
}

#[test]
fn merging_a_peers_objects_keeps_concurrent_values_as_siblings_and_ignores_older_ones() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (a, b) = (meta(a_dir.path()), meta(b_dir.path()));
    put(&a, "k", "from a");
    put(&b, "k", "from b");
    put(&b, "only-b", "x");
    let objects =
        |m: &Metadata, keys: &[&str]| -> Vec<(FullPrefix, Vec<u8>, chorus_core::object::Object)> {
            keys.iter()
                .map(|k| {
                    let o = m
                        .object(&fp(), k.as_bytes())
                        .expect("read")
                        .expect("present");
                    (fp(), k.as_bytes().to_vec(), o)
                })
                .collect()
        };
    let from_b = objects(&b, &["k", "only-b"]);
    let peer = chorus_store::Origin::Peer([7; 16]);
    assert_eq!(a.merge(peer, from_b.clone()).expect("merge"), 2);
    let read = a
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(
        texts(&read),
        ["from a", "from b"],
        "concurrent writes are both kept"
    );
    // Merging the same objects again, or an older one, changes nothing.
    assert_eq!(a.merge(peer, from_b).expect("merge"), 0);
    // A key listed twice, with two objects concurrent with each other and
    // both new here, gets both: the second merges into the first, not into
    // what the store held.
    let c_dir = tempfile::tempdir().expect("tmp");
    let c = meta(c_dir.path());
    put(&c, "k", "from c");
    let mut twice = objects(&c, &["k"]);
    put(&b, "k", "b again");
    twice.extend(objects(&b, &["k"]));
    assert_eq!(a.merge(peer, twice).expect("merge"), 1);
    let read = a
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["b again", "from a", "from c"]);
    // Replication carries reserved prefixes too.
    let reserved = FullPrefix::parse("$cluster/members").expect("valid");
    b.put_reserved(
        &reserved,
        b"n1",
        PutValue::Bytes(b"up".to_vec()),
        &PutOptions::default(),
    )
    .expect("put");
    let member = b.object(&reserved, b"n1").expect("read").expect("present");
    assert_eq!(
        a.merge(peer, vec![(reserved.clone(), b"n1".to_vec(), member)])
            .expect("merge"),
        1
    );
    assert!(a.object(&reserved, b"n1").expect("read").is_some());
}

#[test]
fn a_stamped_handle_records_its_meta_on_every_value_it_writes() {
    use chorus_core::object::Meta;
    let dir = tempfile::tempdir().expect("tempdir");
    let m = meta(dir.path());
    let stamp = Meta {
        token: Some("tok-1".into()),
        priority: 3,
        window_ms: 500,
    };
    let s = m.stamped(stamp.clone());
    s.put(
        &fp(),
        b"k",
        PutValue::Bytes(b"v".to_vec()),
        &PutOptions::default(),
    )
    .expect("put");
    let read = m.get(&fp(), b"k", &GetOptions::default()).expect("get");
    let read = read.expect("present");
    assert_eq!(read.values[0].meta(), &stamp);
    // An unstamped write records nothing.
    put(&m, "plain", "v");
    let plain = m.get(&fp(), b"plain", &GetOptions::default()).expect("get");
    assert!(plain.expect("present").values[0].meta().is_empty());
    // Deletes, documents and operation logs through the handle record it.
    s.delete(&fp(), b"k", &PutOptions::default())
        .expect("delete");
    let obj = m.object(&fp(), b"k").expect("read").expect("present");
    assert_eq!(obj.values()[0].meta(), &stamp);
    let docs = chorus_store::docs::Docs::open(&s, "users").expect("docs");
    docs.create(serde_json::json!({"_id": "alice"}))
        .expect("create");
    let dfp = FullPrefix::parse("docs/users").expect("valid");
    // The document's first revision is its own record, `alice\0<N>-<hash>`.
    let record = s
        .store()
        .snapshot()
        .expect("snapshot")
        .group(&dfp, b"alice")
        .map(|(k, _)| k.as_bytes().to_vec())
        .next()
        .expect("a revision record");
    let obj = m.object(&dfp, &record).expect("read").expect("present");
    assert_eq!(obj.values()[0].meta(), &stamp);
    let ops = chorus_store::oplog::Oplogs::new(&m).stamped(stamp.clone());
    let ofp = FullPrefix::parse("ops/counts").expect("valid");
    ops.push(&ofp, "n", "counter", serde_json::json!(1))
        .expect("push");
    let obj = m.object(&ofp, b"n").expect("read").expect("present");
    assert_eq!(obj.values()[0].meta(), &stamp);
    // A merge elsewhere keeps the meta the value came with.
    let other = tempfile::tempdir().expect("tempdir");
    let m2 = meta(other.path());
    let obj = m.object(&fp(), b"k").expect("read").expect("present");
    m2.merge(
        chorus_store::Origin::Peer(*m.store().node_id().as_bytes()),
        vec![(fp(), b"k".to_vec(), obj)],
    )
    .expect("merge");
    let merged = m2.object(&fp(), b"k").expect("read").expect("present");
    assert_eq!(merged.values()[0].meta(), &stamp);
}

#[test]
fn put_all_commits_each_write_alone_with_one_sync_and_refuses_reserved_names() {
    use chorus_core::object::Meta;
    use chorus_store::BatchPut;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = chorus_store::Store::open(
        dir.path(),
        chorus_store::Options {
            create: true,
            sync: chorus_store::SyncMode::Batch,
            ..chorus_store::Options::default()
        },
    )
    .expect("open");
    let m = Metadata::new(store);
    put(&m, "b", "old");
    let before = m.store().write_stats();
    let write = |fp: FullPrefix, key: &str, value: PutValue, meta: Meta| BatchPut {
        full_prefix: fp,
        key: key.as_bytes().to_vec(),
        value,
        options: PutOptions::default(),
        meta,
    };
    let reserved = FullPrefix::parse("$auth/users").expect("valid");
    let token = Meta {
        token: Some("t1".into()),
        ..Meta::default()
    };
    let out = m.put_all(vec![
        write(fp(), "a", PutValue::Bytes(b"1".to_vec()), Meta::default()),
        write(
            reserved,
            "x",
            PutValue::Bytes(b"no".to_vec()),
            Meta::default(),
        ),
        write(fp(), "b", PutValue::Tombstone, token.clone()),
        write(fp(), "c", PutValue::Bytes(b"3".to_vec()), token.clone()),
    ]);
    assert_eq!(out.len(), 4);
    assert!(matches!(out[1], Err(Error::InvalidInput(_))));
    let seqs: Vec<u64> = [&out[0], &out[2], &out[3]]
        .iter()
        .map(|o| o.as_ref().expect("committed").seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{seqs:?}: one commit each, in order"
    );
    let after = m.store().write_stats();
    assert_eq!(after.commits - before.commits, 3);
    assert_eq!(after.syncs - before.syncs, 1, "one sync for the batch");
    let get = |k: &str| {
        m.get(&fp(), k.as_bytes(), &GetOptions::default())
            .expect("get")
    };
    assert!(get("b").is_none(), "deleted");
    let c = get("c").expect("present");
    assert_eq!(c.values[0].meta(), &token);
    assert!(get("a").expect("present").values[0].meta().is_empty());
    let reserved = FullPrefix::parse("$auth/users").expect("valid");
    assert!(m.object(&reserved, b"x").expect("read").is_none());
}

#[test]
fn a_read_from_memory_alone_defers_to_the_log_once_another_handle_commits() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = meta(dir.path());
    let b = meta(dir.path());
    let value = |m: &Metadata| {
        m.get_in_memory(&fp(), b"k")
            .map(|r| r.expect("read").map(|read| texts(&read)))
    };
    assert_eq!(
        value(&a),
        Some(None),
        "absent, and nothing to read from the log"
    );
    put(&a, "k", "1");
    assert_eq!(value(&a), Some(Some(vec!["1".to_string()])));
    put(&b, "k", "2");
    assert_eq!(
        value(&a),
        None,
        "b's commit must be read from the log first"
    );
    let read = a
        .get(&fp(), b"k", &GetOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(texts(&read), ["2"]);
    assert_eq!(value(&a), Some(Some(vec!["2".to_string()])));
    a.delete(&fp(), b"k", &PutOptions::default())
        .expect("delete");
    assert_eq!(
        value(&a),
        Some(None),
        "deleted reads as absent, as get does"
    );
}
