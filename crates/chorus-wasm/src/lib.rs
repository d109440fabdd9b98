//! A page's replica of one text, for the browser (WebAssembly; `ui/text.js` is the
//! JavaScript side): the same CRDT as the nodes, so that typing never waits for the
//! network and the node's operations merge by the same rules.
//!
//! The page is a client of a node, not an agent of the text: ids name the nodes that
//! took the writes. Its own keystrokes are applied at once as *tentative* items; a
//! batch of them goes up as positions (`text.insert`, `text.delete`) in the version
//! the node knows (every operation the page received, plus the batch's own earlier
//! edits), one batch in flight at a time. When the node's version of the batch comes
//! back (a change with the acknowledged dot), the page applies it and deletes its
//! tentative items: the text shows the node's items where its own were, and a cursor
//! on a tentative item moves to its node's copy. What was typed meanwhile stays
//! tentative and goes up next.
//!
//! Tentative items carry the agent just below the node's id (`Agents`): concurrent
//! inserts at one place are ordered by agent last, so a tentative item sits among
//! others' exactly where the node's copy of it will, and nothing moves when it
//! settles.
//!
//! **Invariant:** every item of a sent batch is the node's or tentative; the
//! version a batch's positions count in leaves out exactly the tentative edits after
//! each one, so the node lands each edit where the page showed it.

use chorus_text::{Id, Op, Text, decode_ops};

/// The agents of a page's replica, from the id of the node it edits through.
#[derive(Clone, Copy, Debug)]
pub struct Agents {
    /// Of its own edits until the node's version of them arrives: just below the
    /// node (no node has it, but by chance of one in 2^64).
    pub tentative: u64,
    /// Of the deletes of tentative items once settled.
    pub settled: u64,
}

impl Agents {
    pub fn of(node: u64) -> Agents {
        Agents {
            tentative: node.wrapping_sub(1),
            settled: node.wrapping_sub(2),
        }
    }
}

impl Default for Agents {
    fn default() -> Agents {
        Agents::of(0)
    }
}

/// One text as a page holds it.
#[derive(Default)]
pub struct Replica {
    /// The node's operations, and only them.
    confirmed: Text,
    /// What the page shows: `confirmed` with the page's edits not yet settled,
    /// replayed on it whenever it changes.
    shown: Text,
    /// The page's edits not yet settled, in order; the first `sent` are in flight.
    pending: Vec<Op>,
    sent: usize,
    agents: Agents,
    /// The node's inserts the last `apply` took (first id, items), in order: in a
    /// settle, the node's copies of the batch's inserts.
    applied_inserts: Vec<(Id, u64)>,
    /// Tentative inserts of the batch settled last and the node's copies of them:
    /// `(tentative first id, items, node's first id)`, until the next change (ids
    /// of tentative items are used again once theirs settled).
    moved: Vec<(Id, u64, Id)>,
}

/// An operation the page received does not apply: its bytes are not operations,
/// or it names an item the replica lacks (read the document again).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

impl Replica {
    /// An empty text, edited through node `node`.
    pub fn new(node: u64) -> Replica {
        Replica {
            agents: Agents::of(node),
            ..Replica::default()
        }
    }

    /// A replica of the text a snapshot sent (`chorus_text`'s encoding), edited
    /// through node `node`.
    pub fn load(bytes: &[u8], node: u64) -> Result<Replica, Refused> {
        let confirmed = Text::decode(bytes).map_err(|_| Refused)?;
        Ok(Replica {
            shown: confirmed.clone(),
            confirmed,
            ..Replica::new(node)
        })
    }

    /// The text shown: the node's, with the page's edits not yet settled.
    pub fn content(&self) -> String {
        self.shown.to_string()
    }

    /// Characters shown.
    pub fn len(&self) -> u64 {
        self.shown.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// Applies operations the node sent (`chorus_text::encode_ops`).
    pub fn apply(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        let ops: Vec<Op> = decode_ops(&mut bytes).map_err(|_| Refused)?;
        if !bytes.is_empty() {
            return Err(Refused);
        }
        self.applied_inserts.clear();
        self.moved.clear();
        for op in &ops {
            self.confirmed.apply(op).map_err(|_| Refused)?;
            if let Op::Insert { id, content, .. } = op {
                self.applied_inserts
                    .push((*id, content.chars().count() as u64));
            }
        }
        self.replay();
        Ok(())
    }

    /// Takes in a whole state the node sent (a snapshot after a reconnection):
    /// what the page missed meanwhile.
    pub fn merge(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        let theirs = Text::decode(bytes).map_err(|_| Refused)?;
        self.moved.clear();
        self.confirmed.merge(&theirs).map_err(|_| Refused)?;
        self.replay();
        Ok(())
    }

    /// Shows `confirmed` with the pending edits replayed on it. An edit that no
    /// longer applies (its place was lost with a batch the node refused) is dropped.
    fn replay(&mut self) {
        self.shown = self.confirmed.clone();
        let mut kept = Vec::with_capacity(self.pending.len());
        for (k, op) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if self.shown.apply(&op).is_ok() {
                kept.push(op);
            } else if k < self.sent {
                self.sent -= 1;
            }
        }
        self.pending = kept;
    }

    /// The batch in flight never reached a node (the connection dropped before it
    /// was taken): it goes again, with what was typed since.
    pub fn unsend(&mut self) {
        self.sent = 0;
    }

