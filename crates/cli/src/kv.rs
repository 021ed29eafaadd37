//! The key-value commands, over the cluster-metadata API: values are
//! objects whose concurrent writes are kept as siblings.

use std::io::{IsTerminal, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chorus_core::FullPrefix;
use chorus_core::object::{Context, Value as ObjValue, context_from_string, context_to_string};
use chorus_node::json::{Viewer, read_json};
use chorus_store::{
    GetOptions, IterOptions, Match, Metadata, PutOptions, PutValue, Resolver, Scope,
};
use clap::Args;
use serde_json::{Value, json};

use crate::{Cli, Failure, emit, parse_prefix, read_value, writable_prefix};

/// How `get` settles siblings.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResolveArg {
    /// Keep the newest value (timestamp, then node id, then bytes)
    Lww,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// PREFIX/SUBPREFIX
    full_prefix: String,
    /// The key
    key: String,
    /// Settle siblings instead of printing them all
    #[arg(long, value_enum)]
    resolve: Option<ResolveArg>,
    /// With --resolve: write the resolved value back, so every reader finds one value
    #[arg(long)]
    allow_put: bool,
    /// Print this when the key is absent or deleted (exit 0 instead of 1)
    #[arg(long)]
    default: Option<String>,
    /// Print only the context string (to pass to put --context)
    #[arg(long, conflicts_with = "json")]
    context_only: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// PREFIX/SUBPREFIX
    full_prefix: String,
    /// The key
    key: String,
    /// The value: text, `-` (stdin) or `@path`
    value: String,
    /// The context of an earlier read: values written since stay as siblings
    #[arg(long)]
    context: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct DelArgs {
    /// PREFIX/SUBPREFIX
    full_prefix: String,
    /// The key
    key: String,
    /// The context of an earlier read: values written since stay as siblings
    #[arg(long)]
    context: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("how").required(true).args(["lww", "pick", "value"])))]
pub(crate) struct ResolveArgs {
    /// PREFIX/SUBPREFIX
    full_prefix: String,
    /// The key
    key: String,
    /// Keep the newest sibling
    #[arg(long)]
    lww: bool,
    /// Keep sibling N, numbered as `get` prints them (from 1)
    #[arg(long)]
    pick: Option<usize>,
    /// Replace the siblings by this value (text, `-` or `@path`)
    #[arg(long)]
    value: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    /// PREFIX/SUBPREFIX lists its keys; PREFIX lists its subprefixes; nothing lists every full prefix
    target: Option<String>,
    /// Only keys matching this glob (`*`, `?`, `\` escapes)
    #[arg(long = "match")]
    pattern: Option<String>,
    /// Also list deleted keys
    #[arg(long)]
    tombstones: bool,
    /// Also print each key's values
    #[arg(long, short)]
    long: bool,
}

#[derive(Args, Debug)]
pub(crate) struct HashArgs {
    /// PREFIX or PREFIX/SUBPREFIX
    target: String,
}

fn metadata(cli: &Cli) -> Result<Metadata, Failure> {
    Ok(Metadata::new(cli.open()?))
}

fn parse_context(text: &str) -> Result<Context, Failure> {
    context_from_string(text).map_err(|e| Failure::usage(e.to_string()))
}

