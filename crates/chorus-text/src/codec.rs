//! The bytes of a sequence (format 1), for storage and transfer.
//!
//! ```text
//! format: u8 = 1
//! agents: varint n, then n varints, ascending (runs name agents by their index)
//! runs:   varint count, then per run, in document order:
//!         flags: u8   1 deleted, 2 has a left origin, 4 has a right origin,
//!                     8 its left origin is the item just before it,
//!                     16 its right origin is the run before's
//!         agent index, seq, len: varints
//!         left origin (flag 2 and not 8), right origin (flag 4 and not 16):
//!             agent index, seq: varints
//!         items (not deleted): of a text, varint byte length, then UTF-8 of exactly
//!             `len` characters; of a list, `len` times varint byte length and the
//!             element's JSON text
//! deletes: varint count, then per run of the delete log: flags (1 backwards,
//!         2 its delete ids follow the entry before's, 4 its items are of the entry
//!         before's agent), the first delete id (unless 2: agent index, seq), the
//!         first item (agent index unless 4; its seq as a zigzag varint from the
//!         entry before's last item), the count
//! stamps: varint count of agents, then per agent its index, a varint count, and
//!         per write noted: the increases of its counter, of the items it had
//!         inserted and of those it had deleted, varints
//! ```
//!
//! Deleted runs keep their ids and origins (they still order concurrent inserts) but
//! no characters; the delete log says which delete deleted which item (versions need
//! it). Decoding refuses anything else (an unknown flag, an agent out of
//! the table, a short or overlong text, trailing bytes) and never panics.

use crate::varint;
use crate::{CHUNK_RUNS_MAX, Chunk, Content, Deleted, Id, Op, Run, Sequence, Stamp};

use std::fmt;

const FORMAT: u8 = 1;
const DELETED: u8 = 1;
const LEFT: u8 = 2;
const RIGHT: u8 = 4;
const LEFT_IS_BEFORE: u8 = 8;
const RIGHT_AS_BEFORE: u8 = 16;

