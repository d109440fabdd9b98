//! The byte format of CRDT documents (stored as a version's value) and deltas
//! (carried by an op's value). Core owns it because the key state applies deltas.
//!
//! ```text
//! state  = marker:u8 format:u8 nodes map      marker 0x01, or 0x03 when nothing shows
//! delta  = 0x02 format:u8 n:varint n × change
//! nodes  = n:varint n × node:u64le                           increasing
//! map    = n:varint n × (name:bytes kind:u8 field)          sorted, no repeats
//! field  = counter: n × (dot total:zigzag) | bounded: n × (node rights)
//!        | set: n × (element:bytes dots) | mvreg: n × (dot value:bytes)
//!        | lwwreg: n × (dot hlc:varint value:bytes) | flag: dots | map: map
//!        | text, list: dots (the writes that made it present) sequence:bytes
//! dots   = n:varint n × dot          dot = node counter:varint
//! rights = added:varint spent:varint n × (to:node amount:varint)
//! change = depth:varint depth × name:bytes action:u8 payload
//! bytes  = len:varint len × u8
//! node   = in a state: index:varint into `nodes`; in a delta: u64le
//! ```
//!
//! A state names each node once, in its `nodes` table, and its dots by index: a
//! dot then takes two or three bytes instead of ten. Kinds are 1..=9 in
//! [`Kind::ALL`] order; actions 1..=11 in [`Action`] order. A sequence is in
//! `chorus_text`'s format (its own table of nodes), and a text or list action
//! carries its operations in `chorus_text::encode_ops`'s.
//! Decoding refuses anything out of order, repeated, empty, nested deeper than
//! [`PATH_DEPTH_MAX`] or followed by trailing bytes: those are [`Corrupted`].

use super::bounded::{Bounded, Rights};
use super::dots::DotFun;
use super::map::{Action, Change, Delta, Field, Kind, Map};
use super::{
    Corrupted, DELTA_MARKER, FORMAT, HIDDEN_STATE_MARKER, PAGED_FORMAT, PATH_DEPTH_MAX,
    STATE_MARKER, Sequenced,
};
use crate::{Dot, Hlc, NodeId, varint};
use chorus_text::{Content, Saved, Sequence, decode_ops, encode_ops};
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};

pub fn encode_state(doc: &Map) -> Vec<u8> {
    write_state(doc, FORMAT, &Sequences::Whole)
}

/// A state as the store keeps it (format 2): each text and list as the header of
/// its pages, saved (`Sequence::save`) with what changed since the last save handed
/// to `pages` with the field's path. What an operation writes then grows with what
/// it changed, not with the document.
pub fn save_state(doc: &mut Map, pages: &mut dyn FnMut(&[String], Saved)) -> Vec<u8> {
    let mut headers = HashMap::new();
    save_sequences(doc, &mut Vec::new(), &mut headers, pages);
    write_state(doc, PAGED_FORMAT, &Sequences::Headers(&headers))
}

/// A state [`save_state`] wrote, its pages read by `page(path, id)`.
pub fn load_state<'a>(bytes: &'a [u8], page: &'a mut PageReader<'a>) -> Result<Map, Corrupted> {
    // States written before the store kept pages hold their sequences whole.
    if bytes.get(1) == Some(&FORMAT) {
        return decode_state(bytes);
    }
    read_state(bytes, PAGED_FORMAT, Some(page))
}

/// Saves every text and list under `map` (at `path`), noting their headers.
fn save_sequences(
    map: &mut Map,
    path: &mut Vec<String>,
    headers: &mut HashMap<Vec<String>, Vec<u8>>,
    pages: &mut dyn FnMut(&[String], Saved),
) {
    for ((name, _), field) in map.fields.iter_mut() {
        path.push(name.clone());
        let saved = match field {
            Field::Text(t) => Some(t.items.save()),
            Field::List(l) => Some(l.items.save()),
            Field::Map(inner) => {
                save_sequences(inner, path, headers, pages);
                None
            }
            _ => None,
        };
        if let Some(mut saved) = saved {
            headers.insert(path.clone(), std::mem::take(&mut saved.header));
            pages(path, saved);
        }
        path.pop();
    }
}

