//! The link decisions of one node, without I/O: which peers to dial, which of two
//! connections to one peer to keep, when a peer counts as unreachable, and which
//! links to close. The runtime (`chorus-peer`) drives it with sockets and timers, the
//! simulator with a seeded network, so self-healing runs under seeds too.
//!
//! ```text
//!  up(conn) / down(conn) / dial_failed ──▶ LinkKeeper ──follow(now)──▶ dial / stop dialling
//!  reconfigure(plan)                        (links, clocks)            close links
//! ```
//!
//! `H` is whatever the driver holds per connection (tasks and a writer, or a
//! simulated session); the keeper hands a handle back when its connection is to be
//! closed.
//!
//! **Invariant:** at most one link per peer. When both ends dial at once, both keep
//! the connection dialled by the node whose name sorts first (or the newer of two
//! from the same dialer), so they agree without a word.
//!
//! **Invariant:** whoever wants a link dials it, and the acceptor keeps what it
//! accepted from a cluster member; only the dialer closes a link it no longer wants
//! (any end closes a link to a node that left the cluster, or a partitioned one).
//!
//! **Invariant:** a peer is unreachable once it has been failing (dials failed, or a
//! wanted link lost) for the heal timeout with no link up; a link coming up clears
//! its clock, and so does the plan ceasing to dial it. The plan works around
//! unreachable peers and keeps dialling them.

use crate::links::{LinkPlan, Plan};
use std::collections::{BTreeMap, BTreeSet};

/// The links of one node and the decisions about them.
#[derive(Debug)]
pub struct LinkKeeper<H> {
    me: String,
    plan: LinkPlan,
    heal_after_ms: u64,
    /// Since when each peer has been failing; cleared when a link to it comes up.
    down_since: BTreeMap<String, u64>,
    /// The plan last followed.
    wanted: Plan,
    links: BTreeMap<String, Link<H>>,
    /// Peers being dialled (the driver runs one dialer per peer here).
    dialing: BTreeSet<String>,
}

#[derive(Debug)]
struct Link<H> {
    dialled_by_me: bool,
    handle: H,
}

/// What became of a connection that came up.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission<H> {
    /// It is the link to its peer now: tell the engine (`Event::Connected`).
    pub linked: bool,
    /// The connection to close: the new one when the link already up is preferred,
    /// else the one it replaced (if any).
    pub close: Option<H>,
}

/// What following the plan asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes<H> {
    /// Start dialling these peers.
    pub dial: Vec<String>,
    /// Stop dialling these peers.
    pub stop_dialing: Vec<String>,
    /// Links closed, with why: close the connection and tell the engine
    /// (`Event::Disconnected`).
    pub closed: Vec<(String, H, &'static str)>,
}

/// The links of a node as last planned and followed (for `GET /v1/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The planned neighbours (from the cluster file's topology).
    pub planned: Vec<String>,
    /// The peers the node links to now: the planned ones, or around unreachable ones.
    pub wanted: Vec<String>,
    /// The peers linked now (including links other nodes dialled).
    pub connected: Vec<String>,
    /// Peers unreachable for longer than the heal timeout (still dialled when the
    /// plan works around them).
    pub unreachable: Vec<String>,
    pub heal_after_ms: u64,
}

impl<H> LinkKeeper<H> {
    /// A node `me` with no links yet; the first [`LinkKeeper::follow`] dials the
    /// planned neighbours.
    pub fn new(me: &str, plan: LinkPlan, heal_after_ms: u64) -> LinkKeeper<H> {
        LinkKeeper {
            me: me.to_owned(),
            plan,
            heal_after_ms,
            down_since: BTreeMap::new(),
            wanted: Plan::default(),
            links: BTreeMap::new(),
            dialing: BTreeSet::new(),
        }
    }

    /// A connection to `peer` completed its handshake: it becomes the link unless a
    /// preferred one is already up.
    pub fn up(&mut self, peer: &str, dialled_by_me: bool, handle: H) -> Admission<H> {
        if let Some(existing) = self.links.get(peer) {
            let dialer = |by_me: bool| if by_me { self.me.as_str() } else { peer };
            if dialer(existing.dialled_by_me) < dialer(dialled_by_me) {
                return Admission {
                    linked: false,
                    close: Some(handle),
                };
            }
        }
        self.down_since.remove(peer);
        let link = Link {
            dialled_by_me,
            handle,
        };
        let replaced = self.links.insert(peer.to_owned(), link);
        Admission {
            linked: true,
            close: replaced.map(|l| l.handle),
        }
    }

