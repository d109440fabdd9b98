//! The sequence CRDT of text and list fields: every replica that applies the same
//! operations, in any causal order, holds the same sequence, and runs typed
//! concurrently at one place never interleave (`docs/design/text.md`).
//!
//! Each item (a character of a [`Text`], an element of a [`List`]) has an [`Id`] (the
//! agent that inserted it, and how many items that agent had inserted before), the
//! ids of its neighbours when it was inserted (its left and right *origins*), and a
//! deleted mark. Concurrent inserts are ordered by the FugueMax rule (Weidner and
//! Kleppmann, "The Art of the Fugue", 2023), in the form of the YjsMod integration:
//! among items with the same left origin, one whose right origin lies further left
//! goes first, then the lower agent (see `Sequence::integrate`). Deletes only mark
//! items, so they commute and repeat harmlessly; they have ids of their own, and a
//! delete log says which delete removed which item, so that a [`Version`] tells what
//! the sequence was, and an edit made against it lands where it was meant.
//!
//! Items are stored in *runs*: consecutive ids of one agent, typed left to right
//! (each item's left origin the one before it, all sharing one right origin), with one
//! deletion state; deleted runs keep no items. Runs are kept in chunks with their
//! counts; a place is found from a cursor at the last one (edits cluster), an item by
//! id from the chunk of the last one found.
//!
//! **Invariants:** a run's items are contiguous in the sequence; every origin an
//! applied insert names is present (operations are applied in causal order: an insert
//! after its origins, a delete after the inserts it deletes); an agent's operations
//! are applied in its order (its ids and delete ids then tell what was applied).

mod codec;
mod content;
mod pages;
pub mod varint;

pub use codec::{Corrupt, decode_ops, encode_ops};
pub use content::Content;
pub use pages::Saved;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// An item's identity: the agent (a server node) that inserted it, and the number of
/// items that agent had inserted into this text before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub agent: u64,
    pub seq: u64,
}

impl Id {
    fn plus(self, n: u64) -> Id {
        Id {
            agent: self.agent,
            seq: self.seq + n,
        }
    }

    fn minus(self, n: u64) -> Id {
        Id {
            agent: self.agent,
            seq: self.seq - n,
        }
    }
}

/// A change, as replicas exchange it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<C = String> {
    /// `content` inserted as one run: its first item with these origins, each next
    /// one right after the one before.
    Insert {
        id: Id,
        origin_left: Option<Id>,
        origin_right: Option<Id>,
        content: C,
    },
    /// The items `id .. id + len` (of one agent) deleted by `by`: the deleting
    /// agent's delete ids `by .. by + len`, one per item, counted apart from the ids
    /// of its inserts (so typing keeps consecutive ids whatever is deleted between).
    Delete { id: Id, len: u64, by: Id },
}

/// An operation names an item this replica does not hold: it was applied before one
/// it depends on.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing(pub Id);

/// An edit names a place beyond the end of the sequence at the version it was made
/// against, which had `len` items shown.
#[derive(Debug, PartialEq, Eq)]
pub struct Beyond {
    pub len: u64,
}

/// What a replica had applied at some moment: per agent, the seqs of the items it
/// had inserted and of its delete ids, as ranges. Usually one range from 0 per agent
/// (everything up to some write); a write made against an old read has its own
/// operations too, past what the read had ([`Sequence::version_at`]). An edit made
/// against a version lands where it was meant there, whatever was applied since
/// ([`Sequence::insert_at`], [`Sequence::delete_at`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// Per agent (sorted), its items' seqs: sorted, disjoint, apart, non-empty
    /// ranges `from..to`.
    inserts: Vec<(u64, Vec<(u64, u64)>)>,
    /// Per agent (sorted), its delete ids, likewise.
    deletes: Vec<(u64, Vec<(u64, u64)>)>,
}

impl Version {
    /// This version with only the first `inserts` items and `deletes` delete ids of
    /// `agent` (a client's replica leaving out its later edits).
    pub fn upto(&self, agent: u64, inserts: u64, deletes: u64) -> Version {
        let cut = |list: &[(u64, Vec<(u64, u64)>)], upto: u64| -> Vec<(u64, Vec<(u64, u64)>)> {
            list.iter()
                .map(|(a, ranges)| {
                    let ranges = match *a == agent {
                        false => ranges.clone(),
                        true => ranges
                            .iter()
                            .filter(|(from, _)| *from < upto)
                            .map(|&(from, to)| (from, to.min(upto)))
                            .collect(),
                    };
                    (*a, ranges)
                })
                .filter(|(_, ranges)| !ranges.is_empty())
                .collect()
        };
        Version {
            inserts: cut(&self.inserts, inserts),
            deletes: cut(&self.deletes, deletes),
        }
    }

    fn ranges(list: &[(u64, Vec<(u64, u64)>)], agent: u64) -> &[(u64, u64)] {
        list.iter()
            .find(|(a, _)| *a == agent)
            .map_or(&[], |(_, ranges)| ranges.as_slice())
    }

    /// Adds the seqs `from..to` of `agent` to `list`.
    fn add(list: &mut Vec<(u64, Vec<(u64, u64)>)>, agent: u64, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let i = match list.binary_search_by_key(&agent, |(a, _)| *a) {
            Ok(i) => i,
            Err(i) => {
                list.insert(i, (agent, Vec::new()));
                i
            }
        };
        let ranges = &mut list[i].1;
        ranges.push((from, to));
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(f, t) in ranges.iter() {
            match merged.last_mut() {
                Some(last) if f <= last.1 => last.1 = last.1.max(t),
                _ => merged.push((f, t)),
            }
        }
        *ranges = merged;
    }

    /// The parts of the ids `first .. first + len` the version had, as `(offset,
    /// count)` from `first`.
    fn had(ranges: &[(u64, u64)], first: Id, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (start, end) = (first.seq, first.seq + len);
        ranges.iter().filter_map(move |&(from, to)| {
            let (from, to) = (from.max(start), to.min(end));
            (from < to).then(|| (from - start, to - from))
        })
    }

    /// The parts of the run of items from `id` the version had.
    fn inserted(&self, id: Id, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        Version::had(Version::ranges(&self.inserts, id.agent), id, len)
    }

    /// The parts of the delete ids from `by` (`len` of them) the version had.
    fn deleted(&self, by: Id, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        Version::had(Version::ranges(&self.deletes, by.agent), by, len)
    }
}

