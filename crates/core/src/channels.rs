//! Channels: which nodes serve which full prefixes (GiG.fs's table of
//! "the different nodes for each root path", shared/seeds/004).
//!
//! A channel is a named set of full-prefix patterns and the nodes that
//! serve them. The rules, all pure:
//! - a pattern is `PREFIX/SUBPREFIX` (that full prefix) or `PREFIX/STEM*`
//!   (every subprefix of PREFIX starting with STEM; `render/*` is all of
//!   `render`); PREFIX is a plain name, never reserved (`$`);
//! - no two patterns of the table overlap, so a full prefix belongs to at
//!   most one channel;
//! - a full prefix in no channel, and every reserved one (`$cluster`,
//!   `$auth`, ...), is served by every node;
//! - a channel always has at least one node, and only members of the
//!   cluster are named.
//!
//! Every change is a function from a table to a new table or an error
//! that says what was wrong; a refused change leaves the table as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::names::FullPrefix;
use crate::node::NodeId;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 64;
/// Most patterns one channel may hold.
pub const MAX_PATTERNS: usize = 256;
/// Most channels a table may hold.
pub const MAX_CHANNELS: usize = 4_096;

/// Why a change to the table was refused (the table is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A wrong name, pattern or argument.
    #[error("{0}")]
    Invalid(String),
    /// No such channel, or the node does not serve it.
    #[error("{0}")]
    NotFound(String),
    /// The change collides with the table (an existing name, an overlap,
    /// a channel left with no node).
    #[error("{0}")]
    Conflict(String),
}

/// Which subprefixes of a pattern's prefix it covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Sub {
    /// Exactly this subprefix.
    Exact(String),
    /// Every subprefix starting with this stem (empty: all).
    Stem(String),
}

/// One full-prefix pattern: `PREFIX/SUBPREFIX` or `PREFIX/STEM*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern {
    prefix: String,
    sub: Sub,
}

impl Pattern {
    /// Parses a pattern, refusing reserved and malformed ones.
    pub fn parse(text: &str) -> Result<Pattern, ChannelError> {
        let usage =
            "write it as PREFIX/SUBPREFIX or PREFIX/STEM* (for example render/* or assets/shot*)";
        let Some((prefix, sub)) = text.split_once('/') else {
            return Err(ChannelError::Invalid(format!(
                "the pattern {text:?} has no '/': {usage}"
            )));
        };
        if prefix.contains('*') {
            return Err(ChannelError::Invalid(format!(
                "the pattern {text:?} has a '*' in its prefix: only the subprefix may end with '*'; {usage}"
            )));
        }
        let (sub, stem) = match sub.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (sub, false),
        };
        if sub.contains('*') {
            return Err(ChannelError::Invalid(format!(
                "the pattern {text:?} has a '*' before its end: {usage}"
            )));
        }
        // The prefix, and the subprefix or stem, follow the names' rules
        // (an empty stem is allowed: `render/*`).
        let checked = FullPrefix::new(prefix, if sub.is_empty() { "x" } else { sub })
            .map_err(|e| ChannelError::Invalid(format!("the pattern {text:?}: {e}")))?;
        if !stem && sub.is_empty() {
            return Err(ChannelError::Invalid(format!(
                "the pattern {text:?} has an empty subprefix: {usage}"
            )));
        }
        if checked.is_reserved() || prefix.starts_with('$') || sub.starts_with('$') {
            return Err(ChannelError::Invalid(format!(
                "the pattern {text:?} names Chorus's own data ('$' names), which every node serves: pick a prefix without '$'"
            )));
        }
        Ok(Pattern {
            prefix: prefix.to_string(),
            sub: if stem {
                Sub::Stem(sub.to_string())
            } else {
                Sub::Exact(sub.to_string())
            },
        })
    }

    /// True when the pattern covers `fp`.
    pub fn covers(&self, fp: &FullPrefix) -> bool {
        fp.prefix() == self.prefix
            && match &self.sub {
                Sub::Exact(s) => fp.subprefix() == s,
                Sub::Stem(s) => fp.subprefix().starts_with(s.as_str()),
            }
    }

    /// True when some full prefix is covered by both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        if self.prefix != other.prefix {
            return false;
        }
        match (&self.sub, &other.sub) {
            (Sub::Exact(a), Sub::Exact(b)) => a == b,
            (Sub::Exact(e), Sub::Stem(s)) | (Sub::Stem(s), Sub::Exact(e)) => {
                e.starts_with(s.as_str())
            }
            (Sub::Stem(a), Sub::Stem(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
        }
    }

    /// The prefix every full prefix the pattern covers is under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sub {
            Sub::Exact(s) => write!(f, "{}/{s}", self.prefix),
            Sub::Stem(s) => write!(f, "{}/{s}*", self.prefix),
        }
    }
}

