//! `chorus doc`: the document store (JSON objects with `_id` and `_rev`).
//!
//! Every command prints JSON: a document, a list, or `{"ok": true, "_id",
//! "_rev"}` for an edit. Exit codes: 1 no such document or revision, 2 bad
//! input, 3 conflict (a revision that is not current, or an id that exists).

use clap::{Args, Subcommand};
use serde_json::Value;

use chorus_store::Metadata;
use chorus_store::docs::Docs;

use crate::{Cli, Failure, read_value};

/// The document commands.
#[derive(Subcommand, Debug)]
pub(crate) enum DocCommand {
    /// Create a document (an absent _id is generated); exit 3 if it exists
    Create(DocJson),
    /// Print the winning revision with _id and _rev (exit 1 if absent)
    Get(GetArgs),
    /// Update the revision named by _rev (exit 3 if it is not current)
    Update(UpdateArgs),
    /// Write on top of the current winner, or create
    Upsert(DocJson),
    /// Delete the current revision REV
    Delete(IdRev),
    /// The groups of revisions that collided, as a JSON array of arrays;
    /// with --limit, one page of the losing current revisions instead
    Conflicts(ConflictsArgs),
    /// Every live document, each once
    All(StoreOnly),
    /// Keep revision REV and delete every other current revision
    Resolve(IdRev),
}

#[derive(Args, Debug)]
pub(crate) struct StoreOnly {
    /// The store: NAME (kept under docs/NAME) or PREFIX/NAME
    store: String,
}

#[derive(Args, Debug)]
pub(crate) struct DocJson {
    /// The store: NAME (kept under docs/NAME) or PREFIX/NAME
    store: String,
    /// The document as JSON, `-` to read it from stdin, or `@FILE`
    #[arg(value_name = "JSON")]
    document: String,
}

#[derive(Args, Debug)]
pub(crate) struct UpdateArgs {
    #[command(flatten)]
    doc: DocJson,
    /// Accept a revision that is no longer current as a new branch (it
    /// then shows in `conflicts`) instead of refusing it
    #[arg(long)]
    keep_both: bool,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The store: NAME (kept under docs/NAME) or PREFIX/NAME
    store: String,
    /// The document id
    id: String,
    /// This revision instead of the winner (if its body is still kept)
    #[arg(long)]
    rev: Option<String>,
    /// Add `_conflicts`: the losing current revisions
    #[arg(long, conflicts_with = "rev")]
    conflicts: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ConflictsArgs {
    /// The store: NAME (kept under docs/NAME) or PREFIX/NAME
    store: String,
    /// The document id
    id: String,
    /// Print one page of at most N losing current revisions, greatest
    /// first, as {"_id", "_rev", "conflicts": [...], "next": REV or null}
    /// (1 to 10000)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Start after this revision: the `next` of the previous page
    #[arg(long, value_name = "REV", requires = "limit")]
    after: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct IdRev {
    /// The store: NAME (kept under docs/NAME) or PREFIX/NAME
    store: String,
    /// The document id
    id: String,
    /// A current revision, as `_rev` of a read
    rev: String,
}

fn docs(cli: &Cli, store: &str) -> Result<Docs, Failure> {
    Ok(Docs::open(&Metadata::new(cli.open()?), store)?)
}

fn parse_json(arg: &str) -> Result<Value, Failure> {
    let bytes = read_value(arg)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Failure::usage(format!(
            "the document is not valid JSON ({e}): pass an object like '{{\"_id\": \"alice\"}}', `-` for stdin, or @FILE"
        ))
    })
}

pub(crate) fn run(cli: &Cli, command: &DocCommand) -> Result<(), Failure> {
    let out = match command {
        DocCommand::Create(a) => {
            let doc = parse_json(&a.document)?;
            docs(cli, &a.store)?.create(doc)?.to_json()
        }
        DocCommand::Get(a) => {
            let d = docs(cli, &a.store)?;
            match (&a.rev, a.conflicts) {
                (Some(rev), _) => d.get_rev(&a.id, rev)?,
                (None, true) => d.get_with_conflicts(&a.id)?,
                (None, false) => d.get(&a.id)?,
            }
        }
        DocCommand::Update(a) => {
            let doc = parse_json(&a.doc.document)?;
            docs(cli, &a.doc.store)?.update(doc, a.keep_both)?.to_json()
        }
        DocCommand::Upsert(a) => {
            let doc = parse_json(&a.document)?;
            docs(cli, &a.store)?.upsert(doc)?.to_json()
        }
        DocCommand::Delete(a) => docs(cli, &a.store)?.delete(&a.id, &a.rev)?.to_json(),
        DocCommand::Resolve(a) => docs(cli, &a.store)?.resolve(&a.id, &a.rev)?.to_json(),
        DocCommand::Conflicts(ConflictsArgs {
            store,
            id,
            limit: Some(limit),
            after,
        }) => docs(cli, store)?
            .conflicts_page(id, *limit, after.as_deref())?
            .to_json(id),
        DocCommand::Conflicts(a) => {
            let groups = docs(cli, &a.store)?.conflicts(&a.id)?;
            Value::Array(
                groups
                    .iter()
                    .map(|g| Value::Array(g.iter().map(|r| Value::String(r.to_string())).collect()))
                    .collect(),
            )
        }
        DocCommand::All(a) => Value::Array(docs(cli, &a.store)?.all()?),
    };
    println!("{out}");
    Ok(())
}