/// How many items (or delete ids) `agent` has made, by a per-agent list of counts.
fn count(counters: &[(u64, u64)], agent: u64) -> u64 {
    counters
        .iter()
        .find(|(a, _)| *a == agent)
        .map_or(0, |(_, n)| *n)
}

#[derive(Clone, Debug)]
struct Run<C> {
    id: Id,
    len: u64,
    origin_left: Option<Id>,
    origin_right: Option<Id>,
    deleted: bool,
    content: C,
}

impl<C: Content> Run<C> {
    fn visible(&self) -> u64 {
        if self.deleted { 0 } else { self.len }
    }

    fn holds(&self, id: Id) -> bool {
        id.agent == self.id.agent && id.seq >= self.id.seq && id.seq < self.id.seq + self.len
    }

    /// The ids it names: its first item's and its origins.
    fn ids(&self) -> impl Iterator<Item = Id> {
        [Some(self.id), self.origin_left, self.origin_right]
            .into_iter()
            .flatten()
    }

    fn last(&self) -> Id {
        self.id.plus(self.len - 1)
    }

    /// Splits off the items from `off` on (`0 < off < len`).
    /// This live run in runs of at most `max` items (each next one typed right after
    /// the one before, as [`Run::split`] makes them), in one pass over its items.
    fn pieces(self, max: u64) -> Vec<Run<C>> {
        let (id, origin_left, origin_right) = (self.id, self.origin_left, self.origin_right);
        let mut first = 0;
        self.content
            .pieces(max)
            .into_iter()
            .map(|content| {
                let len = content.count();
                let run = Run {
                    id: id.plus(first),
                    len,
                    origin_left: match first {
                        0 => origin_left,
                        _ => Some(id.plus(first - 1)),
                    },
                    origin_right,
                    deleted: false,
                    content,
                };
                first += len;
                run
            })
            .collect()
    }

    fn split(&mut self, off: u64) -> Run<C> {
        // Deleted runs keep no items.
        let content = if self.deleted {
            C::default()
        } else {
            self.content.split_off(off)
        };
        let rest = Run {
            id: self.id.plus(off),
            len: self.len - off,
            origin_left: Some(self.id.plus(off - 1)),
            origin_right: self.origin_right,
            deleted: self.deleted,
            content,
        };
        self.len = off;
        rest
    }

    /// Whether `next` continues this run: typed right after its last item, and
    /// deleted or not alike.
    fn continued_by(&self, next: &Run<C>) -> bool {
        self.deleted == next.deleted
            && next.id == self.id.plus(self.len)
            && next.origin_left == Some(self.last())
            && next.origin_right == self.origin_right
    }
}

/// Runs, with their counts; stored as one page (`pages`).
#[derive(Clone, Debug)]
struct Chunk<C> {
    runs: Vec<Run<C>>,
    items: u64,
    visible: u64,
    /// Bytes of the items shown.
    bytes: u64,
    /// The page it is stored as (0: none yet).
    page: u64,
    /// Changed since it was last saved.
    dirty: bool,
}

impl<C> Default for Chunk<C> {
    fn default() -> Chunk<C> {
        Chunk {
            runs: Vec::new(),
            items: 0,
            visible: 0,
            bytes: 0,
            page: 0,
            dirty: true,
        }
    }
}

impl<C: Content> Chunk<C> {
    fn recount(&mut self) {
        self.items = self.runs.iter().map(|r| r.len).sum();
        self.visible = self.runs.iter().map(Run::<C>::visible).sum();
        self.bytes = self.runs.iter().map(|r| r.content.bytes()).sum();
    }
}

/// Runs a chunk holds before it splits in two.
const CHUNK_RUNS_MAX: usize = 32;

/// A run of the delete log: delete id `by + k` deleted item `target + k` (forwards)
/// or `target - k` (backwards, as backspace deletes), for `k < len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deleted {
    by: Id,
    target: Id,
    len: u64,
    backwards: bool,
}

impl Deleted {
    /// The item delete id `by + k` deleted.
    fn target(&self, k: u64) -> Id {
        Id {
            agent: self.target.agent,
            seq: if self.backwards {
                self.target.seq - k
            } else {
                self.target.seq + k
            },
        }
    }

    /// Takes in `next` when it continues this run of the log (the next delete ids, on
    /// the next items one way); answers whether it did.
    fn extend(&mut self, next: &Deleted) -> bool {
        let (last, first) = (self.target(self.len - 1), next.target);
        let continues = next.by == self.by.plus(self.len) && last.agent == first.agent;
        let forwards = (!self.backwards || self.len == 1)
            && (!next.backwards || next.len == 1)
            && first.seq == last.seq + 1;
        let backwards = (self.backwards || self.len == 1)
            && (next.backwards || next.len == 1)
            && last.seq == first.seq + 1;
        if !continues || !(forwards || backwards) {
            return false;
        }
        self.backwards = backwards && !forwards;
        self.len += next.len;
        true
    }
}

/// The items `first + offset ..` (`count` of them, a version had them) in parts
/// `(offset, count, shown)` from `first`: shown unless one of the `deleted` ranges
/// (per agent, sorted) holds it.
fn shown_parts(
    first: Id,
    (offset, count): (u64, u64),
    deleted: &[(u64, Vec<(u64, u64)>)],
) -> Vec<(u64, u64, bool)> {
    let ranges: &[(u64, u64)] = deleted
        .iter()
        .find(|(a, _)| *a == first.agent)
        .map_or(&[], |(_, r)| r.as_slice());
    let (start, end) = (first.seq + offset, first.seq + offset + count);
    let mut parts = Vec::new();
    let mut at = start;
    for &(from, to) in ranges {
        if to <= at || from >= end {
            continue;
        }
        if from > at {
            parts.push((at - first.seq, from - at, true));
            at = from;
        }
        let stop = to.min(end);
        if stop > at {
            parts.push((at - first.seq, stop - at, false));
            at = stop;
        }
    }
    if at < end {
        parts.push((at - first.seq, end - at, true));
    }
    parts
}

/// After an agent's write numbered `counter`, it had inserted `inserts` items into
/// the sequence and deleted `deletes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    counter: u64,
    inserts: u64,
    deletes: u64,
}

/// `agent`'s entry of a per-agent list (few agents write one sequence), made empty
/// when it has none.
fn entry<T: Default>(list: &mut Vec<(u64, T)>, agent: u64) -> &mut T {
    let i = position(list, agent);
    &mut list[i].1
}

