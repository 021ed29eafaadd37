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

/// The reducer commands.
#[derive(Subcommand, Debug)]
pub(crate) enum ReducerCommand {
    /// Store a Rhai script as the reducer of TYPE (replicated with the data)
    Set(SetArgs),
}

#[derive(Args, Debug)]
pub(crate) struct SetArgs {
    /// The type the script reduces
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The script file (`-` for stdin): `fn reduce(state, op)`, and
    /// optionally `fn init()`
    script: String,
}

pub(crate) fn reducer(cli: &Cli, command: &ReducerCommand) -> Result<(), Failure> {
    let ReducerCommand::Set(a) = command;
    let source = if a.script == "-" {
        read_value("-")?
    } else {
        std::fs::read(&a.script)
            .map_err(|e| Failure::usage(format!("cannot read the script {}: {e}", a.script)))?
    };
    let source = String::from_utf8(source)
        .map_err(|_| Failure::usage(format!("the script {} is not UTF-8 text", a.script)))?;
    let ops = Oplogs::new(&Metadata::new(cli.open()?));
    ops.set_script(&a.kind, &source)?;
    println!("{}", serde_json::json!({"ok": true, "type": a.kind}));
    Ok(())
}
