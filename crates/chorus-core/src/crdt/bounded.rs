//! The bounded counter: a counter that never goes below zero without coordination.
//!
//! As in AntidoteDB, the value is split into *rights*: an increment made at a node
//! gives that node as many rights, and a node may decrement only by rights it holds.
//! Rights move between nodes by transfers. Each node's entry ([`Rights`]) is written
//! only by that node and only grows (totals of what it added, spent and sent), so
//! entries join by pointwise maximum and every replica computes the same value.
//!
//! Invariant (checked by [`Bounded::spend`] at the only place a decrement is made,
//! the node's own committer): a node's rights never go below zero. With causal
//! delivery every replica that sees a decrement has seen the increments and
//! transfers that paid for it, so the value seen anywhere is never below zero.

use crate::NodeId;
use std::collections::BTreeMap;

/// What one node has done with a bounded counter: totals that only grow.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Rights {
    pub added: u64,
    pub spent: u64,
    /// Rights sent to other nodes, per receiver.
    pub sent: BTreeMap<NodeId, u64>,
}

impl Rights {
    fn join(&mut self, other: &Rights) {
        self.added = self.added.max(other.added);
        self.spent = self.spent.max(other.spent);
        for (&to, &amount) in &other.sent {
            let mine = self.sent.entry(to).or_insert(0);
            *mine = (*mine).max(amount);
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Bounded {
    entries: BTreeMap<NodeId, Rights>,
}

impl Bounded {
    pub(crate) fn from_entries(entries: BTreeMap<NodeId, Rights>) -> Bounded {
        Bounded { entries }
    }

    pub fn entries(&self) -> &BTreeMap<NodeId, Rights> {
        &self.entries
    }

    /// The counter's value: everything added less everything spent, exactly (a sum
    /// of `u64` totals can pass `u64::MAX` when nodes add concurrently), never
    /// negative.
    pub fn value(&self) -> u128 {
        let added: u128 = self.entries.values().map(|r| u128::from(r.added)).sum();
        let spent: u128 = self.entries.values().map(|r| u128::from(r.spent)).sum();
        added.saturating_sub(spent)
    }

    /// The rights `node` holds: what it added and received, less what it spent and
    /// sent.
    pub fn rights(&self, node: NodeId) -> u64 {
        let received = saturating_sum(
            self.entries
                .values()
                .filter_map(|r| r.sent.get(&node).copied()),
        );
        let own = self.entries.get(&node).cloned().unwrap_or_default();
        let sent = saturating_sum(own.sent.values().copied());
        own.added
            .saturating_add(received)
            .saturating_sub(own.spent.saturating_add(sent))
    }

    /// Rights per node that holds any.
    pub fn holders(&self) -> BTreeMap<NodeId, u64> {
        let mut nodes: Vec<NodeId> = self.entries.keys().copied().collect();
        nodes.extend(self.entries.values().flat_map(|r| r.sent.keys().copied()));
        nodes
            .into_iter()
            .map(|n| (n, self.rights(n)))
            .filter(|(_, rights)| *rights > 0)
            .collect()
    }

    /// `node`'s entry after adding `amount`; `None` when the value as this node
    /// sees it would pass `i64::MAX` (the documented bound of every counter).
    pub(crate) fn add(&self, node: NodeId, amount: u64) -> Option<Rights> {
        if self.value() + u128::from(amount) > i64::MAX as u128 {
            return None;
        }
        let mut own = self.entries.get(&node).cloned().unwrap_or_default();
        own.added = own.added.checked_add(amount)?;
        Some(own)
    }

    /// `node`'s entry after spending `amount`, or `None` when it lacks the rights.
    pub(crate) fn spend(&self, node: NodeId, amount: u64) -> Option<Rights> {
        if self.rights(node) < amount {
            return None;
        }
        let mut own = self.entries.get(&node).cloned().unwrap_or_default();
        own.spent = own.spent.checked_add(amount)?;
        Some(own)
    }

    /// `node`'s entry after sending `amount` of its rights to `to`, or `None` when it
    /// lacks them.
    pub(crate) fn send(&self, node: NodeId, to: NodeId, amount: u64) -> Option<Rights> {
        if self.rights(node) < amount {
            return None;
        }
        let mut own = self.entries.get(&node).cloned().unwrap_or_default();
        let sent = own.sent.entry(to).or_insert(0);
        *sent = sent.checked_add(amount)?;
        Some(own)
    }

    /// Takes `node`'s newer entry (an update made there).
    pub(crate) fn update(&mut self, node: NodeId, rights: &Rights) {
        self.entries.entry(node).or_default().join(rights);
    }

    pub(crate) fn join(&mut self, other: &Bounded) {
        for (&node, rights) in &other.entries {
            self.update(node, rights);
        }
    }
}

/// Sums that cannot overflow: totals written by other nodes are not trusted to be
/// small (each fits a u64, their sum may not).
fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}