/// Where `agent`'s entry is in a per-agent list, made empty when it has none.
fn position<T: Default>(list: &mut Vec<(u64, T)>, agent: u64) -> usize {
    match list.iter().position(|(a, _)| *a == agent) {
        Some(i) => i,
        None => {
            list.push((agent, T::default()));
            list.len() - 1
        }
    }
}

/// Where an item is: its chunk, its run, its offset in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct At {
    chunk: usize,
    run: usize,
    off: u64,
}

/// A replica of a sequence: characters ([`Text`]) or list elements ([`List`]).
#[derive(Clone, Debug)]
pub struct Sequence<C = String> {
    chunks: Vec<Chunk<C>>,
    /// Per agent, the seq of its next item (how many it inserted); few agents write
    /// one text, so a list.
    next: Vec<(u64, u64)>,
    /// Per agent, the seq of its next delete id (how many items it deleted).
    next_deletes: Vec<(u64, u64)>,
    /// Which delete ids deleted which items, for versions (a run keeps only that it
    /// is deleted, so that runs stay long).
    deletes: Vec<Deleted>,
    /// Per agent, how far its writes had gone, by the numbers of its writes (the
    /// counters of their dots): contexts of reads turn into versions through them.
    stamps: Vec<(u64, Vec<Stamp>)>,
    /// The chunk the last place was found in, and the characters before it: edits
    /// cluster, so the next search starts there. Dropped when a chunk before it
    /// changes (see [`Text::touched`]).
    cursor: Hint,
    /// The chunk the last item found by id was in (a hint: any chunk is correct).
    found: Hint,
    /// What the last save wrote, so that the next writes only what changed.
    saving: pages::Saving,
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    chunk: usize,
    visible_before: u64,
}

impl Cursor {
    /// Bits of a packed cursor that hold `visible_before`; the chunk, plus one (0
    /// is no cursor), is above them.
    const BEFORE_BITS: u32 = 40;

    /// The cursor in one word (0, no cursor, when it does not fit).
    fn pack(self) -> u64 {
        let chunk = self.chunk as u64 + 1;
        let fits = self.visible_before < 1 << Cursor::BEFORE_BITS
            && chunk < 1 << (64 - Cursor::BEFORE_BITS);
        if fits {
            chunk << Cursor::BEFORE_BITS | self.visible_before
        } else {
            0
        }
    }

    fn unpack(word: u64) -> Option<Cursor> {
        let chunk = (word >> Cursor::BEFORE_BITS).checked_sub(1)?;
        Some(Cursor {
            chunk: chunk as usize,
            visible_before: word & ((1 << Cursor::BEFORE_BITS) - 1),
        })
    }
}

/// A remembered position, only ever a hint to start a search from, in one atomic
/// word so that readers on several threads may share a sequence.
#[derive(Debug, Default)]
struct Hint(AtomicU64);

impl Hint {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Clone for Hint {
    fn clone(&self) -> Hint {
        Hint(AtomicU64::new(self.get()))
    }
}

/// A text field's characters.
pub type Text = Sequence<String>;
/// A list field's elements, each the JSON text of a value.
pub type List = Sequence<Vec<String>>;

impl<C> Default for Sequence<C> {
    fn default() -> Sequence<C> {
        Sequence {
            chunks: Vec::new(),
            next: Vec::new(),
            next_deletes: Vec::new(),
            deletes: Vec::new(),
            stamps: Vec::new(),
            cursor: Hint::default(),
            found: Hint::default(),
            saving: pages::Saving::default(),
        }
    }
}

impl<C: Content> Sequence<C> {
    pub fn new() -> Sequence<C> {
        Sequence::default()
    }

    /// The seq of `agent`'s next item.
    fn next_seq(&mut self, agent: u64) -> &mut u64 {
        entry(&mut self.next, agent)
    }

    /// The seq of `agent`'s next delete id.
    fn next_delete(&mut self, agent: u64) -> &mut u64 {
        entry(&mut self.next_deletes, agent)
    }

    /// Notes in the delete log that delete ids `by ..` deleted items `target ..`.
    fn log_delete(&mut self, entry: Deleted) {
        let extended = self
            .deletes
            .last_mut()
            .is_some_and(|last| last.extend(&entry));
        if extended {
            self.saving.changed_delete(self.deletes.len() - 1);
        } else {
            self.deletes.push(entry);
        }
    }

    /// Characters shown.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.visible).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs held (for measures of the encoding).
    pub fn runs(&self) -> usize {
        self.chunks.iter().map(|c| c.runs.len()).sum()
    }

    /// About the bytes of its encoding, without encoding it (for size limits): the
    /// items shown, and a few bytes per run, delete and stamp.
    pub fn approx_bytes(&self) -> u64 {
        let items: u64 = self.chunks.iter().map(|c| c.bytes).sum();
        let stamps: usize = self.stamps.iter().map(|(_, l)| l.len()).sum();
        items + 8 * self.runs() as u64 + 6 * self.deletes.len() as u64 + 4 * stamps as u64
    }

    /// Inserts `text` at character `pos` (at most [`Text::len`]) as `agent`; answers
    /// the operation to send to the other replicas.
    pub fn insert(&mut self, agent: u64, pos: u64, content: impl Into<C>) -> Op<C> {
        let content: C = content.into();
        let len = content.count();
        let at = self.visible_place(pos);
        let origin_left = self.before(at);
        let origin_right = self.id_at(at);
        let next = self.next_seq(agent);
        let id = Id { agent, seq: *next };
        *next += len;
        if len > 0 {
            let at = self.split_at(at);
            let run = Run {
                id,
                len,
                origin_left,
                origin_right,
                deleted: false,
                content: C::default(),
            };
            self.put_run(at, run, &content);
        }
        Op::Insert {
            id,
            origin_left,
            origin_right,
            content,
        }
    }

    /// Deletes `len` characters from character `pos` (all within the text: beyond it,
    /// a panic) as `agent`; answers the operations to send (one per run of ids).
    pub fn delete(&mut self, agent: u64, pos: u64, len: u64) -> Vec<Op<C>> {
        let mut ops: Vec<Op<C>> = Vec::new();
        let mut left = len;
        while left > 0 {
            let by = Id {
                agent,
                seq: *self.next_delete(agent),
            };
            let (id, take) = self.delete_from(self.visible_place(pos), left);
            *self.next_delete(agent) += take;
            self.log_delete(Deleted {
                by,
                target: id,
                len: take,
                backwards: false,
            });
            match ops.last_mut() {
                Some(Op::Delete { id: last, len, .. }) if last.plus(*len) == id => *len += take,
                _ => ops.push(Op::Delete { id, len: take, by }),
            }
            left -= take;
        }
        ops
    }

