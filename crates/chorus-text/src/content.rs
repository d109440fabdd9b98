//! What a sequence holds: the characters of a text field, or the elements of a list
//! field (each the JSON text of a value: what a value is, is the document's business).

use crate::varint;
use std::fmt;

/// The items of a run of a sequence.
pub trait Content: Clone + Default + fmt::Debug + PartialEq {
    /// Items held.
    fn count(&self) -> u64;
    /// Bytes they take (for size limits).
    fn bytes(&self) -> u64;
    /// Splits off the items from `at` on (`at` at most [`Content::count`]).
    fn split_off(&mut self, at: u64) -> Self;
    /// The items in consecutive pieces of at most `max` (at least 1), in one pass.
    fn pieces(self, max: u64) -> Vec<Self>;
    /// Appends `other`'s items.
    fn append(&mut self, other: &Self);
    /// Writes the items.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads exactly `count` items; why not, when it cannot.
    fn decode(input: &mut &[u8], count: u64) -> Result<Self, &'static str>;
}

/// Characters: positions and counts are Unicode code points.
impl Content for String {
    fn count(&self) -> u64 {
        self.chars().count() as u64
    }

    fn bytes(&self) -> u64 {
        self.len() as u64
    }

    fn split_off(&mut self, at: u64) -> String {
        let byte = self
            .char_indices()
            .nth(at as usize)
            .map_or(self.len(), |(byte, _)| byte);
        String::split_off(self, byte)
    }

    fn pieces(self, max: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut piece = String::new();
        let mut count = 0;
        for c in self.chars() {
            if count == max {
                out.push(std::mem::take(&mut piece));
                count = 0;
            }
            piece.push(c);
            count += 1;
        }
        out.push(piece);
        out
    }

    fn append(&mut self, other: &String) {
        self.push_str(other);
    }

    fn encode(&self, out: &mut Vec<u8>) {
        varint::write(out, self.len() as u64);
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(input: &mut &[u8], count: u64) -> Result<String, &'static str> {
        let bytes = read_bytes(input)?;
        let text = std::str::from_utf8(bytes).map_err(|_| "text not UTF-8")?;
        if text.chars().count() as u64 != count {
            return Err("text of another length than its run");
        }
        Ok(text.to_owned())
    }
}

/// List elements, each the JSON text of a value.
impl Content for Vec<String> {
    fn count(&self) -> u64 {
        self.len() as u64
    }

    fn bytes(&self) -> u64 {
        self.iter().map(|e| e.len() as u64 + 1).sum()
    }

    fn split_off(&mut self, at: u64) -> Vec<String> {
        Vec::split_off(self, at as usize)
    }

    fn pieces(self, max: u64) -> Vec<Vec<String>> {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        self.chunks(max).map(<[String]>::to_vec).collect()
    }

    fn append(&mut self, other: &Vec<String>) {
        self.extend_from_slice(other);
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for element in self {
            element.encode(out);
        }
    }

    fn decode(input: &mut &[u8], count: u64) -> Result<Vec<String>, &'static str> {
        // Each element takes a byte at least: a count beyond the input is a lie.
        if count > input.len() as u64 {
            return Err("elements beyond the input");
        }
        (0..count)
            .map(|_| {
                let bytes = read_bytes(input)?;
                let text = std::str::from_utf8(bytes).map_err(|_| "element not UTF-8")?;
                Ok(text.to_owned())
            })
            .collect()
    }
}

/// A varint length, then that many bytes.
fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    let len = varint::read(input).ok_or("byte length")?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > input.len() {
        return Err("bytes beyond the input");
    }
    let (bytes, rest) = input.split_at(len);
    *input = rest;
    Ok(bytes)
}