/// A UTC time for people: `2026-11-22T02:15:01.123Z`.
fn utc(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

fn shown(v: &ObjValue) -> String {
    match v.bytes() {
        None => "<deleted>".into(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => format!("<{} bytes, binary; base64 {}>", b.len(), STANDARD.encode(b)),
        },
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| {
            if out.is_terminal() && !bytes.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            out.flush()
        })
        .map_err(|e| Failure::io(format!("could not write to stdout: {e}")))
}

pub(crate) fn get(cli: &Cli, a: &GetArgs) -> Result<(), Failure> {
    let fp = parse_prefix(&a.full_prefix)?;
    if a.allow_put && a.resolve.is_none() {
        return Err(Failure::usage(
            "--allow-put writes back a resolved value: add --resolve lww",
        ));
    }
    let opts = GetOptions {
        default: a.default.as_ref().map(|d| d.as_bytes().to_vec()),
        resolver: match a.resolve {
            Some(ResolveArg::Lww) => Resolver::Lww,
            None => Resolver::None,
        },
        allow_put: a.allow_put,
    };
    let read = metadata(cli)?
        .get(&fp, a.key.as_bytes(), &opts)?
        .ok_or_else(|| Failure::not_found(format!("{fp}/{} not found", a.key)))?;
    if cli.json {
        // On the directory: its owner sees token ids.
        println!("{}", read_json(&read, &fp, &Viewer::Admin));
        return Ok(());
    }
    if a.context_only {
        println!("{}", context_to_string(&read.context));
        return Ok(());
    }
    match read.values.as_slice() {
        [one] => match one.bytes() {
            Some(b) => write_stdout(b),
            None => Err(Failure::not_found(format!("{fp}/{} is deleted", a.key))),
        },
        siblings => {
            let n = siblings.len();
            let mut text = String::new();
            for (i, v) in siblings.iter().enumerate() {
                text.push_str(&format!(
                    "--- sibling {} of {n} (node {}, {})\n{}\n",
                    i + 1,
                    &v.node.to_string()[..8],
                    utc(v.timestamp.ms()),
                    shown(v)
                ));
            }
            text.push_str(&format!(
                "--- context {}\n(settle them: chorus resolve {fp} {} --lww | --pick N | --value V)\n",
                context_to_string(&read.context),
                a.key
            ));
            write_stdout(text.as_bytes())
        }
    }
}

pub(crate) fn put(cli: &Cli, a: &PutArgs) -> Result<(), Failure> {
    let fp = writable_prefix(&a.full_prefix)?;
    let context = a.context.as_deref().map(parse_context).transpose()?;
    let value = read_value(&a.value)?;
    let info = metadata(cli)?.put(
        &fp,
        a.key.as_bytes(),
        PutValue::Bytes(value),
        &PutOptions {
            context,
            ..Default::default()
        },
    )?;
    emit(
        cli,
        json!({"full_prefix": fp.to_string(), "key": a.key, "seq": info.seq}),
        String::new,
    );
    Ok(())
}

pub(crate) fn del(cli: &Cli, a: &DelArgs) -> Result<(), Failure> {
    let fp = writable_prefix(&a.full_prefix)?;
    let context = a.context.as_deref().map(parse_context).transpose()?;
    let meta = metadata(cli)?;
    if meta
        .get(&fp, a.key.as_bytes(), &GetOptions::default())?
        .is_none()
    {
        return Err(Failure::not_found(format!(
            "{fp}/{} not found; nothing deleted",
            a.key
        )));
    }
    let info = meta.delete(
        &fp,
        a.key.as_bytes(),
        &PutOptions {
            context,
            ..Default::default()
        },
    )?;
    emit(
        cli,
        json!({"full_prefix": fp.to_string(), "key": a.key, "deleted": true, "seq": info.seq}),
        String::new,
    );
    Ok(())
}

pub(crate) fn resolve(cli: &Cli, a: &ResolveArgs) -> Result<(), Failure> {
    let fp = writable_prefix(&a.full_prefix)?;
    let meta = metadata(cli)?;
    let read = meta
        .get(&fp, a.key.as_bytes(), &GetOptions::default())?
        .ok_or_else(|| Failure::not_found(format!("{fp}/{} not found", a.key)))?;
    let bytes: Option<Vec<u8>> = if a.lww {
        let object = meta
            .object(&fp, a.key.as_bytes())?
            .ok_or_else(|| Failure::not_found(format!("{fp}/{} not found", a.key)))?;
        object
            .lww_value()
            .and_then(|v| v.bytes())
            .map(<[u8]>::to_vec)
    } else if let Some(n) = a.pick {
        let v = n
            .checked_sub(1)
            .and_then(|i| read.values.get(i))
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--pick {n}: the key has {} values, numbered from 1",
                    read.values.len()
                ))
            })?;
        v.bytes().map(<[u8]>::to_vec)
    } else {
        Some(read_value(a.value.as_deref().unwrap_or_default())?)
    };
    let value = match bytes {
        Some(b) => PutValue::Bytes(b),
        None => PutValue::Tombstone,
    };
    let info = meta.put(
        &fp,
        a.key.as_bytes(),
        value,
        &PutOptions {
            context: Some(read.context),
            ..Default::default()
        },
    )?;
    emit(
        cli,
        json!({"full_prefix": fp.to_string(), "key": a.key, "resolved": read.values.len(), "seq": info.seq}),
        || {
            format!(
                "{} values of {fp}/{} replaced by one",
                read.values.len(),
                a.key
            )
        },
    );
    Ok(())
}

