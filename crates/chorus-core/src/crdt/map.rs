//! A CRDT document: a map of named, typed fields, and the changes that update it.
//!
//! Fields are keyed by name *and* kind, so two leaders that concurrently create
//! `/x` as a counter and as a set both keep their data (a read shows both, see the
//! node's rendering); an operation addresses the field of its own kind.
//!
//! Every dot-based field (everything but the bounded counter) follows one rule: an
//! update removes the dots its writer had seen (covered by the write's context, the
//! writer's key context plus the write's own dot) and adds the write's dot. A remove
//! only removes seen dots, so whatever was written concurrently survives
//! (add-wins). Fields and map entries left without dots disappear: there are no
//! tombstones, the key's context remembers what was removed. Texts and lists are
//! the exception: their items order concurrent inserts, so a removed one stays,
//! hidden, while it holds any (`super::sequenced`).

use super::Corrupted;
use super::bounded::{Bounded, Rights};
use super::dots::DotFun;
use super::sequenced::{Seen, Sequenced};
use crate::{Dot, Hlc, VersionVector};
use chorus_text::{Missing, Op as SequenceOp};
use std::collections::{BTreeMap, BTreeSet};

/// The type of a field.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    Counter,
    Bounded,
    Set,
    MvRegister,
    LwwRegister,
    Flag,
    Map,
    Text,
    List,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Counter,
        Kind::Bounded,
        Kind::Set,
        Kind::MvRegister,
        Kind::LwwRegister,
        Kind::Flag,
        Kind::Map,
        Kind::Text,
        Kind::List,
    ];

    /// The name used in operations (`counter.add`) and in reads.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Bounded => "bounded",
            Kind::Set => "set",
            Kind::MvRegister => "mvreg",
            Kind::LwwRegister => "lwwreg",
            Kind::Flag => "flag",
            Kind::Map => "map",
            Kind::Text => "text",
            Kind::List => "list",
        }
    }

    /// What the kind is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Bounded => "bounded counter",
            Kind::Set => "set",
            Kind::MvRegister => "multi-value register",
            Kind::LwwRegister => "LWW register",
            Kind::Flag => "flag",
            Kind::Map => "map",
            Kind::Text => "text",
            Kind::List => "list",
        }
    }
}

/// One typed field. Element and register values are opaque bytes (the node stores
/// canonical JSON text).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Field {
    /// PN-counter: one dot per node holding that node's running total.
    Counter(DotFun<i64>),
    Bounded(Bounded),
    /// Add-wins observed-remove set: each element with the dots of its live adds.
    Set(BTreeMap<Vec<u8>, DotFun<()>>),
    /// Every concurrently written value.
    MvRegister(DotFun<Vec<u8>>),
    /// Concurrent values are kept; reads show the greatest `(hlc, dot)`.
    LwwRegister(DotFun<(Hlc, Vec<u8>)>),
    /// Enable-wins flag: enabled while any enabling dot is live.
    Flag(DotFun<()>),
    Map(Map),
    /// Characters, in order.
    Text(Sequenced<String>),
    /// Elements (each the JSON text of a value), in order.
    List(Sequenced<Vec<String>>),
}