/// A channel: its patterns and the nodes that serve them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The patterns, sorted, none overlapping another of the table.
    pub patterns: BTreeSet<Pattern>,
    /// The nodes that serve it: never empty.
    pub nodes: BTreeSet<NodeId>,
}

impl Channel {
    /// True when one of the patterns covers `fp`.
    pub fn covers(&self, fp: &FullPrefix) -> bool {
        self.patterns.iter().any(|p| p.covers(fp))
    }
}

/// The table: every channel by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelTable {
    channels: BTreeMap<String, Channel>,
    /// Every pattern by its prefix, with its channel's name: what
    /// `channel_of` looks in, so finding a full prefix's channel costs a
    /// lookup and the patterns of that one prefix, not a pass over the
    /// table (it runs for every write and read).
    by_prefix: BTreeMap<String, BTreeMap<Pattern, String>>,
}

/// Checks a channel's name.
fn check_name(name: &str) -> Result<(), ChannelError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ChannelError::Invalid(format!(
            "{name:?} is not a channel name: 1 to {MAX_CHANNEL_NAME} bytes of a-z, 0-9, '.', '_' and '-', not starting with '.' or '-'"
        )))
    }
}

/// Refuses nodes that are not members of the cluster.
fn check_members(nodes: &BTreeSet<NodeId>, members: &BTreeSet<NodeId>) -> Result<(), ChannelError> {
    let unknown: Vec<String> = nodes
        .iter()
        .filter(|n| !members.contains(n))
        .map(|n| n.to_string())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ChannelError::Invalid(format!(
        "{} not a member of the cluster: name nodes by their ids (`chorus status` on each node, or `GET /v1/cluster`) or their member addresses, or start them first",
        unknown.join(", ") + if unknown.len() == 1 { " is" } else { " are" }
    )))
}

impl ChannelTable {
    /// An empty table: every node serves everything.
    pub fn new() -> ChannelTable {
        ChannelTable::default()
    }

    /// Every channel, by name.
    pub fn channels(&self) -> impl Iterator<Item = (&str, &Channel)> {
        self.channels.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// The channel named `name`.
    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.channels.get(name)
    }

    /// The channel covering `fp` (at most one: patterns never overlap),
    /// with its name; `None` for a reserved full prefix or one in no
    /// channel, which every node serves.
    pub fn channel_of(&self, fp: &FullPrefix) -> Option<(&str, &Channel)> {
        if fp.is_reserved() {
            return None;
        }
        let (_, name) = self
            .by_prefix
            .get(fp.prefix())?
            .iter()
            .find(|(p, _)| p.covers(fp))?;
        self.channels
            .get_key_value(name)
            .map(|(n, c)| (n.as_str(), c))
    }

    /// True when `node` serves `fp`.
    pub fn serves(&self, node: &NodeId, fp: &FullPrefix) -> bool {
        self.channel_of(fp)
            .is_none_or(|(_, c)| c.nodes.contains(node))
    }