/// A signed number as an unsigned one, small when near zero either way.
fn zigzag(n: i64) -> u64 {
    (n.wrapping_shl(1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ (n & 1).wrapping_neg() as i64
}

/// Bytes that are not a text of this format.
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt(pub String);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an encoded text: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

impl<C: Content> Sequence<C> {
    /// The sequence's bytes (format 1). They are canonical: replicas that applied
    /// the same operations, in whatever order, encode alike (runs are written as
    /// long as they go, whatever chunks they are in; the delete log in the order of
    /// delete ids; agents' stamps in the order of agents), so digests compare them.
    pub fn encode(&self) -> Vec<u8> {
        let mut runs: Vec<Run<C>> = Vec::new();
        for run in self.chunks.iter().flat_map(|c| &c.runs) {
            match runs.last_mut() {
                Some(last) if last.continued_by(run) => {
                    last.len += run.len;
                    last.content.append(&run.content);
                }
                _ => runs.push(run.clone()),
            }
        }
        let runs: Vec<&Run<C>> = runs.iter().collect();
        let mut sorted = self.deletes.clone();
        sorted.sort_by_key(|d| d.by);
        let mut deletes: Vec<Deleted> = Vec::with_capacity(sorted.len());
        for entry in sorted {
            if !deletes.last_mut().is_some_and(|last| last.extend(&entry)) {
                deletes.push(entry);
            }
        }
        let mut stamps: Vec<&(u64, Vec<Stamp>)> =
            self.stamps.iter().filter(|(_, l)| !l.is_empty()).collect();
        stamps.sort_by_key(|(agent, _)| *agent);
        let agents = Agents::of(
            runs.iter()
                .flat_map(|r| r.ids())
                .chain(deletes.iter().flat_map(|d| [d.by, d.target]))
                .map(|id| id.agent)
                .chain(stamps.iter().map(|(agent, _)| *agent)),
        );
        let mut out = vec![FORMAT];
        agents.write(&mut out);
        write_runs(&mut out, &agents, &runs);
        write_deletes(&mut out, &agents, &deletes);
        varint::write(&mut out, stamps.len() as u64);
        for (agent, list) in stamps {
            varint::write(&mut out, agents.index(*agent));
            write_stamps(&mut out, list);
        }
        out
    }

    /// A sequence from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Sequence<C>, Corrupt> {
        let (&format, mut input) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if format != FORMAT {
            return Err(Corrupt(format!("unknown format {format}")));
        }
        let agents = Agents::read(&mut input)?;
        let runs = read_runs(&mut input, &agents)?;
        let mut text = Sequence::new();
        for part in runs.chunks(CHUNK_RUNS_MAX / 2) {
            text.push_chunk(part.to_vec(), 0);
        }
        for entry in read_deletes(&mut input, &agents)? {
            text.push_deleted(entry);
        }
        for _ in 0..count(&mut input, "count of stamped agents")? {
            let agent = agents.agent(number(&mut input, "agent index")?)?;
            let list = read_stamps(&mut input)?;
            text.stamps.push((agent, list));
        }
        if !input.is_empty() {
            return Err(corrupt("bytes after the last run"));
        }
        Ok(text)
    }

    /// Adds `runs` as the last chunk (from a decoder), noting their ids.
    pub(crate) fn push_chunk(&mut self, runs: Vec<Run<C>>, page: u64) {
        for run in &runs {
            let next = self.next_seq(run.id.agent);
            *next = (*next).max(run.id.seq + run.len);
        }
        let mut chunk = Chunk {
            runs,
            page,
            ..Chunk::default()
        };
        chunk.recount();
        self.chunks.push(chunk);
    }

    /// Adds an entry to the delete log (from a decoder), noting its delete ids.
    pub(crate) fn push_deleted(&mut self, entry: Deleted) {
        let next = self.next_delete(entry.by.agent);
        *next = (*next).max(entry.by.seq + entry.len);
        self.deletes.push(entry);
    }
}

pub(crate) fn corrupt(what: &str) -> Corrupt {
    Corrupt(what.to_owned())
}

pub(crate) fn number(input: &mut &[u8], what: &str) -> Result<u64, Corrupt> {
    varint::read(input).ok_or_else(|| corrupt(what))
}

/// A count of things that each take a byte at least: beyond the input, a lie.
pub(crate) fn count(input: &mut &[u8], what: &str) -> Result<u64, Corrupt> {
    let n = number(input, what)?;
    if n > input.len() as u64 {
        return Err(Corrupt(format!("{what} beyond the input")));
    }
    Ok(n)
}

fn byte(input: &mut &[u8], what: &str) -> Result<u8, Corrupt> {
    let (&b, rest) = input.split_first().ok_or_else(|| corrupt(what))?;
    *input = rest;
    Ok(b)
}

/// The agents an encoding names, ascending; ids name them by index.
pub(crate) struct Agents(Vec<u64>);

impl Agents {
    pub(crate) fn of(agents: impl Iterator<Item = u64>) -> Agents {
        let mut agents: Vec<u64> = agents.collect();
        agents.sort_unstable();
        agents.dedup();
        Agents(agents)
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        varint::write(out, self.0.len() as u64);
        for &agent in &self.0 {
            varint::write(out, agent);
        }
    }

    pub(crate) fn read(input: &mut &[u8]) -> Result<Agents, Corrupt> {
        let n = count(input, "agent count")?;
        (0..n)
            .map(|_| number(input, "agent"))
            .collect::<Result<Vec<u64>, _>>()
            .map(Agents)
    }

    fn index(&self, agent: u64) -> u64 {
        self.0.binary_search(&agent).expect("listed") as u64
    }

    fn agent(&self, index: u64) -> Result<u64, Corrupt> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i).copied())
            .ok_or_else(|| corrupt("agent index beyond the table"))
    }

    fn id(&self, input: &mut &[u8]) -> Result<Id, Corrupt> {
        let agent = self.agent(number(input, "agent index")?)?;
        let seq = number(input, "seq")?;
        Ok(Id { agent, seq })
    }
}

