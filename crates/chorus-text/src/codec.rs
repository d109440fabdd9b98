//! The bytes of a text (format 1), for storage and transfer.
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
//!         text (not deleted): varint byte length, UTF-8 of exactly `len` characters
//! ```
//!
//! Deleted runs keep their ids and origins (they still order concurrent inserts) but
//! no characters. Decoding refuses anything else (an unknown flag, an agent out of
//! the table, a short or overlong text, trailing bytes) and never panics.

use crate::{CHUNK_RUNS_MAX, Chunk, Id, Run, Text};
use chorus_core::varint;
use std::fmt;

const FORMAT: u8 = 1;
const DELETED: u8 = 1;
const LEFT: u8 = 2;
const RIGHT: u8 = 4;
const LEFT_IS_BEFORE: u8 = 8;
const RIGHT_AS_BEFORE: u8 = 16;

/// Bytes that are not a text of this format.
#[derive(Debug, PartialEq, Eq)]
pub struct Corrupt(pub String);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an encoded text: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

impl Text {
    /// The text's bytes (format 1).
    pub fn encode(&self) -> Vec<u8> {
        let runs: Vec<&Run> = self.chunks.iter().flat_map(|c| &c.runs).collect();
        let mut agents: Vec<u64> = runs
            .iter()
            .flat_map(|r| [Some(r.id), r.origin_left, r.origin_right])
            .flatten()
            .map(|id| id.agent)
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
        let mut before: Option<&Run> = None;
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
                varint::write(&mut out, run.text.len() as u64);
                out.extend_from_slice(run.text.as_bytes());
            }
            before = Some(run);
        }
        out
    }

    /// A text from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Text, Corrupt> {
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
        let mut text = Text::new();
        let mut chunk = Chunk::default();
        let mut before: Option<Run> = None;
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
                before.as_ref().map(Run::last),
            )?;
            let origin_right = origin(
                &mut input,
                RIGHT,
                RIGHT_AS_BEFORE,
                before.as_ref().and_then(|b| b.origin_right),
            )?;
            let deleted = flags & DELETED != 0;
            let content = if deleted {
                String::new()
            } else {
                let bytes_len = varint::read(&mut input).ok_or_else(|| corrupt("text length"))?;
                let bytes_len = usize::try_from(bytes_len).unwrap_or(usize::MAX);
                if bytes_len > input.len() {
                    return Err(corrupt("text beyond the input"));
                }
                let (utf8, rest) = input.split_at(bytes_len);
                input = rest;
                let content = std::str::from_utf8(utf8).map_err(|_| corrupt("text not UTF-8"))?;
                if content.chars().count() as u64 != len {
                    return Err(corrupt("text of another length than its run"));
                }
                content.to_owned()
            };
            let run = Run {
                id: run_id,
                len,
                origin_left,
                origin_right,
                deleted,
                text: content,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_text_decodes_and_bad_bytes_are_named() {
        // One agent (1); one run of two characters with no origins.
        let two = b"\x01\x01\x01\x01\x00\x00\x00\x02\x02hi";
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
            refused(b"\x01\x01\x01\x01\x00\x00\x00\x02\x02hi!"),
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
}