pub(crate) fn ls(cli: &Cli, a: &LsArgs) -> Result<(), Failure> {
    let meta = metadata(cli)?;
    let snap = meta.store().snapshot()?;
    let Some(target) = a.target.as_deref() else {
        let prefixes: Vec<(String, usize)> = snap
            .prefixes()
            .map(|fp| (fp.to_string(), snap.len_in(fp)))
            .collect();
        let list: Vec<Value> = prefixes
            .iter()
            .map(|(p, n)| json!({"full_prefix": p, "keys": n}))
            .collect();
        emit(cli, json!({"prefixes": list}), || {
            prefixes
                .iter()
                .map(|(p, n)| format!("{p}\t{n} keys"))
                .collect::<Vec<_>>()
                .join("\n")
        });
        return Ok(());
    };
    if !target.contains('/') {
        let subs: Vec<(String, usize)> = snap
            .prefixes()
            .filter(|fp| fp.prefix() == target)
            .map(|fp| (fp.subprefix().to_string(), snap.len_in(fp)))
            .collect();
        let list: Vec<Value> = subs
            .iter()
            .map(|(s, n)| json!({"subprefix": s, "keys": n}))
            .collect();
        emit(cli, json!({"prefix": target, "subprefixes": list}), || {
            subs.iter()
                .map(|(s, n)| format!("{s}\t{n} keys"))
                .collect::<Vec<_>>()
                .join("\n")
        });
        return Ok(());
    }
    let fp: FullPrefix = parse_prefix(target)?;
    let opts = IterOptions {
        matching: a.pattern.clone().map_or(Match::All, Match::Glob),
        tombstones: a.tombstones,
        ..IterOptions::default()
    };
    let mut items = meta.to_list(&Scope::FullPrefix(fp.clone()), &opts)?;
    // The index keeps keys in hash order; people read them sorted.
    items.sort_by(|x, y| x.key.cmp(&y.key));
    let keys: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut o = read_json(&i.read, &fp, &Viewer::Admin);
            o["key"] = json!(String::from_utf8_lossy(&i.key));
            o
        })
        .collect();
    emit(
        cli,
        json!({"full_prefix": fp.to_string(), "keys": keys}),
        || {
            items
                .iter()
                .map(|i| {
                    let name = String::from_utf8_lossy(&i.key);
                    if !a.long {
                        return name.into_owned();
                    }
                    let values: Vec<String> = i.read.values.iter().map(shown).collect();
                    format!("{name}\t{}", values.join(" | "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(())
}

pub(crate) fn hash(cli: &Cli, a: &HashArgs) -> Result<(), Failure> {
    let meta = metadata(cli)?;
    let digest = if a.target.contains('/') {
        meta.prefix_hash(&parse_prefix(&a.target)?)?
    } else {
        if a.target.is_empty() {
            return Err(Failure::usage("give a PREFIX or PREFIX/SUBPREFIX"));
        }
        if a.target == chorus_node::auth::AUTH_PREFIX {
            return Err(Failure::usage(format!(
                "{} holds users, sessions and the cluster key: use `chorus user`, `chorus session` and `chorus token`",
                a.target
            )));
        }
        meta.prefix_hash_all(&a.target)?
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    emit(cli, json!({"target": a.target, "hash": hex}), || {
        hex.clone()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_795_310_530_300), "2026-11-22T01:22:10.300Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