/// Runs, in order: a count, then per run its flags, id, length, origins (implied by
/// the run before when they can be) and items.
pub(crate) fn write_runs<C: Content>(out: &mut Vec<u8>, agents: &Agents, runs: &[&Run<C>]) {
    varint::write(out, runs.len() as u64);
    let mut before: Option<&Run<C>> = None;
    for run in runs {
        let left_is_before =
            run.origin_left.is_some() && run.origin_left == before.map(|b| b.last());
        let right_as_before =
            run.origin_right.is_some() && run.origin_right == before.and_then(|b| b.origin_right);
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = flag(run.deleted, DELETED)
            | flag(run.origin_left.is_some(), LEFT)
            | flag(run.origin_right.is_some(), RIGHT)
            | flag(left_is_before, LEFT_IS_BEFORE)
            | flag(right_as_before, RIGHT_AS_BEFORE);
        out.push(flags);
        for n in [agents.index(run.id.agent), run.id.seq, run.len] {
            varint::write(out, n);
        }
        let origins = [
            (run.origin_left, left_is_before),
            (run.origin_right, right_as_before),
        ];
        for (origin, implicit) in origins {
            if let (Some(id), false) = (origin, implicit) {
                varint::write(out, agents.index(id.agent));
                varint::write(out, id.seq);
            }
        }
        if !run.deleted {
            run.content.encode(out);
        }
        before = Some(run);
    }
}

pub(crate) fn read_runs<C: Content>(
    input: &mut &[u8],
    agents: &Agents,
) -> Result<Vec<Run<C>>, Corrupt> {
    let n = count(input, "run count")?;
    let mut runs: Vec<Run<C>> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let flags = byte(input, "run flags")?;
        if flags & !(DELETED | LEFT | RIGHT | LEFT_IS_BEFORE | RIGHT_AS_BEFORE) != 0 {
            return Err(corrupt("unknown run flags"));
        }
        let id = agents.id(input)?;
        let len = number(input, "run length")?;
        if len == 0 || id.seq.checked_add(len).is_none() {
            return Err(corrupt("run length"));
        }
        let before = runs.last();
        let mut origin = |present: u8, implicit: u8, from_before: Option<Id>| match (
            flags & present != 0,
            flags & implicit != 0,
        ) {
            (false, false) => Ok(None),
            (false, true) => Err(corrupt("an implicit origin that is absent")),
            (true, false) => agents.id(input).map(Some),
            (true, true) => from_before
                .map(Some)
                .ok_or_else(|| corrupt("an implicit origin with no run before")),
        };
        let origin_left = origin(LEFT, LEFT_IS_BEFORE, before.map(Run::<C>::last))?;
        let origin_right = origin(RIGHT, RIGHT_AS_BEFORE, before.and_then(|b| b.origin_right))?;
        let deleted = flags & DELETED != 0;
        let content = if deleted {
            C::default()
        } else {
            C::decode(input, len).map_err(corrupt)?
        };
        runs.push(Run {
            id,
            len,
            origin_left,
            origin_right,
            deleted,
            content,
        });
    }
    Ok(runs)
}

/// Entries of the delete log: a count, then per entry its flags (1 backwards, 2 its
/// delete ids follow the entry before's, 4 its items are of the entry before's
/// agent), the first delete id (unless 2), the first item (its agent unless 4; its
/// seq as a zigzag delta from the entry before's last item) and the count.
pub(crate) fn write_deletes(out: &mut Vec<u8>, agents: &Agents, entries: &[Deleted]) {
    varint::write(out, entries.len() as u64);
    let mut before: Option<&Deleted> = None;
    for entry in entries {
        let follows = before.is_some_and(|b| entry.by == b.by.plus(b.len));
        let same_agent = before.is_some_and(|b| entry.target.agent == b.target.agent);
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        out.push(flag(entry.backwards, 1) | flag(follows, 2) | flag(same_agent, 4));
        if !follows {
            varint::write(out, agents.index(entry.by.agent));
            varint::write(out, entry.by.seq);
        }
        if !same_agent {
            varint::write(out, agents.index(entry.target.agent));
        }
        let from = before.map_or(0, |b| b.target(b.len - 1).seq);
        // Wrapping: any two seqs make a delta, and it reads back exactly.
        varint::write(out, zigzag(entry.target.seq.wrapping_sub(from) as i64));
        varint::write(out, entry.len);
        before = Some(entry);
    }
}

