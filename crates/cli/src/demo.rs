//! `chorus demo`: several processes write one data directory at once, with
//! no server, and every write and every increment is accounted for.
//!
//! The demo writes into a fresh temporary directory, removed at the end,
//! unless `--dir` is given on the command line: never into $CHORUS_DIR,
//! which may be a served node's directory (its demo keys would replicate).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chorus_core::FullPrefix;
use chorus_store::{
    Error, GetOptions, Metadata, Options, PutOptions, PutValue, Read, Store, SyncMode,
};
use clap::Args;

use crate::{Cli, Failure};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Processes writing at once
    #[arg(long, default_value_t = 4)]
    processes: u32,
    /// Keys each process writes (plus as many counter increments)
    #[arg(long, default_value_t = 250)]
    commits: u64,
}

fn keys() -> Result<FullPrefix, Failure> {
    Ok(FullPrefix::parse("demo/keys")?)
}

fn counter() -> Result<FullPrefix, Failure> {
    Ok(FullPrefix::parse("demo/counter")?)
}

pub(crate) fn run(cli: &Cli, args: &DemoArgs) -> Result<(), Failure> {
    if args.processes == 0 || args.processes > 64 {
        return Err(Failure::usage("--processes must be between 1 and 64"));
    }
    if cli.dir_on_command_line {
        return run_in(cli, args, &cli.dir, false);
    }
    let dir = temporary_dir()?;
    let result = run_in(cli, args, &dir, true);
    let removed = std::fs::remove_dir_all(&dir);
    match (&result, removed) {
        (Ok(()), Ok(())) => println!("removed the temporary directory {}", dir.display()),
        (_, Err(e)) => eprintln!(
            "chorus: could not remove the temporary directory {}: {e}",
            dir.display()
        ),
        (Err(_), Ok(())) => {}
    }
    result
}

/// A new, empty directory under the system's temporary directory.
fn temporary_dir() -> Result<PathBuf, Failure> {
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "chorus-demo-{}-{nanos:x}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Failure::io(format!(
                    "could not create a temporary directory under {}: {e} (or give --dir)",
                    base.display()
                )));
            }
        }
    }
    Err(Failure::io(format!(
        "could not create a temporary directory under {} (or give --dir)",
        base.display()
    )))
}

fn run_in(cli: &Cli, args: &DemoArgs, dir: &Path, temporary: bool) -> Result<(), Failure> {
    let store = open_created(cli, dir)?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find the chorus binary: {e}")))?;
    let meta = Metadata::new(store.clone());
    let count_now = || -> Result<u64, Failure> {
        Ok(meta
            .get(&counter()?, b"hits", &GetOptions::default())?
            .map_or(0, |r| hits(&r)))
    };
    let before = store.snapshot()?;
    let base = count_now()?;
    println!(
        "{}data directory {} (node {}); starting {} processes, {} writes and {} counter increments each",
        if temporary { "temporary " } else { "" },
        dir.display(),
        store.node_id(),
        args.processes,
        args.commits,
        args.commits
    );
    let start = Instant::now();
    let mut children = Vec::new();
    for p in 0..args.processes {
        let child = Command::new(&exe)
            .arg("--dir")
            .arg(dir)
            .args(["--sync", sync_name(cli)])
            .args(["demo-worker", &format!("p{p}"), &args.commits.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::usage(format!("cannot start a worker process: {e}")))?;
        children.push(child);
    }
    let mut conflicts = 0u64;
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| Failure::usage(format!("worker process failed: {e}")))?;
        if !out.status.success() {
            return Err(Failure::usage(format!(
                "a worker process failed: {}",
                out.status
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        conflicts += text.trim().parse::<u64>().unwrap_or(0);
    }
    let elapsed = start.elapsed();
    let snap = store.snapshot()?;
    let hits = count_now()? - base;
    let commits = snap.seq() - before.seq();
    println!(
        "done in {:.2} s: {commits} commits ({:.0}/s, sync {}), counter +{hits} (expected {}), {conflicts} write conflicts retried",
        elapsed.as_secs_f64(),
        commits as f64 / elapsed.as_secs_f64().max(1e-9),
        sync_name(cli),
        u64::from(args.processes) * args.commits,
    );
    println!(
        "this process sees {} keys under demo/keys; a snapshot taken before the run still sees {}",
        snap.iter_prefix(&keys()?).count(),
        before.iter_prefix(&keys()?).count()
    );
    let fp = keys()?;
    let reads = 1_000_000u32;
    let t = Instant::now();
    let mut found = 0u32;
    for _ in 0..reads {
        found += u32::from(store.get(&fp, b"p0-0")?.is_some());
    }
    println!(
        "{reads} reads of one key from memory, each checking for new commits first: {:.0} ns per read",
        t.elapsed().as_nanos() as f64 / f64::from(reads)
    );
    if found != reads || hits != u64::from(args.processes) * args.commits {
        return Err(Failure::usage(
            "the demo lost an update: please report this",
        ));
    }
    let shown = exe
        .strip_prefix(std::env::current_dir().unwrap_or_default())
        .unwrap_or(&exe);
    if temporary {
        println!(
            "to keep the data for a look: {} demo --dir DIR",
            shown.display()
        );
    } else {
        let (chorus, dir) = (shown.display(), dir.display());
        println!("try: {chorus} --dir {dir} ls demo/keys | head; {chorus} --dir {dir} status");
    }
    Ok(())
}

/// One demo writer: `count` keys and `count` transactional increments.
pub(crate) fn worker(cli: &Cli, tag: &str, count: u64) -> Result<(), Failure> {
    let meta = Metadata::new(cli.open()?);
    let (fp, c) = (keys()?, counter()?);
    let mut conflicts = 0u64;
    for i in 0..count {
        let value = format!("written by {tag}").into_bytes();
        meta.put(
            &fp,
            format!("{tag}-{i}").as_bytes(),
            PutValue::Bytes(value),
            &PutOptions::default(),
        )?;
        loop {
            let mut tx = meta.begin()?;
            let n = tx.get(&c, b"hits")?.map_or(0, |r| hits(&r));
            tx.put(&c, b"hits", (n + 1).to_string().as_bytes(), None)?;
            match tx.commit() {
                Ok(_) => break,
                Err(Error::WriteConflict { .. }) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("{conflicts}");
    Ok(())
}

/// The counter in a read: the newest value, as decimal text.
fn hits(read: &Read) -> u64 {
    read.values
        .iter()
        .max()
        .and_then(|v| v.bytes())
        .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
        .unwrap_or(0)
}

fn sync_name(cli: &Cli) -> &'static str {
    match cli.options().map(|o| o.sync) {
        Ok(SyncMode::Batch) => "batch",
        Ok(SyncMode::Never) => "never",
        _ => "always",
    }
}

fn open_created(cli: &Cli, dir: &Path) -> Result<Store, Failure> {
    let options = Options {
        create: true,
        ..cli.options()?
    };
    Ok(Store::open(dir, options)?)
}
