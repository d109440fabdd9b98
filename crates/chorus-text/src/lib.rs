//! The sequence CRDT of text (and, later, list) fields: every replica that applies
//! the same operations, in any causal order, holds the same sequence, and runs typed
//! concurrently at one place never interleave (`docs/design/text.md`).
//!
//! Each character is an *item* with an [`Id`] (the agent that inserted it, and how
//! many items that agent had inserted before), the ids of its neighbours when it was
//! inserted (its left and right *origins*), and a deleted mark. Concurrent inserts
//! are ordered by the FugueMax rule (Weidner and Kleppmann, "The Art of the Fugue",
//! 2023), in the form of the YjsMod integration: among items with the same left
//! origin, one whose right origin lies further left goes first ... see
//! [`Text::integrate`]. Deletes only mark items, so they commute and repeat
//! harmlessly.
//!
//! Items are stored in *runs*: consecutive ids of one agent, typed left to right
//! (each item's left origin the one before it, all sharing one right origin), with one
//! deletion state. Runs are kept in chunks with cached counts, so finding a position
//! costs a scan of the chunks and of one chunk's runs.
//!
//! **Invariants:** a run's items are contiguous in the sequence; every origin an
//! applied insert names is present (operations are applied in causal order: an insert
//! after its origins, a delete after the inserts it deletes).

use std::collections::HashMap;
use std::fmt;

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
}

/// A change, as replicas exchange it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `text` inserted as one run: its first character with these origins, each next
    /// one right after the one before.
    Insert {
        id: Id,
        origin_left: Option<Id>,
        origin_right: Option<Id>,
        text: String,
    },
    /// The items `id .. id + len` (of one agent) deleted.
    Delete { id: Id, len: u64 },
}

/// An operation names an item this replica does not hold: it was applied before one
/// it depends on.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing(pub Id);

#[derive(Clone, Debug)]
struct Run {
    id: Id,
    len: u64,
    origin_left: Option<Id>,
    origin_right: Option<Id>,
    deleted: bool,
    text: String,
}

impl Run {
    fn visible(&self) -> u64 {
        if self.deleted { 0 } else { self.len }
    }

    fn holds(&self, id: Id) -> bool {
        id.agent == self.id.agent && id.seq >= self.id.seq && id.seq < self.id.seq + self.len
    }

    fn last(&self) -> Id {
        self.id.plus(self.len - 1)
    }

    /// Splits off the items from `off` on (`0 < off < len`).
    fn split(&mut self, off: u64) -> Run {
        let text = self.text.split_off(byte_offset(&self.text, off));
        let rest = Run {
            id: self.id.plus(off),
            len: self.len - off,
            origin_left: Some(self.id.plus(off - 1)),
            origin_right: self.origin_right,
            deleted: self.deleted,
            text,
        };
        self.len = off;
        rest
    }

    /// Whether `next` continues this run: typed right after its last item, and
    /// deleted or not alike.
    fn continued_by(&self, next: &Run) -> bool {
        self.deleted == next.deleted
            && next.id == self.id.plus(self.len)
            && next.origin_left == Some(self.last())
            && next.origin_right == self.origin_right
    }
}

/// The byte offset of character `chars` of `text`.
fn byte_offset(text: &str, chars: u64) -> usize {
    text.char_indices()
        .nth(chars as usize)
        .map_or(text.len(), |(byte, _)| byte)
}

/// Runs, with their counts.
#[derive(Clone, Debug, Default)]
struct Chunk {
    runs: Vec<Run>,
    items: u64,
    visible: u64,
}

impl Chunk {
    fn recount(&mut self) {
        self.items = self.runs.iter().map(|r| r.len).sum();
        self.visible = self.runs.iter().map(Run::visible).sum();
    }
}

/// Runs a chunk holds before it splits in two.
const CHUNK_RUNS_MAX: usize = 128;

/// Where an item is: its chunk, its run, its offset in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At {
    chunk: usize,
    run: usize,
    off: u64,
}