pub(crate) fn read_deletes(input: &mut &[u8], agents: &Agents) -> Result<Vec<Deleted>, Corrupt> {
    let n = count(input, "count of deletes")?;
    let mut entries: Vec<Deleted> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let flags = byte(input, "delete flags")?;
        if flags > 7 {
            return Err(corrupt("unknown delete flags"));
        }
        let before = entries.last().copied();
        let by = match (flags & 2 != 0, before) {
            (true, Some(b)) => b.by.plus(b.len),
            (true, None) => return Err(corrupt("a delete following none")),
            (false, _) => agents.id(input)?,
        };
        let agent = match (flags & 4 != 0, before) {
            (true, Some(b)) => b.target.agent,
            (true, None) => return Err(corrupt("a delete following none")),
            (false, _) => agents.agent(number(input, "agent index")?)?,
        };
        let delta = unzigzag(number(input, "delete item")?);
        let from = before.map_or(0, |b| b.target(b.len - 1).seq);
        let target = Id {
            agent,
            seq: from.wrapping_add(delta as u64),
        };
        let len = number(input, "delete count")?;
        let backwards = flags & 1 != 0;
        let fits = len > 0
            && by.seq.checked_add(len).is_some()
            && if backwards {
                target.seq >= len - 1
            } else {
                target.seq.checked_add(len).is_some()
            };
        if !fits {
            return Err(corrupt("delete count"));
        }
        entries.push(Deleted {
            by,
            target,
            len,
            backwards,
        });
    }
    Ok(entries)
}

/// One agent's stamps: a count, then per stamp the increases of its counter, of the
/// items inserted and of those deleted.
pub(crate) fn write_stamps(out: &mut Vec<u8>, stamps: &[Stamp]) {
    varint::write(out, stamps.len() as u64);
    let mut last = Stamp::default();
    for stamp in stamps {
        varint::write(out, stamp.counter - last.counter);
        varint::write(out, stamp.inserts - last.inserts);
        varint::write(out, stamp.deletes - last.deletes);
        last = *stamp;
    }
}

pub(crate) fn read_stamps(input: &mut &[u8]) -> Result<Vec<Stamp>, Corrupt> {
    let n = count(input, "count of stamps")?;
    let mut last = Stamp::default();
    let mut list = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut step = |from: u64| {
            from.checked_add(number(input, "stamp")?)
                .ok_or_else(|| corrupt("stamp"))
        };
        let stamp = Stamp {
            counter: step(last.counter)?,
            inserts: step(last.inserts)?,
            deletes: step(last.deletes)?,
        };
        list.push(stamp);
        last = stamp;
    }
    Ok(list)
}

/// Writes operations (as a CRDT delta carries them): a count, then per operation
/// `1 agent seq flags [left: agent seq] [right: agent seq] count items` for an insert
/// (flags: 1 has a left origin, 2 has a right origin; items as in a run) or `2 agent
/// seq len by_agent by_seq` for a delete, all varints.
pub fn encode_ops<C: Content>(ops: &[Op<C>], out: &mut Vec<u8>) {
    let id = |out: &mut Vec<u8>, id: Id| {
        varint::write(out, id.agent);
        varint::write(out, id.seq);
    };
    varint::write(out, ops.len() as u64);
    for op in ops {
        match op {
            Op::Insert {
                id: first,
                origin_left,
                origin_right,
                content,
            } => {
                out.push(1);
                id(out, *first);
                out.push(u8::from(origin_left.is_some()) | u8::from(origin_right.is_some()) << 1);
                for origin in [origin_left, origin_right].into_iter().flatten() {
                    id(out, *origin);
                }
                varint::write(out, content.count());
                content.encode(out);
            }
            Op::Delete { id: first, len, by } => {
                out.push(2);
                id(out, *first);
                varint::write(out, *len);
                id(out, *by);
            }
        }
    }
}