    /// The page types `text` at `pos` (at most the length).
    pub fn insert(&mut self, pos: u64, text: &str) {
        self.moved.clear();
        if !text.is_empty() {
            let op = self
                .shown
                .insert(self.agents.tentative, pos.min(self.len()), text);
            self.pending.push(op);
        }
    }

    /// The page deletes `len` characters from `pos` (clipped to the text).
    pub fn delete(&mut self, pos: u64, len: u64) {
        self.moved.clear();
        let pos = pos.min(self.len());
        let len = len.min(self.len() - pos);
        if len > 0 {
            let ops = self.shown.delete(self.agents.tentative, pos, len);
            self.pending.extend(ops);
        }
    }

    /// The next batch to send: the page's edits not yet sent, as the operations of
    /// `POST .../ops` (a JSON array) in the version the node knows; `None` while a
    /// batch is in flight or nothing is new.
    pub fn take_batch(&mut self, path: &str) -> Option<String> {
        if self.sent > 0 || self.pending.is_empty() {
            return None;
        }
        let now = self.shown.version();
        // Tentative items and delete ids made before the first pending edit (pending
        // edits number them in order; settled ones are gone from the text).
        let first_insert = self.pending.iter().find_map(|op| match op {
            Op::Insert { id, .. } => Some(id.seq),
            Op::Delete { .. } => None,
        });
        let first_delete = self.pending.iter().find_map(|op| match op {
            Op::Delete { by, .. } => Some(by.seq),
            Op::Insert { .. } => None,
        });
        let (mut inserts, mut deletes) = (first_insert.unwrap_or(0), first_delete.unwrap_or(0));
        let mut out: Vec<String> = Vec::new();
        for op in &self.pending {
            // The version leaves out this edit and the ones after it.
            let version = now.upto(self.agents.tentative, inserts, deletes);
            match op {
                Op::Insert { id, content, .. } => {
                    let len = content.chars().count() as u64;
                    let (pos, _) = self.shown.positions_at(&version, *id, len)[0];
                    out.push(format!(
                        r#"{{"op":"text.insert","path":{},"pos":{pos},"text":{}}}"#,
                        json_string(path),
                        json_string(content)
                    ));
                    inserts += len;
                }
                Op::Delete { id, len, .. } => {
                    // Descending, so that each range's place holds after the ones
                    // deleted before it in the write.
                    let ranges = self.shown.positions_at(&version, *id, *len);
                    for (pos, count) in ranges.into_iter().rev().filter(|(_, n)| *n > 0) {
                        out.push(format!(
                            r#"{{"op":"text.delete","path":{},"pos":{pos},"len":{count}}}"#,
                            json_string(path)
                        ));
                    }
                    deletes += len;
                }
            }
        }
        self.sent = self.pending.len();
        if out.is_empty() {
            // Only deletes of what others deleted meanwhile: nothing to send.
            self.settle();
            return None;
        }
        Some(format!("[{}]", out.join(",")))
    }

    /// The batch in flight was taken by the node, and its version of it (the
    /// change with the acknowledged dot) applied just before: the batch's edits go,
    /// and the edits typed since, which may name its tentative items, name the
    /// node's copies instead. Also after a refusal (the page then reads the
    /// document again).
    pub fn settle(&mut self) {
        let settled: Vec<Op> = self.pending.drain(..self.sent).collect();
        self.sent = 0;
        let mut copies = std::mem::take(&mut self.applied_inserts).into_iter();
        self.moved.clear();
        for op in &settled {
            match op {
                Op::Insert { id, content, .. } => {
                    let len = content.chars().count() as u64;
                    if let Some((copy, _)) = copies.next().filter(|(_, n)| *n == len) {
                        self.moved.push((*id, len, copy));
                    }
                }
                Op::Delete { .. } => {}
            }
        }
        let moved = self.moved.clone();
        let rename = |id: Id| -> Id {
            moved
                .iter()
                .find(|(from, n, _)| {
                    from.agent == id.agent && (from.seq..from.seq + n).contains(&id.seq)
                })
                .map_or(id, |(from, _, copy)| Id {
                    agent: copy.agent,
                    seq: copy.seq + (id.seq - from.seq),
                })
        };
        for op in &mut self.pending {
            match op {
                Op::Insert {
                    origin_left,
                    origin_right,
                    ..
                } => {
                    *origin_left = origin_left.map(rename);
                    *origin_right = origin_right.map(rename);
                }
                Op::Delete { id, .. } => *id = rename(*id),
            }
        }
        self.replay();
    }

    /// An anchor for the cursor at `pos`: the item before it (`None` at the start).
    pub fn anchor(&self, pos: u64) -> Option<Id> {
        pos.checked_sub(1).and_then(|p| self.shown.id_shown_at(p))
    }

    /// Where the cursor anchored at `anchor` is now: after its item, or where the
    /// item was if it is gone (on a tentative item just settled: on the node's copy).
    pub fn anchored(&self, anchor: Option<Id>) -> u64 {
        let Some(mut id) = anchor else { return 0 };
        if let Some((from, _, copy)) = self.moved.iter().find(|(from, n, _)| {
            from.agent == id.agent && (from.seq..from.seq + n).contains(&id.seq)
        }) {
            id = Id {
                agent: copy.agent,
                seq: copy.seq + (id.seq - from.seq),
            };
        }
        let (pos, count) = self.shown.positions_at(&self.shown.version(), id, 1)[0];
        pos + count
    }
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(target_arch = "wasm32")]
mod abi;