    /// The link to `peer` ended (its connection closed, or the engine dropped it),
    /// if `is_it` says the link is that connection. Losing a wanted link starts the
    /// peer's unreachable clock. Returns the link's handle: tell the engine.
    pub fn down(&mut self, peer: &str, is_it: impl FnOnce(&H) -> bool, now_ms: u64) -> Option<H> {
        if !is_it(&self.links.get(peer)?.handle) {
            return None;
        }
        let link = self.links.remove(peer)?;
        if self.wanted.links.contains(peer) {
            self.down_since.entry(peer.to_owned()).or_insert(now_ms);
        }
        Some(link.handle)
    }

    /// A dial of `peer` failed: its unreachable clock starts, if not running.
    pub fn dial_failed(&mut self, peer: &str, now_ms: u64) {
        self.down_since.entry(peer.to_owned()).or_insert(now_ms);
    }

    /// Whether a dialer of `peer` should try now (it is wanted and not linked).
    pub fn should_dial(&self, peer: &str) -> bool {
        self.dialing.contains(peer) && !self.links.contains_key(peer)
    }

    /// The peers unreachable for longer than the heal timeout.
    pub fn unreachable(&self, now_ms: u64) -> BTreeSet<String> {
        self.down_since
            .iter()
            .filter(|(peer, since)| {
                now_ms >= *since + self.heal_after_ms && !self.links.contains_key(*peer)
            })
            .map(|(peer, _)| peer.clone())
            .collect()
    }