/// Reads page `id` of the text or list at a path (`None`: it is missing).
pub type PageReader<'a> = dyn FnMut(&[String], u64) -> Option<Vec<u8>> + 'a;

/// How a state writes its texts and lists: whole, or as the headers of their pages.
enum Sequences<'a> {
    Whole,
    Headers(&'a HashMap<Vec<String>, Vec<u8>>),
}

fn write_state(doc: &Map, format: u8, sequences: &Sequences) -> Vec<u8> {
    let marker = match doc.is_shown() {
        true => STATE_MARKER,
        false => HIDDEN_STATE_MARKER,
    };
    let mut out = vec![marker, format];
    let mut nodes = BTreeSet::new();
    collect_nodes(doc, &mut nodes);
    varint::write(&mut out, nodes.len() as u64);
    for node in &nodes {
        out.extend_from_slice(&node.0.to_le_bytes());
    }
    let table = Table::Indexed(nodes.into_iter().zip(0..).collect());
    write_map(&mut out, doc, &table, sequences, &mut Vec::new());
    out
}

pub fn decode_state(bytes: &[u8]) -> Result<Map, Corrupted> {
    read_state(bytes, FORMAT, None)
}

fn read_state<'a>(
    bytes: &'a [u8],
    format: u8,
    pages: Option<&'a mut PageReader<'a>>,
) -> Result<Map, Corrupted> {
    let marker = match bytes.first() {
        Some(&HIDDEN_STATE_MARKER) => HIDDEN_STATE_MARKER,
        _ => STATE_MARKER,
    };
    let mut r = Reader::after_header(bytes, marker, format)?;
    r.pages = pages;
    let mut nodes = Vec::new();
    for _ in 0..r.count()? {
        let node = r.node()?;
        if nodes.last().is_some_and(|last| *last >= node) {
            return Err(r.corrupt("node table out of order"));
        }
        nodes.push(node);
    }
    r.nodes = Some(nodes);
    let map = r.map(0)?;
    r.finish()?;
    if map.is_shown() != (marker == STATE_MARKER) {
        return Err(Corrupted(
            "the state's marker says otherwise of what it shows".into(),
        ));
    }
    Ok(map)
}

/// How nodes are written: by index into a state's table, or in full (deltas).
enum Table {
    Indexed(BTreeMap<NodeId, u64>),
    Full,
}

impl Table {
    fn write(&self, out: &mut Vec<u8>, node: NodeId) {
        match self {
            Table::Indexed(index) => varint::write(out, index[&node]),
            Table::Full => out.extend_from_slice(&node.0.to_le_bytes()),
        }
    }
}

/// Every node a document names: in dots, bounded counter entries and transfers.
fn collect_nodes(map: &Map, nodes: &mut BTreeSet<NodeId>) {
    fn dots<V: Clone>(d: &DotFun<V>, nodes: &mut BTreeSet<NodeId>) {
        nodes.extend(d.iter().map(|(dot, _)| dot.node));
    }
    for field in map.fields.values() {
        match field {
            Field::Counter(d) => dots(d, nodes),
            Field::MvRegister(d) => dots(d, nodes),
            Field::LwwRegister(d) => dots(d, nodes),
            Field::Flag(d) => dots(d, nodes),
            Field::Set(elements) => elements.values().for_each(|d| dots(d, nodes)),
            Field::Bounded(b) => {
                for (node, rights) in b.entries() {
                    nodes.insert(*node);
                    nodes.extend(rights.sent.keys());
                }
            }
            Field::Map(inner) => collect_nodes(inner, nodes),
            Field::Text(t) => dots(&t.present, nodes),
            Field::List(l) => dots(&l.present, nodes),
        }
    }
}

