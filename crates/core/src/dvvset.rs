//! Dotted version vector sets (Almeida, Baquero, Gonçalves, Preguiça,
//! Fonte): the causal history of one key and its concurrent values.
//!
//! Semantics follow the reference implementation Riak ships (`dvvset.erl`)
//! operation by operation; `shared/reference/dvvset-vectors.md` lists the
//! expected results, and every one is a test below. A clock is a list of
//! entries `(id, counter, values)` sorted by id, where the values are the
//! newest first and hold the dots `counter, counter - 1, ...`, plus a list
//! of anonymous values (values without a dot, made by `new`).

use std::fmt;

/// One actor's part of a clock: its counter and the values whose dots it
/// still holds, newest first (the first has dot `counter`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Entry<I, V> {
    /// The actor (for Chorus: a node id).
    pub id: I,
    /// How many events of this actor the clock has seen.
    pub counter: u64,
    /// Values with dots `counter, counter - 1, ...`, newest first.
    pub values: Vec<V>,
}

impl<I: fmt::Debug, V: fmt::Debug> fmt::Debug for Entry<I, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{:?},{},{:?}}}", self.id, self.counter, self.values)
    }
}

/// A version vector: `(id, counter)` pairs sorted by id.
pub type VersionVector<I> = Vec<(I, u64)>;

/// Why an operation refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DvvError {
    /// `update` takes a clock made by `new` with exactly one value.
    #[error("update needs a clock with exactly one anonymous value (made by new); it has {0}")]
    NotOneNewValue(usize),
}

/// A dotted version vector set.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dvvs<I, V> {
    entries: Vec<Entry<I, V>>,
    anonymous: Vec<V>,
}

impl<I: fmt::Debug, V: fmt::Debug> fmt::Debug for Dvvs<I, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{:?},{:?}}}", self.entries, self.anonymous)
    }
}

impl<I, V> Default for Dvvs<I, V> {
    /// The empty clock; `sync` with it changes nothing.
    fn default() -> Self {
        Dvvs {
            entries: Vec::new(),
            anonymous: Vec::new(),
        }
    }
}

impl<I: Ord + Clone, V: Clone> Dvvs<I, V> {
    /// `new(V)`: one anonymous value and no history.
    pub fn new(value: V) -> Self {
        Self::new_list(vec![value])
    }

    /// `new(Vs)`: anonymous values and no history.
    pub fn new_list(values: Vec<V>) -> Self {
        Dvvs {
            entries: Vec::new(),
            anonymous: values,
        }
    }