    /// What this replica has applied.
    pub fn version(&self) -> Version {
        let mut version = Version::default();
        for &(agent, n) in &self.next {
            Version::add(&mut version.inserts, agent, 0, n);
        }
        for &(agent, n) in &self.next_deletes {
            Version::add(&mut version.deletes, agent, 0, n);
        }
        version
    }

    /// Inserts `text` as `agent` at character `pos` of the text as it was at
    /// `version` (a version this replica went through): it goes where it would have
    /// gone then, and is ordered with what was applied since as if made concurrently
    /// with it. Answers the operation, or how long the text was when `pos` is past
    /// its end.
    pub fn insert_at(
        &mut self,
        agent: u64,
        version: &Version,
        pos: u64,
        content: impl Into<C>,
    ) -> Result<Op<C>, Beyond> {
        let (origin_left, origin_right) = self.origins_at(version, pos).ok_or_else(|| Beyond {
            len: self.len_at(version),
        })?;
        let next = self.next_seq(agent);
        let op = Op::Insert {
            id: Id { agent, seq: *next },
            origin_left,
            origin_right,
            content: content.into(),
        };
        self.apply(&op).expect("its origins are here");
        Ok(op)
    }

    /// Deletes, as `agent`, the `len` characters from `pos` of the text as it was at
    /// `version` (a version this replica went through), those deleted since too.
    /// Answers the operations, or how long the text was when they go past its end.
    pub fn delete_at(
        &mut self,
        agent: u64,
        version: &Version,
        pos: u64,
        len: u64,
    ) -> Result<Vec<Op<C>>, Beyond> {
        let runs = self.visible_at(version, pos, len).ok_or_else(|| Beyond {
            len: self.len_at(version),
        })?;
        Ok(runs
            .into_iter()
            .map(|(id, count)| {
                self.delete_as(agent, id, count)
                    .expect("the items are here")
            })
            .collect())
    }

    /// Deletes, as `agent`, every item `version` had (shown or not, so that every
    /// replica deletes the same whatever deletes it applied concurrently): how a
    /// field is removed against what its remover saw. Answers the operations.
    pub fn delete_seen(&mut self, agent: u64, version: &Version) -> Result<Vec<Op<C>>, Missing> {
        let mut ops = Vec::new();
        for (target, ranges) in &version.inserts {
            for &(from, to) in ranges {
                let id = Id {
                    agent: *target,
                    seq: from,
                };
                ops.push(self.delete_as(agent, id, to - from)?);
            }
        }
        Ok(ops)
    }

    /// Deletes the items `id .. id + len` as `agent`'s next delete ids.
    fn delete_as(&mut self, agent: u64, id: Id, len: u64) -> Result<Op<C>, Missing> {
        let next = self.next_delete(agent);
        let op = Op::Delete {
            id,
            len,
            by: Id { agent, seq: *next },
        };
        self.apply(&op)?;
        Ok(op)
    }

    /// Where the items `first .. first + len` (one agent's) are among the items
    /// shown at `version`: runs `(position, count)` of those shown there, in order,
    /// or, when none is, the position they would take (`count` 0). What a client
    /// sends of an edit it made on its own replica, in the version the node knows.
    pub fn positions_at(&self, version: &Version, first: Id, len: u64) -> Vec<(u64, u64)> {
        let deleted = self.deleted_at(version);
        let end = first.seq + len;
        let (mut shown, mut out) = (0u64, Vec::<(u64, u64)>::new());
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            let overlaps =
                run.id.agent == first.agent && run.id.seq < end && first.seq < run.id.seq + run.len;
            for part in version.inserted(run.id, run.len) {
                for (start, count, visible) in shown_parts(run.id, part, &deleted) {
                    if !visible {
                        continue;
                    }
                    let from = run.id.seq + start;
                    let (a, b) = (from.max(first.seq), (from + count).min(end));
                    if overlaps && a < b {
                        let at = shown + (a - from);
                        match out.last_mut() {
                            Some((p, n)) if *p + *n == at => *n += b - a,
                            _ => out.push((at, b - a)),
                        }
                    }
                    shown += count;
                }
            }
        }
        if out.is_empty() {
            out.push((self.shown_before(version, first), 0));
        }
        out
    }

    /// The id of the item shown at `pos` (`None` past the end): an anchor that stays
    /// on its item whatever is inserted or deleted around it ([`Sequence::positions_at`]
    /// finds it again).
    pub fn id_shown_at(&self, pos: u64) -> Option<Id> {
        (pos < self.len())
            .then(|| self.id_at(self.visible_place(pos)))
            .flatten()
    }