    /// A table with channel `name` added: its patterns (none overlapping
    /// each other or another channel's) served by `nodes`, each a member.
    pub fn add(
        &self,
        name: &str,
        patterns: &[&str],
        nodes: &BTreeSet<NodeId>,
        members: &BTreeSet<NodeId>,
    ) -> Result<ChannelTable, ChannelError> {
        check_name(name)?;
        if self.channels.contains_key(name) {
            return Err(ChannelError::Conflict(format!(
                "the channel {name:?} exists: add patterns to it with `chorus channel add {name} PATTERN` after removing it, or pick another name"
            )));
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(ChannelError::Conflict(format!(
                "the table holds {MAX_CHANNELS} channels, the most it may: remove one first"
            )));
        }
        if patterns.is_empty() {
            return Err(ChannelError::Invalid(format!(
                "the channel {name:?} has no pattern: give at least one, such as render/*"
            )));
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(ChannelError::Invalid(format!(
                "the channel {name:?} has {} patterns; the most is {MAX_PATTERNS}",
                patterns.len()
            )));
        }
        if nodes.is_empty() {
            return Err(ChannelError::Invalid(format!(
                "the channel {name:?} has no node: a channel is served by at least one node"
            )));
        }
        check_members(nodes, members)?;
        let mut parsed: Vec<Pattern> = Vec::with_capacity(patterns.len());
        for text in patterns {
            let p = Pattern::parse(text)?;
            if let Some(q) = parsed.iter().find(|q| q.overlaps(&p)) {
                return Err(ChannelError::Invalid(format!(
                    "the patterns {q} and {p} of the channel {name:?} overlap: give each full prefix once"
                )));
            }
            for (other, c) in &self.channels {
                if let Some(q) = c.patterns.iter().find(|q| q.overlaps(&p)) {
                    return Err(ChannelError::Conflict(format!(
                        "the pattern {p} overlaps {q} of the channel {other:?}: a full prefix belongs to one channel"
                    )));
                }
            }
            parsed.push(p);
        }
        let mut next = self.clone();
        for p in &parsed {
            next.by_prefix
                .entry(p.prefix().to_string())
                .or_default()
                .insert(p.clone(), name.to_string());
        }
        next.channels.insert(
            name.to_string(),
            Channel {
                patterns: parsed.into_iter().collect(),
                nodes: nodes.clone(),
            },
        );
        Ok(next)
    }

    /// A table without channel `name`: its full prefixes become served by
    /// every node again.
    pub fn remove(&self, name: &str) -> Result<ChannelTable, ChannelError> {
        let mut next = self.clone();
        match next.channels.remove(name) {
            Some(_) => {
                next.by_prefix.retain(|_, patterns| {
                    patterns.retain(|_, n| n != name);
                    !patterns.is_empty()
                });
                Ok(next)
            }
            None => Err(self.no_such(name)),
        }
    }

    /// A table where `node` (a member) also serves channel `name`.
    pub fn serve(
        &self,
        name: &str,
        node: NodeId,
        members: &BTreeSet<NodeId>,
    ) -> Result<ChannelTable, ChannelError> {
        check_members(&BTreeSet::from([node]), members)?;
        let mut next = self.clone();
        let channel = next
            .channels
            .get_mut(name)
            .ok_or_else(|| self.no_such(name))?;
        channel.nodes.insert(node);
        Ok(next)
    }

    /// A table where `node` no longer serves channel `name`; refused when
    /// it would leave the channel with no node.
    pub fn leave(&self, name: &str, node: NodeId) -> Result<ChannelTable, ChannelError> {
        let mut next = self.clone();
        let channel = next
            .channels
            .get_mut(name)
            .ok_or_else(|| self.no_such(name))?;
        if !channel.nodes.contains(&node) {
            return Err(ChannelError::NotFound(format!(
                "{node} does not serve the channel {name:?}"
            )));
        }
        if channel.nodes.len() == 1 {
            return Err(ChannelError::Conflict(format!(
                "{node} is the only node serving the channel {name:?}: add another with `chorus channel serve {name} NODE` first, or remove the channel"
            )));
        }
        channel.nodes.remove(&node);
        Ok(next)
    }