    /// Plans the links anew and follows the plan: dials what it wants or probes,
    /// stops dialling the rest, and closes the links this node dialled that it no
    /// longer wants, and any link to a node that left the cluster or that
    /// `partitioned` says is cut.
    pub fn follow(&mut self, now_ms: u64, partitioned: impl Fn(&str) -> bool) -> Changes<H> {
        self.wanted = self.plan.plan(&self.me, &self.unreachable(now_ms));
        let dial: BTreeSet<String> = self
            .wanted
            .links
            .union(&self.wanted.probes)
            .cloned()
            .collect();
        // A peer no longer dialled gives no news: forget its clock rather than count it
        // unreachable forever.
        self.down_since.retain(|peer, _| dial.contains(peer));
        let stop_dialing: Vec<String> = self.dialing.difference(&dial).cloned().collect();
        let start: Vec<String> = dial.difference(&self.dialing).cloned().collect();
        self.dialing = dial;
        let retire: Vec<(String, &'static str)> = self
            .links
            .iter()
            .filter_map(|(peer, link)| {
                let reason = if !self.plan.nodes().contains(peer) {
                    "it left the cluster"
                } else if partitioned(peer) {
                    "the link is partitioned (link emulation)"
                } else if link.dialled_by_me && !self.dialing.contains(peer) {
                    "the link plan no longer wants it"
                } else {
                    return None;
                };
                Some((peer.clone(), reason))
            })
            .collect();
        let closed = retire
            .into_iter()
            .filter_map(|(peer, reason)| {
                let link = self.links.remove(&peer)?;
                Some((peer, link.handle, reason))
            })
            .collect();
        Changes {
            dial: start,
            stop_dialing,
            closed,
        }
    }

    /// The cluster changed: plan by `plan` from now on. Every dialer stops (the
    /// next [`LinkKeeper::follow`] starts the wanted ones afresh, without the backoff
    /// of earlier failures); the clocks of peers that left are dropped. Returns the
    /// peers whose dialers stopped.
    pub fn reconfigure(&mut self, plan: LinkPlan, heal_after_ms: u64) -> Vec<String> {
        self.down_since
            .retain(|peer, _| plan.nodes().contains(peer));
        self.plan = plan;
        self.heal_after_ms = heal_after_ms;
        std::mem::take(&mut self.dialing).into_iter().collect()
    }

    /// The plan last followed.
    pub fn wanted(&self) -> &Plan {
        &self.wanted
    }

    /// The link to `peer`, if up.
    pub fn link(&self, peer: &str) -> Option<&H> {
        self.links.get(peer).map(|l| &l.handle)
    }

    /// The peers linked now, by name.
    pub fn linked(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    /// The links as last planned and followed.
    pub fn status(&self, now_ms: u64) -> LinkStatus {
        LinkStatus {
            planned: self.plan.planned(&self.me).into_iter().collect(),
            wanted: self.wanted.links.iter().cloned().collect(),
            connected: self.links.keys().cloned().collect(),
            unreachable: self.unreachable(now_ms).into_iter().collect(),
            heal_after_ms: self.heal_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    fn keeper(me: &str, topology: Topology) -> LinkKeeper<u64> {
        let nodes: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let plan = LinkPlan::new(&topology, &nodes, None).unwrap();
        LinkKeeper::new(me, plan, 1_000)
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_follow_dials_the_planned_neighbours() {
        let mut k = keeper("a", Topology::Ring);
        let changes = k.follow(0, |_| false);
        assert_eq!(changes.dial, names(&["b", "d"]));
        assert!(changes.stop_dialing.is_empty() && changes.closed.is_empty());
        // Following again changes nothing.
        let again = k.follow(0, |_| false);
        assert!(again.dial.is_empty() && again.stop_dialing.is_empty());
        assert!(k.should_dial("b") && !k.should_dial("c"));
    }

    /// Both ends of a double dial keep the connection dialled by the node whose name
    /// sorts first, whatever order the connections come up in.
    #[test]
    fn a_double_dial_keeps_the_same_connection_at_both_ends() {
        for a_first in [true, false] {
            let (mut a, mut b) = (keeper("a", Topology::Mesh), keeper("b", Topology::Mesh));
            // Connection 1 is dialled by a, connection 2 by b.
            let (a_sees, b_sees) = if a_first {
                ([(1, true), (2, false)], [(1, false), (2, true)])
            } else {
                ([(2, false), (1, true)], [(2, true), (1, false)])
            };
            for (conn, by_me) in a_sees {
                a.up("b", by_me, conn);
            }
            for (conn, by_me) in b_sees {
                b.up("a", by_me, conn);
            }
            assert_eq!((a.link("b"), b.link("a")), (Some(&1), Some(&1)));
        }
        // The newer of two from one dialer replaces the older one.
        let mut a = keeper("a", Topology::Mesh);
        a.up("b", true, 1);
        let admission = a.up("b", true, 2);
        assert_eq!(
            admission,
            Admission {
                linked: true,
                close: Some(1)
            }
        );
        // The preferred link stays, and the newcomer is closed.
        let refused = a.up("b", false, 3);
        assert_eq!(
            refused,
            Admission {
                linked: false,
                close: Some(3)
            }
        );
    }

    /// A ring heals around a dead node after the heal timeout, keeps probing it, and
    /// returns to the planned links when it is back.
    #[test]
    fn a_ring_heals_around_a_dead_node_and_returns() {
        let mut a = keeper("a", Topology::Ring);
        a.follow(0, |_| false);
        a.up("d", true, 1);
        a.dial_failed("b", 10);
        // Not yet unreachable: nothing changes.
        assert!(a.follow(500, |_| false).dial.is_empty());
        let healed = a.follow(1_010, |_| false);
        assert_eq!(healed.dial, names(&["c"]));
        assert!(healed.stop_dialing.is_empty(), "b is still probed");
        assert_eq!(a.status(1_010).wanted, names(&["c", "d"]));
        assert_eq!(a.status(1_010).unreachable, names(&["b"]));
        a.up("c", true, 2);
        // b returns: the plan goes back, and the link to c (dialled here) closes.
        a.up("b", true, 3);
        let back = a.follow(2_000, |_| false);
        assert_eq!(back.stop_dialing, names(&["c"]));
        assert_eq!(
            back.closed,
            vec![("c".into(), 2, "the link plan no longer wants it")]
        );
        assert_eq!(a.status(2_000).connected, names(&["b", "d"]));
    }

    /// Losing a wanted link starts its clock; an unwanted link that others dialled
    /// is kept (only the dialer closes it).
    #[test]
    fn links_lost_and_links_accepted() {
        let mut a = keeper("a", Topology::Ring);
        a.follow(0, |_| false);
        a.up("c", false, 7); // c dialled a (c's plan healed around a dead node).
        a.up("b", true, 8);
        assert!(
            a.down("b", |h| *h == 9, 100).is_none(),
            "another connection"
        );
        assert_eq!(a.down("b", |h| *h == 8, 100), Some(8));
        assert!(a.follow(1_100, |_| false).dial.contains(&"c".to_owned()));
        assert_eq!(a.link("c"), Some(&7), "kept: c dialled it");
        // A partition closes any link.
        let cut = a.follow(1_100, |peer| peer == "c");
        assert_eq!(cut.closed.len(), 1);
    }

    /// Reconfiguring stops every dialer and closes links to nodes that left.
    #[test]
    fn reconfigure_restarts_dialers_and_drops_leavers() {
        let mut a = keeper("a", Topology::Mesh);
        a.follow(0, |_| false);
        a.up("d", true, 1);
        a.dial_failed("c", 0);
        let nodes = names(&["a", "b", "c"]);
        let plan = LinkPlan::new(&Topology::Mesh, &nodes, None).unwrap();
        assert_eq!(a.reconfigure(plan, 500), names(&["b", "c", "d"]));
        let changes = a.follow(600, |_| false);
        assert_eq!(changes.closed, vec![("d".into(), 1, "it left the cluster")]);
        assert_eq!(changes.dial, names(&["b", "c"]));
        assert_eq!(a.status(600).unreachable, names(&["c"]));
    }
}
