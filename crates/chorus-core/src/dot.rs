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

    /// Parses the text form `NODE:COUNTER` (16 hex digits, a decimal counter > 0).
    pub fn parse(text: &str) -> Option<Dot> {
        let (node, counter) = text.split_once(':')?;
        if node.len() != 16 {
            return None;
        }
        let node = u64::from_str_radix(node, 16).ok()?;
        let counter: u64 = counter.parse().ok()?;
        (counter > 0).then(|| Dot::new(NodeId(node), counter))
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dot's text form parses back; malformed ones do not.
    #[test]
    fn dots_parse_their_text_form() {
        let dot = Dot::new(NodeId(0xab), 7);
        assert_eq!(Dot::parse(&dot.to_string()), Some(dot));
        for bad in [
            "",
            "ab:7",
            "00000000000000ab:0",
            "00000000000000ab:x",
            "00000000000000ab",
        ] {
            assert_eq!(Dot::parse(bad), None, "{bad:?}");
        }
    }
}