    /// `new(VV, Vs)`: the history `vv` (entries with no values) and
    /// anonymous values: what a client writes after reading `vv`.
    pub fn new_with(vv: &[(I, u64)], values: Vec<V>) -> Self {
        let mut entries: Vec<Entry<I, V>> = vv
            .iter()
            .map(|(id, counter)| Entry {
                id: id.clone(),
                counter: *counter,
                values: Vec::new(),
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Dvvs {
            entries,
            anonymous: values,
        }
    }

    /// Builds a clock from its parts (entries are sorted by id here).
    pub fn from_parts(mut entries: Vec<Entry<I, V>>, anonymous: Vec<V>) -> Self {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Dvvs { entries, anonymous }
    }

    /// The entries, sorted by id.
    pub fn entries(&self) -> &[Entry<I, V>] {
        &self.entries
    }

    /// The anonymous values.
    pub fn anonymous(&self) -> &[V] {
        &self.anonymous
    }

    /// `join`: the version vector of the clock's history.
    pub fn join(&self) -> VersionVector<I> {
        self.entries
            .iter()
            .map(|e| (e.id.clone(), e.counter))
            .collect()
    }

    /// `update(C, Id)`: gives the one anonymous value of a clock made by
    /// `new` a new dot of `id`.
    pub fn update(mut self, id: &I) -> Result<Self, DvvError> {
        if self.anonymous.len() != 1 {
            return Err(DvvError::NotOneNewValue(self.anonymous.len()));
        }
        let value = self.anonymous.remove(0);
        Ok(Dvvs {
            entries: event(self.entries, id, value, 0),
            anonymous: Vec::new(),
        })
    }

    /// `update(Cnew, Cserver, Id)`: syncs the history of `self` (a clock
    /// made by `new` with one value) with `server`, then gives the value a
    /// new dot of `id`. Values of `server` that `self`'s history does not
    /// cover survive as siblings.
    pub fn update_with(self, server: &Self, id: &I) -> Result<Self, DvvError>
    where
        V: Ord,
    {
        self.update_with_floor(server, id, 0)
    }

    /// [`Dvvs::update_with`], where a new dot of `id`, when `id` has no
    /// value in the synced clock, is numbered above `floor` (a number
    /// that only grows at `id`, such as its hybrid timestamp): so a
    /// dot of a key whose history was removed (a collected tombstone) is
    /// never given again to a different value. Numbers are only compared,
    /// so skipping some changes nothing else; values that do exist keep
    /// their dots, since the jump happens only when `id` has none.
    pub fn update_with_floor(self, server: &Self, id: &I, floor: u64) -> Result<Self, DvvError>
    where
        V: Ord,
    {
        if self.anonymous.len() != 1 {
            return Err(DvvError::NotOneNewValue(self.anonymous.len()));
        }
        let mut value = self.anonymous;
        let history = Dvvs {
            entries: self.entries,
            anonymous: Vec::new(),
        };
        let synced = history.sync(server);
        Ok(Dvvs {
            entries: event(synced.entries, id, value.remove(0), floor),
            anonymous: synced.anonymous,
        })
    }

    /// `sync`: merges two clocks. Values one side saw and the other
    /// overwrote disappear; concurrent values survive.
    pub fn sync(&self, other: &Self) -> Self
    where
        V: Ord,
    {
        let anonymous = if self.less(other) {
            other.anonymous.clone()
        } else if other.less(self) {
            self.anonymous.clone()
        } else {
            // A set union, kept sorted so that sync is commutative.
            let mut all: Vec<V> = self
                .anonymous
                .iter()
                .chain(&other.anonymous)
                .cloned()
                .collect();
            all.sort();
            all.dedup();
            all
        };
        Dvvs {
            entries: sync_entries(&self.entries, &other.entries),
            anonymous,
        }
    }

    /// `sync([C1, C2, ...])`: merges any number of clocks.
    pub fn sync_all<'a>(clocks: impl IntoIterator<Item = &'a Self>) -> Self
    where
        Self: 'a,
        V: Ord,
    {
        clocks
            .into_iter()
            .fold(Self::default(), |acc, c| acc.sync(c))
    }

    /// `values`: every value, anonymous ones first.
    pub fn values(&self) -> Vec<&V> {
        self.anonymous
            .iter()
            .chain(self.entries.iter().flat_map(|e| e.values.iter()))
            .collect()
    }

    /// `size`: the number of values.
    pub fn size(&self) -> usize {
        self.anonymous.len() + self.entries.iter().map(|e| e.values.len()).sum::<usize>()
    }

    /// `ids`: the actors in the history.
    pub fn ids(&self) -> Vec<&I> {
        self.entries.iter().map(|e| &e.id).collect()
    }

    /// `equal`: the same history (ids, counters and number of values per
    /// entry); anonymous values are not compared.
    pub fn equal(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                a.id == b.id && a.counter == b.counter && a.values.len() == b.values.len()
            })
    }

    /// `less`: `other`'s history strictly dominates this one's.
    pub fn less(&self, other: &Self) -> bool {
        greater(&other.entries, &self.entries, false)
    }

    /// `map`: applies `f` to every value.
    pub fn map<W>(&self, mut f: impl FnMut(&V) -> W) -> Dvvs<I, W> {
        Dvvs {
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    id: e.id.clone(),
                    counter: e.counter,
                    values: e.values.iter().map(&mut f).collect(),
                })
                .collect(),
            anonymous: self.anonymous.iter().map(f).collect(),
        }
    }

    /// `last`: the newest value by `older_or_equal(a, b)` ("a is not newer
    /// than b"), among each entry's newest value and the anonymous values;
    /// `None` for a clock without values.
    pub fn last(&self, older_or_equal: impl Fn(&V, &V) -> bool) -> Option<&V> {
        find_entry(self, older_or_equal).map(|(_, v)| v)
    }

    /// `lww`: keeps only the newest value (as [`Dvvs::last`] picks it); the
    /// history is unchanged. A clock without values is returned as it is.
    pub fn lww(&self, older_or_equal: impl Fn(&V, &V) -> bool) -> Self {
        match find_entry(self, older_or_equal) {
            None => self.clone(),
            Some((Winner::Anonymous, v)) => Self::new_with(&self.join(), vec![v.clone()]),
            Some((Winner::Entry(at), v)) => Dvvs {
                entries: self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| Entry {
                        id: e.id.clone(),
                        counter: e.counter,
                        values: if i == at { vec![v.clone()] } else { Vec::new() },
                    })
                    .collect(),
                anonymous: Vec::new(),
            },
        }
    }

    /// `reconcile`: replaces every value by `f(values)`, one anonymous value
    /// over the whole history.
    pub fn reconcile(&self, f: impl FnOnce(Vec<&V>) -> V) -> Self {
        let value = f(self.values());
        Self::new_with(&self.join(), vec![value])
    }
}