impl Field {
    pub fn empty(kind: Kind) -> Field {
        match kind {
            Kind::Counter => Field::Counter(DotFun::default()),
            Kind::Bounded => Field::Bounded(Bounded::default()),
            Kind::Set => Field::Set(BTreeMap::new()),
            Kind::MvRegister => Field::MvRegister(DotFun::default()),
            Kind::LwwRegister => Field::LwwRegister(DotFun::default()),
            Kind::Flag => Field::Flag(DotFun::default()),
            Kind::Map => Field::Map(Map::default()),
            Kind::Text => Field::Text(Sequenced::default()),
            Kind::List => Field::List(Sequenced::default()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Field::Counter(_) => Kind::Counter,
            Field::Bounded(_) => Kind::Bounded,
            Field::Set(_) => Kind::Set,
            Field::MvRegister(_) => Kind::MvRegister,
            Field::LwwRegister(_) => Kind::LwwRegister,
            Field::Flag(_) => Kind::Flag,
            Field::Map(_) => Kind::Map,
            Field::Text(_) => Kind::Text,
            Field::List(_) => Kind::List,
        }
    }

    /// True when reads show the field: a stored field is, unless it is a text or
    /// list that was removed but still holds items (or a map of only such).
    pub fn is_shown(&self) -> bool {
        match self {
            Field::Text(t) => t.is_shown(),
            Field::List(l) => l.is_shown(),
            Field::Map(map) => map.is_shown(),
            _ => true,
        }
    }

    /// True when nothing is live (the field then disappears). A bounded counter,
    /// once created, never is: its rights cannot be withdrawn.
    pub fn is_empty(&self) -> bool {
        match self {
            Field::Counter(d) => d.is_empty(),
            Field::Flag(d) => d.is_empty(),
            Field::MvRegister(d) => d.is_empty(),
            Field::LwwRegister(d) => d.is_empty(),
            Field::Set(elements) => elements.is_empty(),
            Field::Map(map) => map.is_empty(),
            Field::Bounded(b) => b.entries().is_empty(),
            Field::Text(t) => t.is_empty(),
            Field::List(l) => l.is_empty(),
        }
    }

    /// The counter's value: the exact sum of every node's total. Each total fits an
    /// `i64` and a node refuses a write that would take the sum it sees past one,
    /// but concurrent adds on several nodes can; the sum is exact all the same.
    pub fn counter_value(store: &DotFun<i64>) -> i128 {
        store.iter().map(|(_, v)| i128::from(*v)).sum()
    }

    /// The value a read shows of an LWW register: the greatest `(hlc, dot)`.
    pub fn lww_value(store: &DotFun<(Hlc, Vec<u8>)>) -> Option<&[u8]> {
        store
            .iter()
            .max_by_key(|(dot, (hlc, _))| (*hlc, *dot))
            .map(|(_, (_, v))| v.as_slice())
    }

    /// Removes what `seen` covers, as the write `remover`.
    fn remove_covered(&mut self, seen: &Seen, remover: Dot) -> Result<(), Missing> {
        let covered = &|d| seen.covers(d);
        match self {
            Field::Counter(d) => d.remove_covered(covered),
            Field::MvRegister(d) => d.remove_covered(covered),
            Field::LwwRegister(d) => d.remove_covered(covered),
            Field::Flag(d) => d.remove_covered(covered),
            Field::Set(elements) => elements.retain(|_, dots| {
                dots.remove_covered(covered);
                !dots.is_empty()
            }),
            Field::Map(map) => map.remove_seen(seen, remover)?,
            Field::Text(t) => t.remove(seen, remover)?,
            Field::List(l) => l.remove(seen, remover)?,
            Field::Bounded(_) => {}
        }
        Ok(())
    }

    fn holds_bounded(&self) -> bool {
        match self {
            Field::Bounded(_) => true,
            Field::Map(map) => map.fields.values().any(Field::holds_bounded),
            _ => false,
        }
    }

    fn join(
        &mut self,
        other: &Field,
        mine: &VersionVector,
        theirs: &VersionVector,
    ) -> Result<(), Missing> {
        match (self, other) {
            (Field::Counter(a), Field::Counter(b)) => a.join(b, mine, theirs),
            (Field::MvRegister(a), Field::MvRegister(b)) => a.join(b, mine, theirs),
            (Field::LwwRegister(a), Field::LwwRegister(b)) => a.join(b, mine, theirs),
            (Field::Flag(a), Field::Flag(b)) => a.join(b, mine, theirs),
            (Field::Bounded(a), Field::Bounded(b)) => a.join(b),
            (Field::Map(a), Field::Map(b)) => a.join_fields(b, mine, theirs)?,
            (Field::Text(a), Field::Text(b)) => a.join(b, mine, theirs)?,
            (Field::List(a), Field::List(b)) => a.join(b, mine, theirs)?,
            (Field::Set(a), Field::Set(b)) => {
                let empty = DotFun::default();
                let names: BTreeSet<Vec<u8>> = a.keys().chain(b.keys()).cloned().collect();
                for element in names {
                    let dots = a.entry(element.clone()).or_default();
                    dots.join(b.get(&element).unwrap_or(&empty), mine, theirs);
                    if dots.is_empty() {
                        a.remove(&element);
                    }
                }
            }
            (a, b) => unreachable!("fields are keyed by kind: {:?} vs {:?}", a.kind(), b.kind()),
        }
        Ok(())
    }

    /// Applies `action`, written as `dot`, by a writer that saw `seen`.
    fn apply(&mut self, action: &Action, dot: Dot, hlc: Hlc, seen: &Seen) -> Result<(), Missing> {
        let seen_dot = &|d| seen.covers(d);
        match (self, action) {
            // A node's total replaces its earlier ones (all earlier: its deltas are
            // applied in its order), whatever the writer's read.
            (Field::Counter(d), Action::CounterTotal(total)) => {
                d.remove_covered(&|d: Dot| d.node == dot.node);
                d.insert(dot, *total);
            }
            (Field::Bounded(b), Action::BoundedEntry(rights)) => b.update(dot.node, rights),
            (Field::Set(elements), Action::SetAdd(element)) => {
                let dots = elements.entry(element.clone()).or_default();
                dots.remove_covered(seen_dot);
                dots.insert(dot, ());
            }
            (Field::Set(elements), Action::SetRemove(element)) => {
                if let Some(dots) = elements.get_mut(element) {
                    dots.remove_covered(seen_dot);
                    if dots.is_empty() {
                        elements.remove(element);
                    }
                }
            }
            (Field::MvRegister(d), Action::MvSet(value)) => {
                d.remove_covered(seen_dot);
                d.insert(dot, value.clone());
            }
            (Field::LwwRegister(d), Action::LwwSet(value)) => {
                d.remove_covered(seen_dot);
                d.insert(dot, (hlc, value.clone()));
            }
            (Field::Flag(d), Action::FlagEnable) => {
                d.remove_covered(seen_dot);
                d.insert(dot, ());
            }
            (Field::Flag(d), Action::FlagDisable) => d.remove_covered(seen_dot),
            (Field::Text(t), Action::Text(ops)) => t.apply(ops, dot, seen)?,
            (Field::List(l), Action::List(ops)) => l.apply(ops, dot, seen)?,
            (field, action) => unreachable!(
                "a change is applied to a field of its own kind: {:?} vs {action:?}",
                field.kind()
            ),
        }
        Ok(())
    }
}

/// A map of fields: the document itself, or a nested map.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Map {
    pub(crate) fields: BTreeMap<(String, Kind), Field>,
}