/// A text replica.
#[derive(Clone, Debug, Default)]
pub struct Text {
    chunks: Vec<Chunk>,
    /// Per agent, the seq of its next item (how many it inserted).
    next: HashMap<u64, u64>,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Characters shown.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.visible).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items held, deleted ones included.
    fn items(&self) -> u64 {
        self.chunks.iter().map(|c| c.items).sum()
    }

    /// Runs held (for measures of the encoding).
    pub fn runs(&self) -> usize {
        self.chunks.iter().map(|c| c.runs.len()).sum()
    }

    /// Inserts `text` at character `pos` (at most [`Text::len`]) as `agent`; answers
    /// the operation to send to the other replicas.
    pub fn insert(&mut self, agent: u64, pos: u64, text: &str) -> Op {
        assert!(pos <= self.len(), "insert at {pos} of {}", self.len());
        let len = text.chars().count() as u64;
        let index = self.index_of_visible(pos);
        let origin_left = index.checked_sub(1).map(|i| self.id_at(i));
        let origin_right = (index < self.items()).then(|| self.id_at(index));
        let next = self.next.entry(agent).or_insert(0);
        let id = Id { agent, seq: *next };
        *next += len;
        let op = Op::Insert {
            id,
            origin_left,
            origin_right,
            text: text.to_owned(),
        };
        if len > 0 {
            self.put_run(
                index,
                Run {
                    id,
                    len,
                    origin_left,
                    origin_right,
                    deleted: false,
                    text: text.to_owned(),
                },
            );
        }
        op
    }

    /// Deletes `len` characters from character `pos`; answers the operations to send
    /// (one per run of ids).
    pub fn delete(&mut self, pos: u64, len: u64) -> Vec<Op> {
        assert!(
            pos + len <= self.len(),
            "delete {pos}+{len} of {}",
            self.len()
        );
        let mut ops: Vec<Op> = Vec::new();
        let mut left = len;
        while left > 0 {
            let index = self.index_of_visible(pos);
            let at = self.boundary(index);
            let run_len = self.chunks[at.chunk].runs[at.run].len;
            let take = left.min(run_len);
            if take < run_len {
                self.boundary(index + take);
            }
            let at = self.locate(index);
            let id = self.chunks[at.chunk].runs[at.run].id;
            self.mark_deleted(at);
            match ops.last_mut() {
                Some(Op::Delete { id: last, len }) if last.plus(*len) == id => *len += take,
                _ => ops.push(Op::Delete { id, len: take }),
            }
            left -= take;
        }
        ops
    }

    /// Applies an operation of another replica (or again one of this one: nothing
    /// changes).
    pub fn apply(&mut self, op: &Op) -> Result<(), Missing> {
        match op {
            Op::Insert {
                id,
                origin_left,
                origin_right,
                text,
            } => {
                let len = text.chars().count() as u64;
                if len == 0 || self.find(*id).is_some() {
                    return Ok(());
                }
                let index = self.integrate(*id, *origin_left, *origin_right)?;
                self.put_run(
                    index,
                    Run {
                        id: *id,
                        len,
                        origin_left: *origin_left,
                        origin_right: *origin_right,
                        deleted: false,
                        text: text.clone(),
                    },
                );
                let next = self.next.entry(id.agent).or_insert(0);
                *next = (*next).max(id.seq + len);
                Ok(())
            }
            Op::Delete { id, len } => {
                let mut done = 0;
                while done < *len {
                    let part = id.plus(done);
                    let at = self.find(part).ok_or(Missing(part))?;
                    let index = self.index_at(at);
                    let at = self.boundary(index);
                    let run_len = self.chunks[at.chunk].runs[at.run].len;
                    let take = (*len - done).min(run_len);
                    if take < run_len {
                        self.boundary(index + take);
                    }
                    self.mark_deleted(self.locate(index));
                    done += take;
                }
                Ok(())
            }
        }
    }

    /// Where an item with these origins goes among the items already here (its index
    /// in the sequence, deleted items counted): right of its left origin, left of its
    /// right origin, and, among items inserted concurrently between the two, by the
    /// FugueMax order (YjsMod integration).
    fn integrate(
        &self,
        id: Id,
        origin_left: Option<Id>,
        origin_right: Option<Id>,
    ) -> Result<u64, Missing> {
        let items = self.items();
        let index_of = |origin: Option<Id>, none: i64| -> Result<i64, Missing> {
            match origin {
                None => Ok(none),
                Some(o) => Ok(self.index_at(self.find(o).ok_or(Missing(o))?) as i64),
            }
        };
        let left = index_of(origin_left, -1)?;
        let right = index_of(origin_right, items as i64)? as u64;
        let mut dest = (left + 1) as u64;
        let mut scanning = false;
        let mut i = dest;
        loop {
            if !scanning {
                dest = i;
            }
            if i >= items || i >= right {
                break;
            }
            let at = self.locate(i);
            let run = &self.chunks[at.chunk].runs[at.run];
            // An item inside a run has the one before it as left origin.
            let other_left = if at.off > 0 {
                i as i64 - 1
            } else {
                index_of(run.origin_left, -1)?
            };
            let other_right = index_of(run.origin_right, items as i64)? as u64;
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
            i = (i + run.len - at.off).min(right);
        }
        Ok(dest)
    }

    /// Puts `run` at item index `index`, merged into the run before it when it
    /// continues it.
    fn put_run(&mut self, index: u64, run: Run) {
        let at = self.boundary(index);
        let (chunk, slot) = if at.chunk < self.chunks.len() {
            (at.chunk, at.run)
        } else if let Some(last) = self.chunks.len().checked_sub(1) {
            (last, self.chunks[last].runs.len())
        } else {
            self.chunks.push(Chunk::default());
            (0, 0)
        };
        // The run before the slot: in this chunk, or at the end of the one before.
        let before = match (slot, chunk) {
            (0, 0) => None,
            (0, c) => Some((c - 1, self.chunks[c - 1].runs.len() - 1)),
            (s, c) => Some((c, s - 1)),
        };
        if let Some((c, r)) = before
            && self.chunks[c].runs[r].continued_by(&run)
        {
            let chunk = &mut self.chunks[c];
            chunk.runs[r].len += run.len;
            chunk.runs[r].text.push_str(&run.text);
            chunk.items += run.len;
            chunk.visible += run.visible();
            return;
        }
        self.chunks[chunk].runs.insert(slot, run);
        self.balance(chunk);
    }

    /// Marks the run at `at` deleted, and merges it with its neighbours in the chunk
    /// that continue it (a word typed, then deleted, becomes one run again).
    fn mark_deleted(&mut self, at: At) {
        let runs = &mut self.chunks[at.chunk].runs;
        runs[at.run].deleted = true;
        let mut run = at.run;
        if run + 1 < runs.len() && runs[run].continued_by(&runs[run + 1]) {
            let next = runs.remove(run + 1);
            runs[run].len += next.len;
            runs[run].text.push_str(&next.text);
        }
        if run > 0 && runs[run - 1].continued_by(&runs[run]) {
            let this = runs.remove(run);
            run -= 1;
            runs[run].len += this.len;
            runs[run].text.push_str(&this.text);
        }
        self.chunks[at.chunk].recount();
    }

    /// Recounts a chunk that changed, and splits it in two when it grew too long.
    fn balance(&mut self, chunk: usize) {
        self.chunks[chunk].recount();
        if self.chunks[chunk].runs.len() > CHUNK_RUNS_MAX {
            let mut second = Chunk {
                runs: self.chunks[chunk].runs.split_off(CHUNK_RUNS_MAX / 2),
                ..Chunk::default()
            };
            second.recount();
            self.chunks[chunk].recount();
            self.chunks.insert(chunk + 1, second);
        }
    }

    /// Makes item index `index` the start of a run (splitting the run holding it);
    /// answers where that run is (`chunks.len()` as chunk when `index` is the end).
    fn boundary(&mut self, index: u64) -> At {
        let at = self.locate(index);
        if at.off == 0 {
            return at;
        }
        let chunk = &mut self.chunks[at.chunk];
        let rest = chunk.runs[at.run].split(at.off);
        chunk.runs.insert(at.run + 1, rest);
        self.balance(at.chunk);
        self.locate(index)
    }

    /// Where item index `index` is; the end when it is [`Text::items`].
    fn locate(&self, mut index: u64) -> At {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if index >= chunk.items {
                index -= chunk.items;
                continue;
            }
            for (r, run) in chunk.runs.iter().enumerate() {
                if index < run.len {
                    return At {
                        chunk: c,
                        run: r,
                        off: index,
                    };
                }
                index -= run.len;
            }
        }
        At {
            chunk: self.chunks.len(),
            run: 0,
            off: 0,
        }
    }

    /// The item index of a place.
    fn index_at(&self, at: At) -> u64 {
        let chunks: u64 = self.chunks[..at.chunk].iter().map(|c| c.items).sum();
        let runs: u64 = self
            .chunks
            .get(at.chunk)
            .map_or(0, |c| c.runs[..at.run].iter().map(|r| r.len).sum());
        chunks + runs + at.off
    }

    /// The item index of the `pos`-th visible character (the one an insert at `pos`
    /// goes before); [`Text::items`] when `pos` is the length.
    fn index_of_visible(&self, mut pos: u64) -> u64 {
        let mut index = 0;
        for chunk in &self.chunks {
            if pos >= chunk.visible {
                pos -= chunk.visible;
                index += chunk.items;
                continue;
            }
            for run in &chunk.runs {
                if pos < run.visible() {
                    return index + pos;
                }
                pos -= run.visible();
                index += run.len;
            }
        }
        index
    }

    fn id_at(&self, index: u64) -> Id {
        let at = self.locate(index);
        self.chunks[at.chunk].runs[at.run].id.plus(at.off)
    }

    /// Where the item `id` is, if this replica holds it.
    fn find(&self, id: Id) -> Option<At> {
        for (c, chunk) in self.chunks.iter().enumerate() {
            for (r, run) in chunk.runs.iter().enumerate() {
                if run.holds(id) {
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

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            if !run.deleted {
                f.write_str(&run.text)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_edits_read_back() {
        let mut t = Text::new();
        t.insert(1, 0, "hello");
        t.insert(1, 5, " world");
        t.insert(1, 0, "¡");
        assert_eq!(t.to_string(), "¡hello world");
        t.delete(1, 5);
        assert_eq!(t.to_string(), "¡ world");
        t.insert(1, 1, "bye");
        assert_eq!(t.to_string(), "¡bye world");
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn typing_makes_one_run() {
        let mut t = Text::new();
        for (i, c) in "a sentence typed key by key".chars().enumerate() {
            t.insert(1, i as u64, &c.to_string());
        }
        assert_eq!(t.runs(), 1);
    }

    #[test]
    fn operations_apply_once_in_any_causal_order() {
        let mut a = Text::new();
        let mut ops = vec![a.insert(1, 0, "abc")];
        ops.push(a.insert(1, 1, "XY"));
        ops.extend(a.delete(0, 2));
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
            from_a.push(a.insert(2, 1 + i as u64, &x.to_string()));
            from_b.push(b.insert(3, 1 + i as u64, &y.to_string()));
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