    /// The stored form of channel `name` (one key of the replicated
    /// table): `{"patterns": [...], "nodes": [hex ids]}`.
    pub fn record(&self, name: &str) -> Option<serde_json::Value> {
        let c = self.channels.get(name)?;
        Some(serde_json::json!({
            "patterns": c.patterns.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "nodes": c.nodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
    }

    /// The table that stored records make, read in name order, with what
    /// was wrong with each record left out. Every node reading the same
    /// records makes the same table: a record that is malformed, or whose
    /// patterns overlap a channel of an earlier name (two nodes added
    /// overlapping channels at once), is skipped and reported. Nodes are
    /// not checked against the members here: a record names only members
    /// when it is written.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (ChannelTable, Vec<String>) {
        let mut sorted: Vec<(&str, &[u8])> = records.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut table = ChannelTable::new();
        let mut problems = Vec::new();
        for (name, bytes) in sorted {
            match Self::parse_record(bytes) {
                Ok((patterns, nodes)) => {
                    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
                    match table.add(name, &refs, &nodes, &nodes) {
                        Ok(next) => table = next,
                        Err(e) => problems.push(format!("channel {name:?} left out: {e}")),
                    }
                }
                Err(e) => problems.push(format!("channel {name:?} left out: {e}")),
            }
        }
        (table, problems)
    }

    fn parse_record(bytes: &[u8]) -> Result<(Vec<String>, BTreeSet<NodeId>), String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
        let strings = |field: &str| -> Result<Vec<String>, String> {
            v.get(field)
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| format!("no {field:?} list"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| format!("a non-string in {field:?}"))
                })
                .collect()
        };
        let patterns = strings("patterns")?;
        let nodes = strings("nodes")?
            .iter()
            .map(|h| NodeId::parse_hex(h).ok_or_else(|| format!("{h:?} is not a node id")))
            .collect::<Result<BTreeSet<NodeId>, String>>()?;
        Ok((patterns, nodes))
    }

    fn no_such(&self, name: &str) -> ChannelError {
        let known: Vec<&str> = self.channels.keys().map(String::as_str).take(20).collect();
        ChannelError::NotFound(format!(
            "no channel {name:?}{}",
            if known.is_empty() {
                ": the table is empty".to_string()
            } else {
                format!(" (channels: {})", known.join(", "))
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn members() -> BTreeSet<NodeId> {
        (1..=5).map(node).collect()
    }

    fn fp(text: &str) -> FullPrefix {
        FullPrefix::parse(text).expect("a full prefix")
    }

    fn table() -> ChannelTable {
        ChannelTable::new()
            .add(
                "render",
                &["render/*"],
                &BTreeSet::from([node(1), node(2)]),
                &members(),
            )
            .and_then(|t| {
                t.add(
                    "assets",
                    &["assets/shot*", "assets/lib"],
                    &BTreeSet::from([node(2), node(3)]),
                    &members(),
                )
            })
            .expect("a valid table")
    }

    #[test]
    fn a_full_prefix_is_served_by_its_channel_and_the_rest_by_everyone() {
        let t = table();
        assert_eq!(
            t.channel_of(&fp("render/shot1")).map(|c| c.0),
            Some("render")
        );
        assert_eq!(
            t.channel_of(&fp("assets/shot010")).map(|c| c.0),
            Some("assets")
        );
        assert_eq!(t.channel_of(&fp("assets/lib")).map(|c| c.0), Some("assets"));
        assert!(
            t.channel_of(&fp("assets/library")).is_none(),
            "exact, not a stem"
        );
        assert!(t.serves(&node(1), &fp("render/x")));
        assert!(!t.serves(&node(3), &fp("render/x")));
        assert!(
            t.serves(&node(5), &fp("other/x")),
            "in no channel: everyone"
        );
        assert!(
            t.serves(&node(5), &fp("$cluster/members")),
            "Chorus's own data: everyone"
        );
    }

    #[test]
    fn patterns_parse_and_refuse_what_they_must() {
        for good in ["render/*", "assets/shot*", "a/b"] {
            assert_eq!(Pattern::parse(good).expect(good).to_string(), good);
        }
        for (bad, says) in [
            ("render", "no '/'"),
            ("ren*/x", "prefix"),
            ("a/b*c", "before its end"),
            ("a/", "empty subprefix"),
            ("/x", "prefix"),
            ("$cluster/*", "'$'"),
            ("a/$x", "'$'"),
        ] {
            let e = Pattern::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn overlaps_are_found_whichever_way_round() {
        let p = |t: &str| Pattern::parse(t).expect(t);
        assert!(p("a/*").overlaps(&p("a/x")));
        assert!(p("a/x").overlaps(&p("a/*")));
        assert!(p("a/sh*").overlaps(&p("a/shot*")));
        assert!(p("a/shot*").overlaps(&p("a/sh*")));
        assert!(!p("a/shot*").overlaps(&p("a/lib*")));
        assert!(!p("a/*").overlaps(&p("b/*")));
        assert!(!p("a/x").overlaps(&p("a/xy")));
    }

    #[test]
    fn bad_changes_leave_the_table_unchanged_and_say_why() {
        let t = table();
        let before = t.clone();
        let nodes = BTreeSet::from([node(4)]);
        let cases: Vec<(Result<ChannelTable, ChannelError>, &str)> = vec![
            (
                t.add("more", &["render/x"], &nodes, &members()),
                "overlaps render/*",
            ),
            (
                t.add("more", &["x/*", "x/y"], &nodes, &members()),
                "of the channel \"more\" overlap",
            ),
            (t.add("more", &[], &nodes, &members()), "no pattern"),
            (t.add("more", &[""], &nodes, &members()), "no '/'"),
            (
                t.add("more", &["x/*"], &BTreeSet::new(), &members()),
                "no node",
            ),
            (
                t.add("more", &["x/*"], &BTreeSet::from([node(9)]), &members()),
                "not a member",
            ),
            (t.add("render", &["x/*"], &nodes, &members()), "exists"),
            (
                t.add("Bad Name", &["x/*"], &nodes, &members()),
                "not a channel name",
            ),
            (t.add("more", &["$auth/*"], &nodes, &members()), "'$'"),
            (t.serve("render", node(9), &members()), "not a member"),
            (t.serve("nope", node(1), &members()), "no channel \"nope\""),
            (t.leave("render", node(5)), "does not serve"),
            (t.remove("nope"), "no channel"),
        ];
        for (outcome, says) in cases {
            let e = outcome.expect_err(says).to_string();
            assert!(e.contains(says), "expected {says:?} in {e:?}");
        }
        assert_eq!(t, before);
    }

    #[test]
    fn the_last_node_cannot_leave_but_others_can() {
        let t = table();
        let t = t.leave("render", node(1)).expect("node 2 still serves it");
        let e = t.leave("render", node(2)).expect_err("the last node");
        assert!(e.to_string().contains("only node"), "{e}");
        let t = t.serve("render", node(4), &members()).expect("serve");
        assert!(t.serves(&node(4), &fp("render/a")));
        let t = t.remove("render").expect("remove");
        assert!(t.serves(&node(5), &fp("render/a")), "everyone's again");
    }

    #[test]
    fn records_round_trip_and_every_reader_drops_the_same_overlap() {
        let t = table();
        let render = serde_json::to_vec(&t.record("render").expect("render")).expect("json");
        let assets = serde_json::to_vec(&t.record("assets").expect("assets")).expect("json");
        let (back, problems) =
            ChannelTable::from_records([("render", &render[..]), ("assets", &assets[..])]);
        assert_eq!(back, t);
        assert!(problems.is_empty(), "{problems:?}");
        // Two nodes added overlapping channels at once: the later name is
        // left out, whatever order the records come in.
        let clash = serde_json::to_vec(&serde_json::json!({
            "patterns": ["render/shots"], "nodes": [node(4).to_string()],
        }))
        .expect("json");
        for order in [
            vec![("zzz", &clash[..]), ("render", &render[..])],
            vec![("render", &render[..]), ("zzz", &clash[..])],
        ] {
            let (got, problems) = ChannelTable::from_records(order);
            assert!(got.get("zzz").is_none() && got.get("render").is_some());
            assert!(problems[0].contains("\"zzz\" left out"), "{problems:?}");
        }
        let (got, problems) = ChannelTable::from_records([("bad", &b"{]"[..])]);
        assert_eq!(got, ChannelTable::new());
        assert!(problems[0].contains("not JSON"), "{problems:?}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn pattern() -> impl Strategy<Value = String> {
            (
                prop::sample::select(vec!["a", "b"]),
                "[xy]{0,3}",
                any::<bool>(),
            )
                .prop_map(|(p, s, stem)| {
                    if stem {
                        format!("{p}/{s}*")
                    } else if s.is_empty() {
                        format!("{p}/x")
                    } else {
                        format!("{p}/{s}")
                    }
                })
        }

        proptest! {
            /// Whatever valid additions were made, a full prefix belongs
            /// to at most one channel, and a refused addition changed
            /// nothing.
            #[test]
            fn a_full_prefix_belongs_to_at_most_one_channel(
                adds in prop::collection::vec(prop::collection::vec(pattern(), 1..3), 1..6),
                subs in prop::collection::vec("[xy]{1,4}", 1..10),
            ) {
                let members: BTreeSet<NodeId> = BTreeSet::from([node(1)]);
                let mut t = ChannelTable::new();
                for (i, pats) in adds.iter().enumerate() {
                    let refs: Vec<&str> = pats.iter().map(String::as_str).collect();
                    let name = format!("c{i}");
                    match t.add(&name, &refs, &members, &members) {
                        Ok(next) => t = next,
                        Err(_) => {
                            let absent = t.get(&name).is_none();
                            prop_assert!(absent, "a refused channel is not in the table");
                        }
                    }
                }
                for p in ["a", "b"] {
                    for s in &subs {
                        let f = FullPrefix::new(p, s).expect("fp");
                        let owners = t.channels().filter(|(_, c)| c.covers(&f)).count();
                        prop_assert!(owners <= 1, "{f} is in {owners} channels");
                    }
                }
            }
        }
    }
}