pub fn encode_delta(delta: &Delta) -> Vec<u8> {
    let mut out = vec![DELTA_MARKER, FORMAT];
    varint::write(&mut out, delta.changes.len() as u64);
    for change in &delta.changes {
        varint::write(&mut out, change.path.len() as u64);
        for name in &change.path {
            write_bytes(&mut out, name.as_bytes());
        }
        match &change.action {
            Action::CounterTotal(total) => {
                out.push(1);
                varint::write(&mut out, zigzag(*total));
            }
            Action::BoundedEntry(rights) => {
                out.push(2);
                write_rights(&mut out, rights, &Table::Full);
            }
            Action::SetAdd(v) | Action::SetRemove(v) | Action::MvSet(v) | Action::LwwSet(v) => {
                out.push(match &change.action {
                    Action::SetAdd(_) => 3,
                    Action::SetRemove(_) => 4,
                    Action::MvSet(_) => 5,
                    _ => 6,
                });
                write_bytes(&mut out, v);
            }
            Action::FlagEnable => out.push(7),
            Action::FlagDisable => out.push(8),
            Action::Remove => out.push(9),
            Action::Text(ops) => {
                out.push(10);
                encode_ops(ops, &mut out);
            }
            Action::List(ops) => {
                out.push(11);
                encode_ops(ops, &mut out);
            }
        }
    }
    out
}