impl Map {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Fields sorted by name, then kind.
    pub fn fields(&self) -> impl Iterator<Item = (&str, Kind, &Field)> {
        self.fields
            .iter()
            .map(|((name, kind), field)| (name.as_str(), *kind, field))
    }

    pub fn field(&self, name: &str, kind: Kind) -> Option<&Field> {
        self.fields.get(&(name.to_owned(), kind))
    }

    /// The kinds of the fields named `name` that reads show.
    pub fn kinds(&self, name: &str) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| {
                self.fields
                    .get(&(name.to_owned(), *k))
                    .is_some_and(Field::is_shown)
            })
            .collect()
    }

    /// The field at `path` (map names, then the field's name) of `kind`.
    pub fn get(&self, path: &[String], kind: Kind) -> Option<&Field> {
        let (last, parents) = path.split_last()?;
        self.map_at(parents)?.field(last, kind)
    }

    /// The nested map at `path` (this map for an empty path).
    pub fn map_at(&self, path: &[String]) -> Option<&Map> {
        let mut map = self;
        for name in path {
            match map.field(name, Kind::Map)? {
                Field::Map(inner) => map = inner,
                _ => unreachable!("keyed by kind"),
            }
        }
        Some(map)
    }

    /// True when a bounded counter lives at or under `path`.
    pub fn holds_bounded(&self, path: &[String]) -> bool {
        match path.split_last() {
            None => self.fields.values().any(Field::holds_bounded),
            Some((last, parents)) => self
                .map_at(parents)
                .is_some_and(|map| map.named(last).any(Field::holds_bounded)),
        }
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |((n, _), _)| n == name)
            .map(|(_, f)| f)
    }

    /// About the bytes of its encoding, without encoding it (for size limits):
    /// names, values and a dot's few bytes each, a sequence's own estimate.
    pub fn approx_bytes(&self) -> usize {
        fn dots<V: Clone>(d: &DotFun<V>, value: impl Fn(&V) -> usize) -> usize {
            d.iter().map(|(_, v)| 4 + value(v)).sum()
        }
        self.fields
            .iter()
            .map(|((name, _), field)| {
                name.len()
                    + 2
                    + match field {
                        Field::Counter(d) => dots(d, |_| 8),
                        Field::Bounded(b) => 32 * (1 + b.entries().len()),
                        Field::Set(elements) => elements
                            .iter()
                            .map(|(e, d)| e.len() + 1 + dots(d, |_| 0))
                            .sum(),
                        Field::MvRegister(d) => dots(d, |v| v.len() + 1),
                        Field::LwwRegister(d) => dots(d, |(_, v)| v.len() + 9),
                        Field::Flag(d) => dots(d, |_| 0),
                        Field::Map(map) => map.approx_bytes(),
                        Field::Text(t) => t.items().approx_bytes() as usize,
                        Field::List(l) => l.items().approx_bytes() as usize,
                    }
            })
            .sum()
    }

    /// True when a text or list lives in it (at any depth).
    pub fn holds_sequences(&self) -> bool {
        self.fields.values().any(|field| match field {
            Field::Text(_) | Field::List(_) => true,
            Field::Map(inner) => inner.holds_sequences(),
            _ => false,
        })
    }

    /// True when reads show some field.
    pub fn is_shown(&self) -> bool {
        self.fields.values().any(Field::is_shown)
    }

    /// Removes what `context` covers, in every field, as the write `remover` (a
    /// plain write or delete that saw `context` replaces what it saw). Bounded
    /// counters stay.
    pub fn remove_covered(
        &mut self,
        context: &VersionVector,
        remover: Dot,
    ) -> Result<(), Corrupted> {
        let seen = Seen { context, dot: None };
        self.remove_seen(&seen, remover).map_err(missing)
    }

    fn remove_seen(&mut self, seen: &Seen, remover: Dot) -> Result<(), Missing> {
        for field in self.fields.values_mut() {
            field.remove_covered(seen, remover)?;
        }
        self.fields.retain(|_, field| !field.is_empty());
        Ok(())
    }

    /// Joins another replica's state of the same document; `mine` and `theirs` are
    /// the causal contexts of the two sides.
    pub fn join(
        &mut self,
        other: &Map,
        mine: &VersionVector,
        theirs: &VersionVector,
    ) -> Result<(), Corrupted> {
        self.join_fields(other, mine, theirs).map_err(missing)
    }

    fn join_fields(
        &mut self,
        other: &Map,
        mine: &VersionVector,
        theirs: &VersionVector,
    ) -> Result<(), Missing> {
        let keys: BTreeSet<(String, Kind)> = self
            .fields
            .keys()
            .chain(other.fields.keys())
            .cloned()
            .collect();
        for key in keys {
            let field = self
                .fields
                .entry(key.clone())
                .or_insert_with(|| Field::empty(key.1));
            match other.fields.get(&key) {
                Some(theirs_field) => field.join(theirs_field, mine, theirs)?,
                None => field.join(&Field::empty(key.1), mine, theirs)?,
            }
            if field.is_empty() {
                self.fields.remove(&key);
            }
        }
        Ok(())
    }

    /// Applies one change of a delta made with `dot` at `hlc`; `context` covers what
    /// its writer had seen before it (the changes of the delta see `dot` too, and
    /// nothing else of its node that `context` does not cover: a write made against
    /// an older read keeps what its node added since). Fails only when a text or
    /// list operation names an item the document lacks: it was not applied in
    /// causal order, or the document is damaged.
    pub fn apply(
        &mut self,
        change: &Change,
        dot: Dot,
        hlc: Hlc,
        context: &VersionVector,
    ) -> Result<(), Corrupted> {
        let (last, parents) = change
            .path
            .split_last()
            .expect("a change names a field (checked when decoded)");
        let seen = Seen {
            context,
            dot: Some(dot),
        };
        self.apply_at(parents, last, &change.action, dot, hlc, &seen)
            .map_err(missing)
    }

    fn apply_at(
        &mut self,
        parents: &[String],
        last: &str,
        action: &Action,
        dot: Dot,
        hlc: Hlc,
        seen: &Seen,
    ) -> Result<(), Missing> {
        if let Some((name, rest)) = parents.split_first() {
            let key = (name.clone(), Kind::Map);
            let Field::Map(inner) = self
                .fields
                .entry(key.clone())
                .or_insert_with(|| Field::Map(Map::default()))
            else {
                unreachable!("keyed by kind")
            };
            let applied = inner.apply_at(rest, last, action, dot, hlc, seen);
            if inner.is_empty() {
                self.fields.remove(&key);
            }
            return applied;
        }
        let Some(kind) = action.kind() else {
            // A remove: every kind under this name loses what its writer saw.
            for ((name, _), field) in self.fields.iter_mut() {
                if name == last {
                    field.remove_covered(seen, dot)?;
                }
            }
            self.fields.retain(|_, field| !field.is_empty());
            return Ok(());
        };
        let key = (last.to_owned(), kind);
        let field = self.field_mut(key.clone());
        let applied = field.apply(action, dot, hlc, seen);
        if field.is_empty() {
            self.fields.remove(&key);
        }
        applied
    }

    /// The field `name` of `kind`, made empty if absent.
    pub(crate) fn field_mut(&mut self, key: (String, Kind)) -> &mut Field {
        let kind = key.1;
        self.fields.entry(key).or_insert_with(|| Field::empty(kind))
    }

    /// The nested map at `path`, made (empty) where absent.
    pub(crate) fn map_mut(&mut self, path: &[String]) -> &mut Map {
        let mut map = self;
        for name in path {
            match map.field_mut((name.clone(), Kind::Map)) {
                Field::Map(inner) => map = inner,
                _ => unreachable!("keyed by kind"),
            }
        }
        map
    }
}

