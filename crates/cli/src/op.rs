//! `chorus op`: operation logs (the value at a path is the reduction of
//! its log of typed operations).

use clap::{Args, Subcommand};
use serde_json::Value;

use chorus_store::Metadata;
use chorus_store::oplog::Oplogs;

use crate::{Cli, Failure, read_value, writable_prefix};

/// The operation-log commands.
#[derive(Subcommand, Debug)]
pub(crate) enum OpCommand {
    /// Push an operation; prints the value after it
    Push(PushArgs),
    /// Print the value at PATH (null if nothing was pushed)
    Get(PathArgs),
    /// Print the log at PATH: type, checkpoint, operations, late operations
    Log(PathArgs),
}

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// PREFIX/SUBPREFIX the log lives in
    full_prefix: String,
    /// The path (a key)
    path: String,
    /// The type: counter, max, min, set, list, json-merge, register
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The payload as JSON, `-` for stdin, or @FILE
    payload: String,
}

#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    /// PREFIX/SUBPREFIX the log lives in
    full_prefix: String,
    /// The path (a key)
    path: String,
}

pub(crate) fn run(cli: &Cli, command: &OpCommand) -> Result<(), Failure> {
    let ops = Oplogs::new(&Metadata::new(cli.open()?));
    let out = match command {
        OpCommand::Push(a) => {
            let fp = writable_prefix(&a.full_prefix)?;
            let bytes = read_value(&a.payload)?;
            let payload: Value = serde_json::from_slice(&bytes).map_err(|e| {
                Failure::usage(format!(
                    "the payload is not valid JSON ({e}): pass a JSON value like 1, '\"text\"' or '{{\"add\": 3}}'"
                ))
            })?;
            ops.push(&fp, &a.path, &a.kind, payload)?
        }
        OpCommand::Get(a) => ops.get(&writable_prefix(&a.full_prefix)?, &a.path)?,
        OpCommand::Log(a) => ops
            .log(&writable_prefix(&a.full_prefix)?, &a.path)?
            .to_json(),
    };
    println!("{out}");
    Ok(())
}
