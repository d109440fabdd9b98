//! Text and list fields: the sequence CRDT of `chorus_text` inside a document.
//!
//! Items are inserted and deleted as the node that takes the write (its id is the
//! agent of the items' ids, so metadata grows with the nodes, not with the clients),
//! and every write that changed a sequence is stamped with its dot: a context (the
//! read an edit was made against) then names a version of the sequence, and an
//! edit's positions count the items shown there (plus what the same write did
//! before it), so it lands where its author meant.
//!
//! A field is shown while a write to it is live: `present` holds the dots of the
//! writes that made it, less those a removal saw, as an enable-wins flag does.
//! Removing it deletes, on every replica alike, every item its remover had seen
//! (shown or already deleted: replicas that applied different concurrent deletes
//! delete the same ids), and keeps what was inserted concurrently. The sequence
//! itself stays while it holds any item, deleted or not: concurrent inserts name
//! their neighbours by id, and a replica must still know where those are.
//!
//! Invariant: `items` holds every operation of every write `present` (or any
//! context covering the field) names, in each node's order.

use super::dots::DotFun;
use crate::{Dot, NodeId, VersionVector};
use chorus_text::{Beyond, Content, Missing, Op, Sequence, Version};

/// What a writer had seen: the context of its read, and its own write (the changes
/// of one write see the ones before them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen<'a> {
    pub context: &'a VersionVector,
    pub dot: Option<Dot>,
}

impl Seen<'_> {
    pub fn covers(&self, dot: Dot) -> bool {
        Some(dot) == self.dot || self.context.covers(dot)
    }
}

/// A text (`Sequenced<String>`) or list (`Sequenced<Vec<String>>`) field.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Sequenced<C: Content> {
    pub(crate) present: DotFun<()>,
    pub(crate) items: Sequence<C>,
}

impl<C: Content> Default for Sequenced<C> {
    fn default() -> Self {
        Sequenced {
            present: DotFun::default(),
            items: Sequence::new(),
        }
    }
}

impl<C: Content> Sequenced<C> {
    /// The items, shown and deleted.
    pub fn items(&self) -> &Sequence<C> {
        &self.items
    }

    /// True while a write that made the field is live (reads show it).
    pub fn is_shown(&self) -> bool {
        !self.present.is_empty()
    }

    /// True when there is nothing to keep: not shown, and no item to order by.
    pub(crate) fn is_empty(&self) -> bool {
        self.present.is_empty() && self.items.runs() == 0
    }

    /// The version of the sequence a writer that saw `seen` had.
    fn version(&self, seen: &Seen) -> Version {
        self.items.version_at(
            |node| seen.context.get(NodeId(node)),
            seen.dot.map(|dot| (dot.node.0, dot.counter)),
        )
    }

    /// Inserts `content` as node `agent` at `pos` of the version `seen` names; the
    /// operation to replicate.
    pub(crate) fn insert(
        &mut self,
        agent: NodeId,
        seen: &Seen,
        pos: u64,
        content: C,
    ) -> Result<Op<C>, Beyond> {
        let version = self.version(seen);
        if version != self.items.version() {
            return self.items.insert_at(agent.0, &version, pos, content);
        }
        let len = self.items.len();
        if pos > len {
            return Err(Beyond { len });
        }
        Ok(self.items.insert(agent.0, pos, content))
    }

    /// Deletes as node `agent` the `len` items from `pos` of the version `seen`
    /// names; the operations to replicate.
    pub(crate) fn delete(
        &mut self,
        agent: NodeId,
        seen: &Seen,
        pos: u64,
        len: u64,
    ) -> Result<Vec<Op<C>>, Beyond> {
        let version = self.version(seen);
        if version != self.items.version() {
            return self.items.delete_at(agent.0, &version, pos, len);
        }
        let shown = self.items.len();
        if pos.checked_add(len).is_none_or(|end| end > shown) {
            return Err(Beyond { len: shown });
        }
        Ok(self.items.delete(agent.0, pos, len))
    }

    /// Applies the operations of the write `dot` (its writer saw `seen`).
    pub(crate) fn apply(&mut self, ops: &[Op<C>], dot: Dot, seen: &Seen) -> Result<(), Missing> {
        for op in ops {
            self.items.apply(op)?;
        }
        self.items.stamp(dot.node.0, dot.counter);
        self.present.remove_covered(&|d| seen.covers(d));
        self.present.insert(dot, ());
        Ok(())
    }

    /// Removes what a remover (the write `remover`, which saw `seen`) saw.
    pub(crate) fn remove(&mut self, seen: &Seen, remover: Dot) -> Result<(), Missing> {
        let version = self.version(seen);
        self.items.delete_seen(remover.node.0, &version)?;
        self.items.stamp(remover.node.0, remover.counter);
        self.present.remove_covered(&|d| seen.covers(d));
        Ok(())
    }

    /// Joins another replica's state of the field.
    pub(crate) fn join(
        &mut self,
        other: &Sequenced<C>,
        mine: &VersionVector,
        theirs: &VersionVector,
    ) -> Result<(), Missing> {
        self.present.join(&other.present, mine, theirs);
        self.items.merge(&other.items)
    }
}