/// A text or list operation that names an item the document lacks.
fn missing(Missing(id): Missing) -> Corrupted {
    Corrupted(format!(
        "a text or list operation names item {}:{} which the document lacks",
        id.agent, id.seq
    ))
}

/// What one write does to a CRDT document, in order. The write's dot, HLC and
/// context travel in its op; a delta holds only what is new.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Delta {
    pub changes: Vec<Change>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    /// Names of the nested maps, then of the field; never empty.
    pub path: Vec<String>,
    pub action: Action,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// The writer's new total in a counter (its previous total is replaced).
    CounterTotal(i64),
    /// The writer's new entry in a bounded counter.
    BoundedEntry(Rights),
    SetAdd(Vec<u8>),
    SetRemove(Vec<u8>),
    MvSet(Vec<u8>),
    LwwSet(Vec<u8>),
    FlagEnable,
    FlagDisable,
    /// Removes what the writer saw of every field with this name.
    Remove,
    /// Inserts and deletes in a text, made by the writing node.
    Text(Vec<SequenceOp<String>>),
    /// Inserts and deletes in a list.
    List(Vec<SequenceOp<Vec<String>>>),
}

impl Action {
    /// The kind of field the action updates; `None` for a remove.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Action::CounterTotal(_) => Kind::Counter,
            Action::BoundedEntry(_) => Kind::Bounded,
            Action::SetAdd(_) | Action::SetRemove(_) => Kind::Set,
            Action::MvSet(_) => Kind::MvRegister,
            Action::LwwSet(_) => Kind::LwwRegister,
            Action::FlagEnable | Action::FlagDisable => Kind::Flag,
            Action::Text(_) => Kind::Text,
            Action::List(_) => Kind::List,
            Action::Remove => return None,
        })
    }
}