    /// Items shown at `version` before item `id` (which may be shown or not).
    fn shown_before(&self, version: &Version, id: Id) -> u64 {
        let deleted = self.deleted_at(version);
        let mut shown = 0;
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            let holds =
                run.id.agent == id.agent && run.id.seq <= id.seq && id.seq < run.id.seq + run.len;
            for part in version.inserted(run.id, run.len) {
                for (start, count, visible) in shown_parts(run.id, part, &deleted) {
                    if !visible {
                        continue;
                    }
                    if holds {
                        let from = run.id.seq + start;
                        shown += id.seq.saturating_sub(from).min(count);
                    } else {
                        shown += count;
                    }
                }
            }
            if holds {
                return shown;
            }
        }
        shown
    }

    /// Characters shown at `version`.
    pub fn len_at(&self, version: &Version) -> u64 {
        let deleted = self.deleted_at(version);
        self.chunks
            .iter()
            .flat_map(|c| &c.runs)
            .flat_map(|run| {
                version
                    .inserted(run.id, run.len)
                    .flat_map(|part| shown_parts(run.id, part, &deleted))
                    .collect::<Vec<_>>()
            })
            .filter(|(_, _, shown)| *shown)
            .map(|(_, count, _)| count)
            .sum()
    }

    /// The origins an insert at `pos` of the text at `version` gets: the item before
    /// (of those the version had, deleted or not) and the `pos`-th character shown;
    /// `None` past the end.
    fn origins_at(&self, version: &Version, pos: u64) -> Option<(Option<Id>, Option<Id>)> {
        let deleted = self.deleted_at(version);
        let mut left = pos;
        let mut before = None;
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            for part in version.inserted(run.id, run.len) {
                for (start, count, shown) in shown_parts(run.id, part, &deleted) {
                    if shown {
                        if left < count {
                            let right = run.id.plus(start + left);
                            let before = if left > 0 {
                                Some(right.minus(1))
                            } else {
                                before
                            };
                            return Some((before, Some(right)));
                        }
                        left -= count;
                    }
                    before = Some(run.id.plus(start + count - 1));
                }
            }
        }
        (left == 0).then_some((before, None))
    }

    /// The ids of the `len` characters from `pos` of the text at `version`, as runs
    /// of ids `(first, count)`; `None` when they go past the end.
    fn visible_at(&self, version: &Version, pos: u64, len: u64) -> Option<Vec<(Id, u64)>> {
        let deleted = self.deleted_at(version);
        let (mut skip, mut want) = (pos, len);
        let mut out: Vec<(Id, u64)> = Vec::new();
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            for part in version.inserted(run.id, run.len) {
                for (start, count, shown) in shown_parts(run.id, part, &deleted) {
                    if want == 0 && skip == 0 {
                        return Some(out);
                    }
                    if !shown {
                        continue;
                    }
                    let from = skip.min(count);
                    skip -= from;
                    let take = (count - from).min(want);
                    if take > 0 {
                        let first = run.id.plus(start + from);
                        // Consecutive ids go as one, as local deletes send them.
                        match out.last_mut() {
                            Some((last, n)) if last.plus(*n) == first => *n += take,
                            _ => out.push((first, take)),
                        }
                        want -= take;
                    }
                }
            }
        }
        (want == 0 && skip == 0).then_some(out)
    }

    /// The items the deletes of `version` deleted: per agent, sorted ranges of seqs.
    fn deleted_at(&self, version: &Version) -> Vec<(u64, Vec<(u64, u64)>)> {
        let mut ranges: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        for entry in &self.deletes {
            for (k, had) in version.deleted(entry.by, entry.len) {
                let (first, last) = (entry.target(k).seq, entry.target(k + had - 1).seq);
                let range = (first.min(last), first.max(last) + 1);
                match ranges.iter_mut().find(|(a, _)| *a == entry.target.agent) {
                    Some((_, list)) => list.push(range),
                    None => ranges.push((entry.target.agent, vec![range])),
                }
            }
        }
        for (_, list) in &mut ranges {
            list.sort_unstable();
        }
        ranges
    }

    /// Notes that `agent`'s write numbered `counter` (its dot's counter) has been
    /// applied here, with every operation it made in this sequence so far: a context
    /// that covers it then covers them ([`Sequence::version_at`]). Writes are noted in
    /// each agent's order (a write noted again updates its note); a write that made
    /// nothing here needs no note.
    pub fn stamp(&mut self, agent: u64, counter: u64) {
        let stamp = Stamp {
            counter,
            inserts: count(&self.next, agent),
            deletes: count(&self.next_deletes, agent),
        };
        let Some(at) = self.stamps.iter().position(|(a, _)| *a == agent) else {
            // Its first write here; one that made nothing needs no note.
            if (stamp.inserts, stamp.deletes) != (0, 0) {
                self.stamps.push((agent, vec![stamp]));
            }
            return;
        };
        let list = &mut self.stamps[at].1;
        let before = list
            .iter()
            .rev()
            .find(|s| s.counter < counter)
            .map_or((0, 0), |s| (s.inserts, s.deletes));
        match list.last_mut() {
            Some(last) if last.counter == counter => {
                *last = stamp;
                self.saving.changed_stamp(at, list.len() - 1);
            }
            Some(last) if last.counter > counter => {}
            _ if before == (stamp.inserts, stamp.deletes) => {}
            _ => list.push(stamp),
        }
    }

    /// The version a context names: per agent, what its writes numbered up to
    /// `covers(agent)` had made here; with `writing`, an agent's write being made
    /// (`(agent, counter)`), its operations so far too.
    pub fn version_at(&self, covers: impl Fn(u64) -> u64, writing: Option<(u64, u64)>) -> Version {
        let mut version = Version::default();
        for (agent, list) in &self.stamps {
            let upto = covers(*agent);
            let reached = list.partition_point(|s| s.counter <= upto);
            if let Some(stamp) = reached.checked_sub(1).map(|i| list[i]) {
                Version::add(&mut version.inserts, *agent, 0, stamp.inserts);
                Version::add(&mut version.deletes, *agent, 0, stamp.deletes);
            }
            let Some((_, counter)) = writing.filter(|(a, _)| a == agent) else {
                continue;
            };
            if let Ok(i) = list.binary_search_by_key(&counter, |s| s.counter) {
                let before = i.checked_sub(1).map(|i| list[i]).unwrap_or_default();
                let now = list[i];
                Version::add(&mut version.inserts, *agent, before.inserts, now.inserts);
                Version::add(&mut version.deletes, *agent, before.deletes, now.deletes);
            }
        }
        version
    }

    /// Takes in what `other` holds and this replica lacks (a state transfer): its
    /// inserts, each agent's in its order and each after its origins, then its
    /// deletes. Both must hold whole histories (every operation before one they
    /// applied); then merging in any order, any number of times, gives one sequence.
    pub fn merge(&mut self, other: &Sequence<C>) -> Result<(), Missing> {
        // Per agent, the parts of runs this replica lacks, in id order.
        let mut queues: Vec<(u64, VecDeque<Run<C>>)> = Vec::new();
        for run in other.chunks.iter().flat_map(|c| &c.runs) {
            let have = count(&self.next, run.id.agent);
            if have >= run.id.seq + run.len {
                continue;
            }
            let mut part = run.clone();
            if have > run.id.seq {
                part = part.split(have - run.id.seq);
            }
            match queues.iter_mut().find(|(a, _)| *a == run.id.agent) {
                Some((_, queue)) => queue.push_back(part),
                None => queues.push((run.id.agent, VecDeque::from([part]))),
            }
        }
        for (_, queue) in &mut queues {
            queue.make_contiguous().sort_by_key(|r| r.id.seq);
        }
        // Each pass takes every part whose origins are here; a whole history always
        // lets one through.
        while queues.iter().any(|(_, q)| !q.is_empty()) {
            let mut progressed = false;
            for (_, queue) in &mut queues {
                while let Some(part) = queue.front() {
                    let here = |origin: Option<Id>| origin.is_none_or(|o| self.find(o).is_some());
                    if !(here(part.origin_left) && here(part.origin_right)) {
                        break;
                    }
                    let part = queue.pop_front().expect("a front");
                    let at = self.integrate(part.id, part.origin_left, part.origin_right)?;
                    let at = self.split_at(at);
                    let next = self.next_seq(part.id.agent);
                    *next = (*next).max(part.id.seq + part.len);
                    // A part deleted there comes deleted (it has no items to show); its
                    // deletes, in the log, come next.
                    let content = part.content.clone();
                    let run = Run {
                        content: C::default(),
                        ..part
                    };
                    self.put_run(at, run, &content);
                    progressed = true;
                }
            }
            if !progressed {
                let waiting = queues.iter().find_map(|(_, q)| q.front()).expect("waiting");
                return Err(Missing(
                    waiting
                        .origin_left
                        .or(waiting.origin_right)
                        .unwrap_or(waiting.id),
                ));
            }
        }
        // Its deletes this replica lacks (an agent's delete ids come in its order).
        for entry in &other.deletes {
            let have = count(&self.next_deletes, entry.by.agent);
            for k in have.saturating_sub(entry.by.seq)..entry.len {
                let op = Op::Delete {
                    id: entry.target(k),
                    len: 1,
                    by: entry.by.plus(k),
                };
                self.apply(&op)?;
            }
        }
        // And how far each agent's writes went, noted there.
        for (agent, theirs) in &other.stamps {
            let at = position(&mut self.stamps, *agent);
            let list = &mut self.stamps[at].1;
            list.extend_from_slice(theirs);
            list.sort_unstable();
            list.dedup_by_key(|s| s.counter);
            self.saving.changed_stamp(at, 0);
        }
        Ok(())
    }

    /// Applies an operation of another replica (or again one of this one: nothing
    /// changes).
    pub fn apply(&mut self, op: &Op<C>) -> Result<(), Missing> {
        match op {
            Op::Insert {
                id,
                origin_left,
                origin_right,
                content,
            } => {
                let len = content.count();
                if len == 0 || self.find(*id).is_some() {
                    return Ok(());
                }
                let at = self.integrate(*id, *origin_left, *origin_right)?;
                let at = self.split_at(at);
                let run = Run {
                    id: *id,
                    len,
                    origin_left: *origin_left,
                    origin_right: *origin_right,
                    deleted: false,
                    content: C::default(),
                };
                self.put_run(at, run, content);
                let next = self.next_seq(id.agent);
                *next = (*next).max(id.seq + len);
                Ok(())
            }
            Op::Delete { id, len, by } => {
                let next = self.next_delete(by.agent);
                if by.seq < *next {
                    return Ok(()); // Applied: an agent's operations come in its order.
                }
                *next = by.seq + len;
                let mut done = 0;
                while done < *len {
                    let part = id.plus(done);
                    let at = self.find(part).ok_or(Missing(part))?;
                    done += self.delete_from(at, *len - done).1;
                }
                self.log_delete(Deleted {
                    by: *by,
                    target: *id,
                    len: *len,
                    backwards: false,
                });
                Ok(())
            }
        }
    }

    /// Where an item with these origins goes among the items already here: right of
    /// its left origin, left of its right origin, and, among items inserted
    /// concurrently between the two, by the FugueMax order (YjsMod integration).
    /// Places compare in document order (`None`, the start, before all; the end,
    /// [`Text::end`], after all).
    fn integrate(
        &self,
        id: Id,
        origin_left: Option<Id>,
        origin_right: Option<Id>,
    ) -> Result<At, Missing> {
        let place = |origin: Option<Id>| -> Result<Option<At>, Missing> {
            origin.map(|o| self.find(o).ok_or(Missing(o))).transpose()
        };
        let left = place(origin_left)?;
        let right = place(origin_right)?.unwrap_or(self.end());
        let mut i = match left {
            None => self.first(),
            Some(at) => self.after(at),
        };
        let mut dest = i;
        let mut scanning = false;
        loop {
            if !scanning {
                dest = i;
            }
            if i >= right {
                break;
            }
            let run = &self.chunks[i.chunk].runs[i.run];
            // An item inside a run has the one before it as left origin.
            let other_left = if i.off > 0 {
                Some(At {
                    off: i.off - 1,
                    ..i
                })
            } else {
                place(run.origin_left)?
            };
            let other_right = place(run.origin_right)?.unwrap_or(self.end());
            if other_left < left {
                break;
            } else if other_left == left {
                if other_right < right {
                    scanning = true;
                } else if other_right == right && id.agent < run.id.agent {
                    break;
                } else {
                    scanning = false;
                }
            }
            // The rest of this run: each item's left origin is the item before it,
            // right of ours, so each is passed over alike; the next item to judge is
            // the first of the next run (or the right origin).
            i = self.next_run(i).min(right);
        }
        Ok(dest)
    }

    /// The place after the last item.
    fn end(&self) -> At {
        At {
            chunk: self.chunks.len(),
            run: 0,
            off: 0,
        }
    }

    /// The first item's place (the end when there is none).
    fn first(&self) -> At {
        self.run_from(0, 0)
    }

    /// The place of the item after the one at `at`.
    fn after(&self, at: At) -> At {
        let run = &self.chunks[at.chunk].runs[at.run];
        if at.off + 1 < run.len {
            At {
                off: at.off + 1,
                ..at
            }
        } else {
            self.next_run(at)
        }
    }

    /// The start of the run after the one holding `at` (the end after the last).
    fn next_run(&self, at: At) -> At {
        self.run_from(at.chunk, at.run + 1)
    }

    /// The start of run `run` of chunk `chunk`, or of the first run after it.
    fn run_from(&self, mut chunk: usize, mut run: usize) -> At {
        while chunk < self.chunks.len() {
            if run < self.chunks[chunk].runs.len() {
                return At { chunk, run, off: 0 };
            }
            chunk += 1;
            run = 0;
        }
        self.end()
    }

    /// Puts `run`, holding `text`, at `at` (the start of a run, or the end), merged
    /// into the run before it when it continues it.
    fn put_run(&mut self, at: At, mut run: Run<C>, content: &C) {
        if self.chunks.is_empty() {
            self.chunks.push(Chunk::default());
        }
        let (chunk, slot) = self.slot(at).expect("a chunk");
        if let Some(before) = self.run_before(chunk, slot)
            && self.chunks[before.chunk].runs[before.run].continued_by(&run)
        {
            self.touched(before.chunk);
            let chunk = &mut self.chunks[before.chunk];
            chunk.dirty = true;
            chunk.runs[before.run].len += run.len;
            chunk.runs[before.run].content.append(content);
            chunk.bytes += content.bytes();
            chunk.items += run.len;
            chunk.visible += run.visible();
            return;
        }
        self.touched(chunk);
        run.content = content.clone();
        let chunk_ref = &mut self.chunks[chunk];
        chunk_ref.dirty = true;
        chunk_ref.bytes += content.bytes();
        chunk_ref.items += run.len;
        chunk_ref.visible += run.visible();
        chunk_ref.runs.insert(slot, run);
        self.balance(chunk);
    }

    /// The run before slot `slot` of chunk `chunk`: in it, or the last of a chunk
    /// before it.
    fn run_before(&self, chunk: usize, slot: usize) -> Option<At> {
        if slot > 0 {
            return Some(At {
                chunk,
                run: slot - 1,
                off: 0,
            });
        }
        (0..chunk).rev().find_map(|c| {
            let runs = self.chunks[c].runs.len();
            (runs > 0).then(|| At {
                chunk: c,
                run: runs - 1,
                off: 0,
            })
        })
    }

    /// Deletes up to `most` items of the run at `at`, from its offset on; answers
    /// the first id deleted and how many.
    fn delete_from(&mut self, at: At, most: u64) -> (Id, u64) {
        let at = self.split_at(at);
        let run_len = self.chunks[at.chunk].runs[at.run].len;
        let take = most.min(run_len);
        let at = if take < run_len {
            let rest = self.split_at(At { off: take, ..at });
            self.run_before(rest.chunk, rest.run)
                .expect("split: a run before")
        } else {
            at
        };
        let id = self.chunks[at.chunk].runs[at.run].id;
        self.mark_deleted(at);
        (id, take)
    }

    /// Marks the run at `at` deleted, and merges it with its neighbours in the chunk
    /// that continue it (a word typed, then deleted, becomes one run again).
    fn mark_deleted(&mut self, at: At) {
        self.touched(at.chunk);
        let chunk = &mut self.chunks[at.chunk];
        chunk.dirty = true;
        if !chunk.runs[at.run].deleted {
            chunk.visible -= chunk.runs[at.run].len;
        }
        chunk.bytes -= chunk.runs[at.run].content.bytes();
        let runs = &mut chunk.runs;
        runs[at.run].deleted = true;
        // Deleted characters order nothing: only their ids and origins stay.
        runs[at.run].content = C::default();
        let mut run = at.run;
        if run + 1 < runs.len() && runs[run].continued_by(&runs[run + 1]) {
            let next = runs.remove(run + 1);
            runs[run].len += next.len;
            let next_content = next.content;
            runs[run].content.append(&next_content);
        }
        if run > 0 && runs[run - 1].continued_by(&runs[run]) {
            let this = runs.remove(run);
            run -= 1;
            runs[run].len += this.len;
            let this_content = this.content;
            runs[run].content.append(&this_content);
        }
    }

    /// Splits a chunk in two when it grew too long (its counts are up to date);
    /// answers the number of runs left in it when it split.
    fn balance(&mut self, chunk: usize) -> Option<usize> {
        if self.chunks[chunk].runs.len() <= CHUNK_RUNS_MAX {
            return None;
        }
        // The chunks after it move along.
        self.touched(chunk);
        let half = CHUNK_RUNS_MAX / 2;
        let mut second = Chunk {
            runs: self.chunks[chunk].runs.split_off(half),
            ..Chunk::default()
        };
        second.recount();
        self.chunks[chunk].recount();
        self.chunks[chunk].dirty = true;
        self.chunks.insert(chunk + 1, second);
        Some(half)
    }

    /// Makes `at` the start of a run (splitting the run holding it); answers where
    /// that run is now (the end stays the end).
    fn split_at(&mut self, at: At) -> At {
        if at.off == 0 {
            return at;
        }
        let chunk = &mut self.chunks[at.chunk];
        chunk.dirty = true;
        let rest = chunk.runs[at.run].split(at.off);
        chunk.runs.insert(at.run + 1, rest);
        let split = self.balance(at.chunk);
        match split {
            Some(half) if at.run + 1 >= half => At {
                chunk: at.chunk + 1,
                run: at.run + 1 - half,
                off: 0,
            },
            _ => At {
                chunk: at.chunk,
                run: at.run + 1,
                off: 0,
            },
        }
    }

    /// Where the `pos`-th visible character is (the one an insert at `pos` goes
    /// before); the end when `pos` is the length.
    fn visible_place(&self, pos: u64) -> At {
        let (start, mut before) = match Cursor::unpack(self.cursor.get()) {
            Some(c) if c.chunk < self.chunks.len() && pos >= c.visible_before => {
                (c.chunk, c.visible_before)
            }
            _ => (0, 0),
        };
        for (c, chunk) in self.chunks.iter().enumerate().skip(start) {
            if pos - before >= chunk.visible {
                before += chunk.visible;
                continue;
            }
            self.cursor.set(Cursor::pack(Cursor {
                chunk: c,
                visible_before: before,
            }));
            let mut left = pos - before;
            for (r, run) in chunk.runs.iter().enumerate() {
                if left < run.visible() {
                    return At {
                        chunk: c,
                        run: r,
                        off: left,
                    };
                }
                left -= run.visible();
            }
        }
        assert_eq!(pos, before, "a place beyond the end of the text");
        At {
            chunk: self.chunks.len(),
            run: 0,
            off: 0,
        }
    }

    /// Chunk `chunk` changes: the cursor stays true only if it is at or before it.
    fn touched(&self, chunk: usize) {
        if Cursor::unpack(self.cursor.get()).is_some_and(|c| chunk < c.chunk) {
            self.cursor.set(0);
        }
    }

    /// The id of the item at `at` (`None` at the end).
    fn id_at(&self, at: At) -> Option<Id> {
        let run = self.chunks.get(at.chunk)?.runs.get(at.run)?;
        Some(run.id.plus(at.off))
    }

    /// The id of the item just before `at`, deleted or not (`None` at the start).
    fn before(&self, at: At) -> Option<Id> {
        if at.off > 0 {
            return self.id_at(At {
                off: at.off - 1,
                ..at
            });
        }
        let (chunk, slot) = self.slot(at)?;
        let before = self.run_before(chunk, slot)?;
        Some(self.chunks[before.chunk].runs[before.run].last())
    }

    /// The chunk and the slot among its runs of the run starting at `at` (after the
    /// last run, for the end); `None` when there is no chunk.
    fn slot(&self, at: At) -> Option<(usize, usize)> {
        if at.chunk < self.chunks.len() {
            return Some((at.chunk, at.run));
        }
        let last = self.chunks.len().checked_sub(1)?;
        Some((last, self.chunks[last].runs.len()))
    }

    /// Where the item `id` is, if this replica holds it.
    fn find(&self, id: Id) -> Option<At> {
        // Operations name items near the last ones found: start there, go round.
        let start = (self.found.get() as usize).min(self.chunks.len());
        let order = (start..self.chunks.len()).chain(0..start);
        for c in order {
            for (r, run) in self.chunks[c].runs.iter().enumerate() {
                if run.holds(id) {
                    self.found.set(c as u64);
                    return Some(At {
                        chunk: c,
                        run: r,
                        off: id.seq - run.id.seq,
                    });
                }
            }
        }
        None
    }
}