pub fn decode_delta(bytes: &[u8]) -> Result<Delta, Corrupted> {
    let mut r = Reader::after_header(bytes, DELTA_MARKER, FORMAT)?;
    let count = r.count()?;
    let mut changes = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let depth = r.count()?;
        if depth == 0 || depth > PATH_DEPTH_MAX {
            return Err(r.corrupt("a change's path is empty or too deep"));
        }
        let path = (0..depth)
            .map(|_| r.name())
            .collect::<Result<Vec<_>, _>>()?;
        let action = match r.byte()? {
            1 => Action::CounterTotal(unzigzag(r.varint()?)),
            2 => Action::BoundedEntry(r.rights()?),
            3 => Action::SetAdd(r.bytes()?),
            4 => Action::SetRemove(r.bytes()?),
            5 => Action::MvSet(r.bytes()?),
            6 => Action::LwwSet(r.bytes()?),
            7 => Action::FlagEnable,
            8 => Action::FlagDisable,
            9 => Action::Remove,
            10 => Action::Text(r.sequence_ops()?),
            11 => Action::List(r.sequence_ops()?),
            _ => return Err(r.corrupt("unknown action")),
        };
        changes.push(Change { path, action });
    }
    r.finish()?;
    Ok(Delta { changes })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn kind_tag(kind: Kind) -> u8 {
    Kind::ALL.iter().position(|k| *k == kind).expect("listed") as u8 + 1
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    varint::write(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn write_dots<V: Clone>(
    out: &mut Vec<u8>,
    dots: &DotFun<V>,
    table: &Table,
    mut value: impl FnMut(&mut Vec<u8>, &V),
) {
    varint::write(out, dots.len() as u64);
    for (dot, v) in dots.iter() {
        table.write(out, dot.node);
        varint::write(out, dot.counter);
        value(out, v);
    }
}

fn write_rights(out: &mut Vec<u8>, rights: &Rights, table: &Table) {
    varint::write(out, rights.added);
    varint::write(out, rights.spent);
    varint::write(out, rights.sent.len() as u64);
    for (to, amount) in &rights.sent {
        table.write(out, *to);
        varint::write(out, *amount);
    }
}

fn write_map(
    out: &mut Vec<u8>,
    map: &Map,
    table: &Table,
    sequences: &Sequences,
    path: &mut Vec<String>,
) {
    varint::write(out, map.fields.len() as u64);
    for ((name, kind), field) in &map.fields {
        write_bytes(out, name.as_bytes());
        out.push(kind_tag(*kind));
        path.push(name.clone());
        match field {
            Field::Counter(d) => write_dots(out, d, table, |out, v| varint::write(out, zigzag(*v))),
            Field::Bounded(b) => {
                varint::write(out, b.entries().len() as u64);
                for (node, rights) in b.entries() {
                    table.write(out, *node);
                    write_rights(out, rights, table);
                }
            }
            Field::Set(elements) => {
                varint::write(out, elements.len() as u64);
                for (element, dots) in elements {
                    write_bytes(out, element);
                    write_dots(out, dots, table, |_, _| {});
                }
            }
            Field::MvRegister(d) => write_dots(out, d, table, |out, v| write_bytes(out, v)),
            Field::LwwRegister(d) => write_dots(out, d, table, |out, (hlc, v)| {
                varint::write(out, hlc.0);
                write_bytes(out, v);
            }),
            Field::Flag(d) => write_dots(out, d, table, |_, _| {}),
            Field::Map(inner) => write_map(out, inner, table, sequences, path),
            Field::Text(t) => write_sequenced(out, t, table, sequences, path),
            Field::List(l) => write_sequenced(out, l, table, sequences, path),
        }
        path.pop();
    }
}

fn write_sequenced<C: Content>(
    out: &mut Vec<u8>,
    field: &Sequenced<C>,
    table: &Table,
    sequences: &Sequences,
    path: &[String],
) {
    write_dots(out, &field.present, table, |_, _| {});
    match sequences {
        Sequences::Whole => write_bytes(out, &field.items.encode()),
        Sequences::Headers(headers) => write_bytes(out, &headers[path]),
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    /// A state's node table, once read; nodes are then written by index.
    nodes: Option<Vec<NodeId>>,
    /// Where a stored state's sequences' pages are (format 2).
    pages: Option<&'a mut PageReader<'a>>,
    /// The path of the map being read.
    path: Vec<String>,
}

impl<'a> Reader<'a> {
    fn after_header(bytes: &'a [u8], marker: u8, format: u8) -> Result<Reader<'a>, Corrupted> {
        match bytes {
            [m, f, rest @ ..] if *m == marker && *f == format => Ok(Reader {
                rest,
                nodes: None,
                pages: None,
                path: Vec::new(),
            }),
            [m, other, ..] if *m == marker => Err(Corrupted(format!(
                "CRDT format {other} is not known here (this reads {format})"
            ))),
            _ => Err(Corrupted("not a CRDT value".into())),
        }
    }

    fn corrupt(&self, what: &str) -> Corrupted {
        Corrupted(format!("{what} ({} bytes left)", self.rest.len()))
    }

    fn finish(&self) -> Result<(), Corrupted> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }

    fn byte(&mut self) -> Result<u8, Corrupted> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.corrupt("cut short"))?;
        self.rest = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Corrupted> {
        varint::read(&mut self.rest).ok_or_else(|| self.corrupt("bad varint"))
    }

    /// A count of items that each take at least one byte, so it cannot exceed what
    /// is left (no huge allocation from a corrupt length).
    fn count(&mut self) -> Result<usize, Corrupted> {
        let n = self.varint()?;
        if n > self.rest.len() as u64 {
            return Err(self.corrupt("count beyond the end"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Corrupted> {
        let len = self.count()?;
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes.to_vec())
    }

    fn name(&mut self) -> Result<String, Corrupted> {
        let name =
            String::from_utf8(self.bytes()?).map_err(|_| self.corrupt("name is not UTF-8"))?;
        if name.is_empty() {
            return Err(self.corrupt("empty name"));
        }
        Ok(name)
    }

    fn node(&mut self) -> Result<NodeId, Corrupted> {
        if self.nodes.is_some() {
            let index = self.varint()?;
            let nodes = self.nodes.as_deref().unwrap_or_default();
            return usize::try_from(index)
                .ok()
                .and_then(|i| nodes.get(i).copied())
                .ok_or_else(|| self.corrupt("node index beyond the table"));
        }
        if self.rest.len() < 8 {
            return Err(self.corrupt("cut short"));
        }
        let (node, rest) = self.rest.split_at(8);
        self.rest = rest;
        Ok(NodeId(u64::from_le_bytes(
            node.try_into().expect("8 bytes"),
        )))
    }

    fn dot(&mut self) -> Result<Dot, Corrupted> {
        let node = self.node()?;
        let counter = self.varint()?;
        if counter == 0 {
            return Err(self.corrupt("dot counter 0"));
        }
        Ok(Dot::new(node, counter))
    }

    fn dots<V: Clone>(
        &mut self,
        mut value: impl FnMut(&mut Self) -> Result<V, Corrupted>,
    ) -> Result<DotFun<V>, Corrupted> {
        let mut dots = DotFun::default();
        let mut previous = None;
        for _ in 0..self.count()? {
            let dot = self.dot()?;
            if previous.is_some_and(|p| p >= dot) {
                return Err(self.corrupt("dots out of order"));
            }
            previous = Some(dot);
            let v = value(self)?;
            dots.insert(dot, v);
        }
        Ok(dots)
    }

    fn sequenced<C: Content>(&mut self) -> Result<Sequenced<C>, Corrupted> {
        let present = self.dots(|_| Ok(()))?;
        let bytes = self.bytes()?;
        let items = match &mut self.pages {
            None => Sequence::decode(&bytes),
            Some(pages) => Sequence::load(&bytes, |id| pages(&self.path, id)),
        }
        .map_err(|e| self.corrupt(&e.to_string()))?;
        Ok(Sequenced { present, items })
    }

    fn sequence_ops<C: Content>(&mut self) -> Result<Vec<chorus_text::Op<C>>, Corrupted> {
        decode_ops(&mut self.rest).map_err(|e| self.corrupt(&e.to_string()))
    }

    fn rights(&mut self) -> Result<Rights, Corrupted> {
        let added = self.varint()?;
        let spent = self.varint()?;
        let mut sent = BTreeMap::new();
        for _ in 0..self.count()? {
            let to = self.node()?;
            if sent.insert(to, self.varint()?).is_some() {
                return Err(self.corrupt("rights sent twice to one node"));
            }
        }
        Ok(Rights { added, spent, sent })
    }

    fn map(&mut self, depth: usize) -> Result<Map, Corrupted> {
        if depth > PATH_DEPTH_MAX {
            return Err(self.corrupt("maps nested too deep"));
        }
        let mut map = Map::default();
        let mut previous: Option<(String, Kind)> = None;
        for _ in 0..self.count()? {
            let name = self.name()?;
            let tag = self.byte()?;
            let kind = *Kind::ALL
                .get((tag as usize).wrapping_sub(1))
                .ok_or_else(|| self.corrupt("unknown kind"))?;
            self.path.push(name.clone());
            let field = match kind {
                Kind::Counter => Field::Counter(self.dots(|r| Ok(unzigzag(r.varint()?)))?),
                Kind::Bounded => {
                    let mut entries = BTreeMap::new();
                    for _ in 0..self.count()? {
                        let node = self.node()?;
                        if entries.insert(node, self.rights()?).is_some() {
                            return Err(self.corrupt("bounded counter entry repeated"));
                        }
                    }
                    Field::Bounded(Bounded::from_entries(entries))
                }
                Kind::Set => {
                    let mut elements = BTreeMap::new();
                    let mut last: Option<Vec<u8>> = None;
                    for _ in 0..self.count()? {
                        let element = self.bytes()?;
                        if last.as_ref().is_some_and(|l| *l >= element) {
                            return Err(self.corrupt("set elements out of order"));
                        }
                        last = Some(element.clone());
                        let dots = self.dots(|_| Ok(()))?;
                        if dots.is_empty() {
                            return Err(self.corrupt("set element without dots"));
                        }
                        elements.insert(element, dots);
                    }
                    Field::Set(elements)
                }
                Kind::MvRegister => Field::MvRegister(self.dots(|r| r.bytes())?),
                Kind::LwwRegister => {
                    Field::LwwRegister(self.dots(|r| Ok((Hlc(r.varint()?), r.bytes()?)))?)
                }
                Kind::Flag => Field::Flag(self.dots(|_| Ok(()))?),
                Kind::Map => Field::Map(self.map(depth + 1)?),
                Kind::Text => Field::Text(self.sequenced()?),
                Kind::List => Field::List(self.sequenced()?),
            };
            self.path.pop();
            if field.is_empty() {
                return Err(self.corrupt("empty field"));
            }
            let key = (name, kind);
            if previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(self.corrupt("fields out of order"));
            }
            previous = Some(key.clone());
            map.fields.insert(key, field);
        }
        Ok(map)
    }
}
