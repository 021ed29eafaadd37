//! `chorus om`: Open Metadata `.meta` folders in and out of one full
//! prefix (see docs/om.md and the chorus-om crate).

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;

use chorus_om::{ExportReport, ImportReport, OmError, Phase, Progress, export_tree, import_tree};
use chorus_store::Metadata;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::{Cli, Failure, emit, parse_prefix, writable_prefix};

/// The full prefix `chorus om` uses when none is given.
const DEFAULT_PREFIX: &str = "om/default";

/// Trees up to this many entries show no progress line.
const QUIET_UP_TO: u64 = 1_000;

/// The Open Metadata commands.
#[derive(Subcommand, Debug)]
pub(crate) enum OmCommand {
    /// Import every .meta folder under PATH into one full prefix (files
    /// outside .meta folders are not imported); a bad tree imports nothing
    Import(ImportArgs),
    /// Write a full prefix's keys back under PATH as .meta folders, byte
    /// for byte; refuses to overwrite different files unless --force
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// The folder that holds the .meta folders (at any depth)
    path: PathBuf,
    /// The full prefix to import into
    #[arg(long, value_name = "PREFIX/SUB", default_value = DEFAULT_PREFIX)]
    into: String,
}

#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// The folder to write the .meta folders into (created if missing)
    path: PathBuf,
    /// The full prefix to export
    #[arg(long, value_name = "PREFIX/SUB", default_value = DEFAULT_PREFIX)]
    from: String,
    /// Overwrite .meta files whose content differs
    #[arg(long)]
    force: bool,
}

impl From<OmError> for Failure {
    fn from(e: OmError) -> Self {
        Failure::of_kind(e.kind(), e.to_string())
    }
}

pub(crate) fn run(cli: &Cli, command: &OmCommand) -> Result<(), Failure> {
    match command {
        OmCommand::Import(a) => import(cli, a),
        OmCommand::Export(a) => export(cli, a),
    }
}

fn import(cli: &Cli, a: &ImportArgs) -> Result<(), Failure> {
    let fp = writable_prefix(&a.into)?;
    let meta = Metadata::new(cli.open()?);
    let mut bar = ProgressLine::new();
    let outcome = import_tree(&meta, &fp, &a.path, &mut |p| {
        bar.show(p);
        Ok(())
    });
    bar.finish();
    let r: ImportReport = outcome?;
    emit(
        cli,
        json!({
            "path": a.path, "full_prefix": fp.to_string(), "locations": r.locations,
            "entries": r.entries, "bytes": r.bytes, "written": r.written,
            "unchanged": r.unchanged, "commits": r.commits,
        }),
        || {
            format!(
                "imported {} locations, {} entries ({} bytes) from {} into {fp}: {} keys written, {} unchanged",
                r.locations,
                r.entries,
                r.bytes,
                a.path.display(),
                r.written,
                r.unchanged
            )
        },
    );
    Ok(())
}

fn export(cli: &Cli, a: &ExportArgs) -> Result<(), Failure> {
    let fp = parse_prefix(&a.from)?;
    let meta = Metadata::new(cli.open()?);
    let mut bar = ProgressLine::new();
    let outcome = export_tree(&meta, &fp, &a.path, a.force, &mut |p| {
        bar.show(p);
        Ok(())
    });
    bar.finish();
    let r: ExportReport = outcome?;
    emit(
        cli,
        json!({
            "path": a.path, "full_prefix": fp.to_string(), "locations": r.locations,
            "entries": r.entries, "bytes": r.bytes, "written": r.written,
            "unchanged": r.unchanged,
        }),
        || {
            format!(
                "exported {} locations, {} entries ({} bytes) from {fp} into {}: {} files and folders written, {} unchanged",
                r.locations,
                r.entries,
                r.bytes,
                a.path.display(),
                r.written,
                r.unchanged
            )
        },
    );
    Ok(())
}

/// A one-line progress display on stderr: only when stderr is a terminal
/// and the work passes [`QUIET_UP_TO`] entries.
struct ProgressLine {
    enabled: bool,
    shown: bool,
}

impl ProgressLine {
    fn new() -> Self {
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, p: Progress) {
        let size = p.total.unwrap_or(p.done);
        if !self.enabled || size <= QUIET_UP_TO {
            return;
        }
        let verb = match p.phase {
            Phase::Scanning => "reading",
            Phase::Writing => "writing",
        };
        let line = match p.total {
            Some(total) => format!(
                "{verb} {}/{total} ({}%)",
                p.done,
                p.done.saturating_mul(100) / total.max(1)
            ),
            None => format!("{verb} {} entries", p.done),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line:<40}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Ends the line, if one was shown.
    fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}