impl<C: Content> Sequence<C> {
    /// The items shown, in order.
    pub fn content(&self) -> C {
        let mut all = C::default();
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            if !run.deleted {
                all.append(&run.content);
            }
        }
        all
    }
}

/// Two replicas are equal when they applied the same operations (their versions)
/// and show the same items: what the CRDT promises of replicas that applied the same
/// operations, whatever their order (how runs are split in memory may differ).
impl<C: Content> PartialEq for Sequence<C> {
    fn eq(&self, other: &Sequence<C>) -> bool {
        self.version() == other.version() && self.content() == other.content()
    }
}

impl<C: Content> Eq for Sequence<C> {}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            if !run.deleted {
                f.write_str(&run.content)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Text {
        /// Every chunk's cached counts are its runs' (the counts are kept in place).
        fn assert_counts(&self) {
            for chunk in &self.chunks {
                let mut counted = chunk.clone();
                counted.recount();
                assert_eq!(
                    (chunk.items, chunk.visible),
                    (counted.items, counted.visible)
                );
                assert!(chunk.runs.len() <= CHUNK_RUNS_MAX);
            }
        }
    }

    #[test]
    fn cached_counts_stay_true_through_many_edits() {
        let (mut a, mut b) = (Text::new(), Text::new());
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n.max(1)
        };
        for _ in 0..2_000 {
            let ops = if next(3) == 0 && !a.is_empty() {
                let pos = next(a.len());
                let len = 1 + next((a.len() - pos).min(5));
                a.delete(1, pos, len.min(a.len() - pos))
            } else {
                vec![a.insert(1, next(a.len() + 1), "xyz")]
            };
            for op in &ops {
                b.apply(op).unwrap();
            }
            a.assert_counts();
            b.assert_counts();
        }
        assert_eq!(a.to_string(), b.to_string());
    }

    #[test]
    fn local_edits_read_back() {
        let mut t = Text::new();
        t.insert(1, 0, "hello");
        t.insert(1, 5, " world");
        t.insert(1, 0, "¡");
        assert_eq!(t.to_string(), "¡hello world");
        t.delete(1, 1, 5);
        assert_eq!(t.to_string(), "¡ world");
        t.insert(1, 1, "bye");
        assert_eq!(t.to_string(), "¡bye world");
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn a_list_merges_like_a_text() {
        let element = |v: &str| vec![v.to_owned()];
        let (mut a, mut b) = (List::new(), List::new());
        let base = a.insert(1, 0, vec!["1".to_owned(), "2".to_owned()]);
        b.apply(&base).unwrap();
        let from_a = a.insert(1, 1, element(r#""a""#));
        let from_b = b.delete(2, 0, 1);
        let from_b2 = b.insert(2, 1, element("true"));
        a.apply(&from_b[0]).unwrap();
        a.apply(&from_b2).unwrap();
        b.apply(&from_a).unwrap();
        assert_eq!(a.content(), b.content());
        assert_eq!(a.content(), [r#""a""#, "2", "true"]);
    }

    #[test]
    fn typing_makes_one_run() {
        let mut t = Text::new();
        for (i, c) in "a sentence typed key by key".chars().enumerate() {
            t.insert(1, i as u64, c.to_string());
        }
        assert_eq!(t.runs(), 1);
    }

    #[test]
    fn operations_apply_once_in_any_causal_order() {
        let mut a = Text::new();
        let mut ops = vec![a.insert(1, 0, "abc")];
        ops.push(a.insert(1, 1, "XY"));
        ops.extend(a.delete(1, 0, 2));
        let mut b = Text::new();
        for op in ops.iter().chain(&ops) {
            b.apply(op).unwrap();
        }
        assert_eq!(b.to_string(), a.to_string());
        assert_eq!(a.to_string(), "Ybc");
    }

    #[test]
    fn concurrent_runs_at_one_place_do_not_interleave() {
        let mut a = Text::new();
        let base = a.insert(1, 0, "[]");
        let mut b = Text::new();
        b.apply(&base).unwrap();
        let mut from_a = Vec::new();
        let mut from_b = Vec::new();
        for (i, (x, y)) in "abc".chars().zip("xyz".chars()).enumerate() {
            from_a.push(a.insert(2, 1 + i as u64, x.to_string()));
            from_b.push(b.insert(3, 1 + i as u64, y.to_string()));
        }
        for op in &from_b {
            a.apply(op).unwrap();
        }
        for op in &from_a {
            b.apply(op).unwrap();
        }
        assert_eq!(a.to_string(), b.to_string());
        assert!(
            ["[abcxyz]", "[xyzabc]"].contains(&a.to_string().as_str()),
            "{a}"
        );
    }

    #[test]
    fn an_insert_before_its_origin_is_refused() {
        let mut a = Text::new();
        let first = a.insert(1, 0, "a");
        let second = a.insert(1, 1, "b");
        let mut b = Text::new();
        assert!(b.apply(&second).is_err());
        b.apply(&first).unwrap();
        b.apply(&second).unwrap();
        assert_eq!(b.to_string(), "ab");
    }
}
