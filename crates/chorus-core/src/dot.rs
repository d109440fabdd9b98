//! Node ids and dots: the identity of one write.
//!
//! A [`NodeId`] is chosen at random when a replica's store is created, so a replica
//! that lost its disk and starts afresh can never reuse the dots of its former life.
//! A [`Dot`] `(node, counter)` names exactly one write: a node's counter only grows,
//! and counters start at 1 (0 means "nothing from this node").

use std::fmt;

/// The stable identity of one replica (a server node or an embedded device).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The unique id of one write: the node that made it and that node's counter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

impl Dot {
    pub fn new(node: NodeId, counter: u64) -> Dot {
        assert!(counter > 0, "dot counters start at 1");
        Dot { node, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.counter)
    }
}
