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
    /// The sequence's bytes (format 1).
    pub fn encode(&self) -> Vec<u8> {
        let runs: Vec<&Run<C>> = self.chunks.iter().flat_map(|c| &c.runs).collect();
        let mut agents: Vec<u64> = runs
            .iter()
            .flat_map(|r| [Some(r.id), r.origin_left, r.origin_right])
            .flatten()
            .chain(self.deletes.iter().flat_map(|d| [d.by, d.target]))
            .map(|id| id.agent)
            .chain(self.stamps.iter().map(|(agent, _)| *agent))
            .collect();
        agents.sort_unstable();
        agents.dedup();
        let index = |agent: u64| agents.binary_search(&agent).expect("listed") as u64;
        let mut out = vec![FORMAT];
        varint::write(&mut out, agents.len() as u64);
        for &agent in &agents {
            varint::write(&mut out, agent);
        }
        varint::write(&mut out, runs.len() as u64);
        let mut before: Option<&Run<C>> = None;
        for run in runs {
            let left_is_before =
                run.origin_left.is_some() && run.origin_left == before.map(|b| b.last());
            let right_as_before = run.origin_right.is_some()
                && run.origin_right == before.and_then(|b| b.origin_right);
            let flag = |on: bool, bit: u8| if on { bit } else { 0 };
            let flags = flag(run.deleted, DELETED)
                | flag(run.origin_left.is_some(), LEFT)
                | flag(run.origin_right.is_some(), RIGHT)
                | flag(left_is_before, LEFT_IS_BEFORE)
                | flag(right_as_before, RIGHT_AS_BEFORE);
            out.push(flags);
            for n in [index(run.id.agent), run.id.seq, run.len] {
                varint::write(&mut out, n);
            }
            let origins = [
                (run.origin_left, left_is_before),
                (run.origin_right, right_as_before),
            ];
            for (origin, implicit) in origins {
                if let (Some(id), false) = (origin, implicit) {
                    varint::write(&mut out, index(id.agent));
                    varint::write(&mut out, id.seq);
                }
            }
            if !run.deleted {
                run.content.encode(&mut out);
            }
            before = Some(run);
        }
        varint::write(&mut out, self.deletes.len() as u64);
        let mut before: Option<&Deleted> = None;
        for entry in &self.deletes {
            let follows = before.is_some_and(|b| entry.by == b.by.plus(b.len));
            let same_agent = before.is_some_and(|b| entry.target.agent == b.target.agent);
            let flag = |on: bool, bit: u8| if on { bit } else { 0 };
            out.push(flag(entry.backwards, 1) | flag(follows, 2) | flag(same_agent, 4));
            if !follows {
                varint::write(&mut out, index(entry.by.agent));
                varint::write(&mut out, entry.by.seq);
            }
            if !same_agent {
                varint::write(&mut out, index(entry.target.agent));
            }
            let from = before.map_or(0, |b| b.target(b.len - 1).seq);
            // Wrapping: any two seqs make a delta, and it reads back exactly.
            varint::write(&mut out, zigzag(entry.target.seq.wrapping_sub(from) as i64));
            varint::write(&mut out, entry.len);
            before = Some(entry);
        }
        varint::write(&mut out, self.stamps.len() as u64);
        for (agent, list) in &self.stamps {
            varint::write(&mut out, index(*agent));
            varint::write(&mut out, list.len() as u64);
            let mut last = Stamp::default();
            for stamp in list {
                varint::write(&mut out, stamp.counter - last.counter);
                varint::write(&mut out, stamp.inserts - last.inserts);
                varint::write(&mut out, stamp.deletes - last.deletes);
                last = *stamp;
            }
        }
        out
    }

    /// A sequence from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Sequence<C>, Corrupt> {
        let corrupt = |what: &str| Corrupt(what.to_owned());
        let (&format, mut input) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        if format != FORMAT {
            return Err(Corrupt(format!("unknown format {format}")));
        }
        let mut number = |what: &str| varint::read(&mut input).ok_or_else(|| corrupt(what));
        let agent_count = number("agent count")?;
        // Each agent takes a byte at least: a count beyond the input is a lie.
        if agent_count > bytes.len() as u64 {
            return Err(corrupt("agent count beyond the input"));
        }
        let agents = (0..agent_count)
            .map(|_| number("agent"))
            .collect::<Result<Vec<u64>, _>>()?;
        let id = |input: &mut &[u8]| -> Result<Id, Corrupt> {
            let agent = varint::read(input).ok_or_else(|| corrupt("agent index"))?;
            let seq = varint::read(input).ok_or_else(|| corrupt("seq"))?;
            let agent = *agents
                .get(usize::try_from(agent).unwrap_or(usize::MAX))
                .ok_or_else(|| corrupt("agent index beyond the table"))?;
            Ok(Id { agent, seq })
        };
        let run_count = varint::read(&mut input).ok_or_else(|| corrupt("run count"))?;
        if run_count > bytes.len() as u64 {
            return Err(corrupt("run count beyond the input"));
        }
        let mut text = Sequence::new();
        let mut chunk = Chunk::default();
        let mut before: Option<Run<C>> = None;
        for _ in 0..run_count {
            let (&flags, rest) = input.split_first().ok_or_else(|| corrupt("run flags"))?;
            input = rest;
            if flags & !(DELETED | LEFT | RIGHT | LEFT_IS_BEFORE | RIGHT_AS_BEFORE) != 0 {
                return Err(corrupt("unknown run flags"));
            }
            let run_id = id(&mut input)?;
            let len = varint::read(&mut input).ok_or_else(|| corrupt("run length"))?;
            if len == 0 || run_id.seq.checked_add(len).is_none() {
                return Err(corrupt("run length"));
            }
            let origin =
                |input: &mut &[u8], present: u8, implicit: u8, from_before: Option<Id>| match (
                    flags & present != 0,
                    flags & implicit != 0,
                ) {
                    (false, false) => Ok(None),
                    (false, true) => Err(corrupt("an implicit origin that is absent")),
                    (true, false) => id(input).map(Some),
                    (true, true) => from_before
                        .map(Some)
                        .ok_or_else(|| corrupt("an implicit origin with no run before")),
                };
            let origin_left = origin(
                &mut input,
                LEFT,
                LEFT_IS_BEFORE,
                before.as_ref().map(Run::<C>::last),
            )?;
            let origin_right = origin(
                &mut input,
                RIGHT,
                RIGHT_AS_BEFORE,
                before.as_ref().and_then(|b| b.origin_right),
            )?;
            let deleted = flags & DELETED != 0;
            let content = if deleted {
                C::default()
            } else {
                C::decode(&mut input, len).map_err(corrupt)?
            };
            let run = Run {
                id: run_id,
                len,
                origin_left,
                origin_right,
                deleted,
                content,
            };
            let next = text.next_seq(run.id.agent);
            *next = (*next).max(run.id.seq + len);
            before = Some(run.clone());
            chunk.runs.push(run);
            if chunk.runs.len() == CHUNK_RUNS_MAX / 2 {
                chunk.recount();
                text.chunks.push(std::mem::take(&mut chunk));
            }
        }
        let entries = varint::read(&mut input).ok_or_else(|| corrupt("count of deletes"))?;
        if entries > bytes.len() as u64 {
            return Err(corrupt("count of deletes beyond the input"));
        }
        for _ in 0..entries {
            let (&flags, rest) = input.split_first().ok_or_else(|| corrupt("delete flags"))?;
            input = rest;
            if flags > 7 {
                return Err(corrupt("unknown delete flags"));
            }
            let before = text.deletes.last().copied();
            let by = match (flags & 2 != 0, before) {
                (true, Some(b)) => b.by.plus(b.len),
                (true, None) => return Err(corrupt("a delete following none")),
                (false, _) => id(&mut input)?,
            };
            let agent = match (flags & 4 != 0, before) {
                (true, Some(b)) => b.target.agent,
                (true, None) => return Err(corrupt("a delete following none")),
                (false, _) => {
                    let index = varint::read(&mut input).ok_or_else(|| corrupt("agent index"))?;
                    *agents
                        .get(usize::try_from(index).unwrap_or(usize::MAX))
                        .ok_or_else(|| corrupt("agent index beyond the table"))?
                }
            };
            let delta = unzigzag(varint::read(&mut input).ok_or_else(|| corrupt("delete item"))?);
            let from = before.map_or(0, |b| b.target(b.len - 1).seq);
            let target = Id {
                agent,
                seq: from.wrapping_add(delta as u64),
            };
            let len = varint::read(&mut input).ok_or_else(|| corrupt("delete count"))?;
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
            let next = text.next_delete(by.agent);
            *next = (*next).max(by.seq + len);
            text.deletes.push(Deleted {
                by,
                target,
                len,
                backwards,
            });
        }
        let stamped = varint::read(&mut input).ok_or_else(|| corrupt("count of stamped agents"))?;
        if stamped > bytes.len() as u64 {
            return Err(corrupt("count of stamped agents beyond the input"));
        }
        for _ in 0..stamped {
            let index = varint::read(&mut input).ok_or_else(|| corrupt("agent index"))?;
            let agent = *agents
                .get(usize::try_from(index).unwrap_or(usize::MAX))
                .ok_or_else(|| corrupt("agent index beyond the table"))?;
            let count = varint::read(&mut input).ok_or_else(|| corrupt("count of stamps"))?;
            if count > bytes.len() as u64 {
                return Err(corrupt("count of stamps beyond the input"));
            }
            let mut last = Stamp::default();
            let mut list = Vec::new();
            for _ in 0..count {
                let mut step = || varint::read(&mut input).ok_or_else(|| corrupt("stamp"));
                let (c, i, d) = (step()?, step()?, step()?);
                let stamp = Stamp {
                    counter: last
                        .counter
                        .checked_add(c)
                        .ok_or_else(|| corrupt("stamp"))?,
                    inserts: last
                        .inserts
                        .checked_add(i)
                        .ok_or_else(|| corrupt("stamp"))?,
                    deletes: last
                        .deletes
                        .checked_add(d)
                        .ok_or_else(|| corrupt("stamp"))?,
                };
                list.push(stamp);
                last = stamp;
            }
            text.stamps.push((agent, list));
        }
        if !input.is_empty() {
            return Err(corrupt("bytes after the last run"));
        }
        if !chunk.runs.is_empty() {
            chunk.recount();
            text.chunks.push(chunk);
        }
        Ok(text)
    }
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