/// Adds a new dot of `id` holding `value` (the internal step of update).
pub(crate) fn event<I: Ord + Clone, V>(
    mut entries: Vec<Entry<I, V>>,
    id: &I,
    value: V,
    floor: u64,
) -> Vec<Entry<I, V>> {
    match entries.binary_search_by(|e| e.id.cmp(id)) {
        Ok(at) => {
            let e = &mut entries[at];
            if e.values.is_empty() {
                e.counter = e.counter.max(floor);
            }
            e.counter = e.counter.saturating_add(1);
            e.values.insert(0, value);
        }
        Err(at) => entries.insert(
            at,
            Entry {
                id: id.clone(),
                counter: floor.saturating_add(1),
                values: vec![value],
            },
        ),
    }
    entries
}

fn sync_entries<I: Ord + Clone, V: Clone>(
    a: &[Entry<I, V>],
    b: &[Entry<I, V>],
) -> Vec<Entry<I, V>> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].id.cmp(&b[j].id) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(merge(&a[i], &b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Merges two entries of one actor: the higher counter wins, and of its
/// values it keeps those whose dots the other side has not seen past.
fn merge<I: Clone, V: Clone>(x: &Entry<I, V>, y: &Entry<I, V>) -> Entry<I, V> {
    let (hi, lo) = if x.counter >= y.counter {
        (x, y)
    } else {
        (y, x)
    };
    let hi_oldest = hi.counter.saturating_sub(hi.values.len() as u64);
    let lo_oldest = lo.counter.saturating_sub(lo.values.len() as u64);
    let values = if hi_oldest >= lo_oldest {
        hi.values.clone()
    } else {
        // Keep hi's values with dots above lo's oldest kept dot.
        let keep = (hi.counter - lo.counter) as usize + lo.values.len();
        hi.values.iter().take(keep).cloned().collect()
    };
    Entry {
        id: hi.id.clone(),
        counter: hi.counter,
        values,
    }
}

/// True when history `a` dominates `b` (`strict`: some entry already did).
fn greater<I: Ord, V>(a: &[Entry<I, V>], b: &[Entry<I, V>], strict: bool) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => strict,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (Some((x, xs)), Some((y, ys))) => match x.id.cmp(&y.id) {
            std::cmp::Ordering::Equal => match x.counter.cmp(&y.counter) {
                std::cmp::Ordering::Equal => greater(xs, ys, strict),
                std::cmp::Ordering::Greater => greater(xs, ys, true),
                std::cmp::Ordering::Less => false,
            },
            std::cmp::Ordering::Less => greater(xs, b, true),
            std::cmp::Ordering::Greater => false,
        },
    }
}

enum Winner {
    Entry(usize),
    Anonymous,
}

/// The reference's `find_entry`: the candidates are each entry's newest
/// value, in id order, then the anonymous values; a candidate replaces the
/// current winner when `older_or_equal(winner, candidate)`.
fn find_entry<I, V>(
    c: &Dvvs<I, V>,
    older_or_equal: impl Fn(&V, &V) -> bool,
) -> Option<(Winner, &V)> {
    let mut best: Option<(Winner, &V)> = None;
    let candidates = c
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.values.first().map(|v| (Winner::Entry(i), v)))
        .chain(c.anonymous.iter().map(|v| (Winner::Anonymous, v)));
    for (who, v) in candidates {
        best = match best {
            None => Some((who, v)),
            Some((_, b)) if older_or_equal(b, v) => Some((who, v)),
            keep => keep,
        };
    }
    best
}

#[cfg(test)]
mod tests;