/// Reads operations [`encode_ops`] wrote, from the front of `input`.
pub fn decode_ops<C: Content>(input: &mut &[u8]) -> Result<Vec<Op<C>>, Corrupt> {
    let corrupt = |what: &str| Corrupt(what.to_owned());
    let number = |input: &mut &[u8], what: &str| varint::read(input).ok_or_else(|| corrupt(what));
    let id = |input: &mut &[u8]| -> Result<Id, Corrupt> {
        Ok(Id {
            agent: number(input, "agent")?,
            seq: number(input, "seq")?,
        })
    };
    let count = number(input, "count of operations")?;
    // Each operation takes bytes: a count beyond the input is a lie.
    if count > input.len() as u64 {
        return Err(corrupt("count of operations beyond the input"));
    }
    let mut ops = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (&tag, rest) = input.split_first().ok_or_else(|| corrupt("operation"))?;
        *input = rest;
        let op = match tag {
            1 => {
                let first = id(input)?;
                let (&flags, rest) = input.split_first().ok_or_else(|| corrupt("origins"))?;
                *input = rest;
                if flags > 3 {
                    return Err(corrupt("unknown origin flags"));
                }
                let origin_left = (flags & 1 != 0).then(|| id(input)).transpose()?;
                let origin_right = (flags & 2 != 0).then(|| id(input)).transpose()?;
                let len = number(input, "item count")?;
                if len == 0 || first.seq.checked_add(len).is_none() {
                    return Err(corrupt("item count"));
                }
                Op::Insert {
                    id: first,
                    origin_left,
                    origin_right,
                    content: C::decode(input, len).map_err(corrupt)?,
                }
            }
            2 => {
                let first = id(input)?;
                let len = number(input, "delete count")?;
                let by = id(input)?;
                if len == 0
                    || first.seq.checked_add(len).is_none()
                    || by.seq.checked_add(len).is_none()
                {
                    return Err(corrupt("delete count"));
                }
                Op::Delete { id: first, len, by }
            }
            _ => return Err(corrupt("unknown operation")),
        };
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::{decode_ops, encode_ops};
    use crate::{List, Text};

    #[test]
    fn a_small_text_decodes_and_bad_bytes_are_named() {
        // One agent (1); one run of two characters with no origins.
        let two = b"\x01\x01\x01\x01\x00\x00\x00\x02\x02hi\x00\x00";
        assert_eq!(Text::decode(two).unwrap().to_string(), "hi");
        let refused = |bytes: &[u8]| Text::decode(bytes).unwrap_err().0;
        assert_eq!(refused(b""), "empty");
        assert_eq!(refused(b"\x02"), "unknown format 2");
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x40\x00\x00\x02\x02hi"),
            "unknown run flags"
        );
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x00\x05\x00\x02\x02hi"),
            "agent index beyond the table"
        );
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x00\x00\x00\x03\x02hi"),
            "text of another length than its run"
        );
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x00\x00\x00\x02\x02hi\x00\x00!"),
            "bytes after the last run"
        );
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x08\x00\x00\x02\x02hi"),
            "an implicit origin that is absent"
        );
        assert_eq!(
            refused(b"\x01\x01\x01\x01\x0a\x00\x00\x02\x02hi"),
            "an implicit origin with no run before"
        );
    }

    #[test]
    fn a_list_decodes_to_itself() {
        let mut list = List::new();
        list.insert(1, 0, vec!["1".to_owned(), r#"{"a":[2]}"#.to_owned()]);
        list.insert(2, 1, vec![r#""x""#.to_owned()]);
        list.delete(1, 0, 1);
        let decoded = List::decode(&list.encode()).unwrap();
        assert_eq!(decoded.content(), [r#""x""#, r#"{"a":[2]}"#]);
        assert_eq!(decoded.version(), list.version());
        assert!(List::decode(b"\x01\x01\x01\x01\x00\x00\x00\x09\x00").is_err());
    }

    /// Operations round-trip; every cut and unknown tag is refused.
    #[test]
    fn operations_round_trip_and_bad_bytes_are_refused() {
        let mut text = Text::new();
        let mut ops = vec![text.insert(7, 0, "héllo"), text.insert(1 << 40, 2, "x")];
        ops.extend(text.delete(7, 1, 3));
        let mut bytes = Vec::new();
        encode_ops(&ops, &mut bytes);
        let mut input = bytes.as_slice();
        assert_eq!(decode_ops::<String>(&mut input).unwrap(), ops);
        assert!(input.is_empty());
        for cut in 0..bytes.len() {
            assert!(
                decode_ops::<String>(&mut &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(decode_ops::<String>(&mut &b"\x01\x03"[..]).is_err());
    }
}
