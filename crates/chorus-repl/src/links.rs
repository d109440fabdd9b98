//! Self-healing links: which peers a node links to now, given the planned topology
//! and the nodes it could not reach for longer than the heal timeout.
//!
//! ```text
//!  planned graph ──┐
//!  unreachable ────┼─▶ LinkPlan::plan(me) ─▶ links  (dial or keep)
//!  standby hub ────┘                        probes (unreachable: keep trying, to notice a return)
//! ```
//!
//! One rule covers every topology: a node links to the nearest reachable nodes of
//! the planned graph, searching *through* unreachable ones. With nothing
//! unreachable these are exactly its planned neighbours. In a ring, a dead node's two
//! neighbours find each other; in a star whose hub is dead, every spoke reaches every
//! other spoke through the hub (a mesh among the spokes), unless a standby hub is
//! named, in which case the spokes form a star around it.
//!
//! **Invariant:** two nodes that agree on who is unreachable plan the same links
//! (each plans the other), and the links among reachable nodes connect every
//! reachable node the planned graph connects through unreachable ones. Where
//! beliefs differ (one side cannot reach a node the other can), the side that wants a
//! link dials it and the other accepts it; the graph stays connected either way.
//!
//! **Invariant:** the unreachable nodes a plan skips over are probes: the node keeps
//! dialling them, so when one returns it is linked again and the plan goes back to
//! the planned links.

use crate::topology::{Topology, TopologyError};
use std::collections::{BTreeMap, BTreeSet};

/// The planned topology of a cluster, ready to plan links around failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    /// Planned neighbours of every node.
    graph: BTreeMap<String, BTreeSet<String>>,
    /// For a star: the hub, and the standby hub that takes over when it is down.
    hubs: Option<(String, Option<String>)>,
    nodes: Vec<String>,
}

/// What a node should do with its links now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Peers to link with (dial when not linked, keep when linked).
    pub links: BTreeSet<String>,
    /// Unreachable peers the plan works around: dialled now and then, so their
    /// return is noticed.
    pub probes: BTreeSet<String>,
}

impl LinkPlan {
    /// The plan for `topology` over `nodes`; `standby_hub` is for a star only.
    pub fn new(
        topology: &Topology,
        nodes: &[String],
        standby_hub: Option<&str>,
    ) -> Result<LinkPlan, TopologyError> {
        let mut graph: BTreeMap<String, BTreeSet<String>> =
            nodes.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for (a, b) in topology.links(nodes)? {
            graph.get_mut(&a).expect("checked").insert(b.clone());
            graph.get_mut(&b).expect("checked").insert(a);
        }
        let hubs = match (topology, standby_hub) {
            (Topology::Star { hub }, standby) => {
                if let Some(standby) = standby {
                    if !graph.contains_key(standby) {
                        return Err(TopologyError::UnknownNode(standby.to_owned()));
                    }
                    if standby == hub {
                        return Err(TopologyError::StandbyIsHub(standby.to_owned()));
                    }
                }
                Some((hub.clone(), standby.map(str::to_owned)))
            }
            (_, None) => None,
            (_, Some(_)) => return Err(TopologyError::StandbyWithoutStar),
        };
        Ok(LinkPlan {
            graph,
            hubs,
            nodes: nodes.to_vec(),
        })
    }

    /// The planned neighbours of `me` (empty for a node not in the cluster).
    pub fn planned(&self, me: &str) -> BTreeSet<String> {
        self.graph.get(me).cloned().unwrap_or_default()
    }

    /// Every member, in cluster-file order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The links `me` should have while `unreachable` cannot be reached.
    pub fn plan(&self, me: &str, unreachable: &BTreeSet<String>) -> Plan {
        if let Some((hub, Some(standby))) = &self.hubs
            && unreachable.contains(hub)
            && !unreachable.contains(standby)
        {
            // The standby hub takes over: a star around it, still probing the hub.
            let nodes: Vec<String> = self.nodes.iter().filter(|n| *n != hub).cloned().collect();
            let standby_star = LinkPlan::new(
                &Topology::Star {
                    hub: standby.clone(),
                },
                &nodes,
                None,
            )
            .expect("a star over known nodes");
            let mut plan = standby_star.plan(me, unreachable);
            if me != hub {
                plan.probes.insert(hub.clone());
            }
            return plan;
        }
        // Search the planned graph from `me`, passing through unreachable nodes only.
        let mut plan = Plan::default();
        let mut seen = BTreeSet::from([me.to_owned()]);
        let mut frontier = vec![me.to_owned()];
        while let Some(at) = frontier.pop() {
            for next in self.graph.get(&at).into_iter().flatten() {
                if !seen.insert(next.clone()) {
                    continue;
                }
                if unreachable.contains(next) {
                    plan.probes.insert(next.clone());
                    frontier.push(next.clone());
                } else {
                    plan.links.insert(next.clone());
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn set(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn plan(p: &LinkPlan, me: &str, down: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
        let plan = p.plan(me, &set(down));
        (plan.links, plan.probes)
    }

    /// With nothing unreachable, the plan is the planned neighbours.
    #[test]
    fn healthy_plan_is_the_planned_links() {
        let nodes = names(&["a", "b", "c", "d", "e"]);
        for topology in [
            Topology::Mesh,
            Topology::Ring,
            Topology::Star { hub: "c".into() },
        ] {
            let p = LinkPlan::new(&topology, &nodes, None).unwrap();
            for me in &nodes {
                assert_eq!(p.plan(me, &BTreeSet::new()).links, p.planned(me));
                assert!(p.plan(me, &BTreeSet::new()).probes.is_empty());
            }
        }
    }

    /// A ring links around one dead node, and around two adjacent ones.
    #[test]
    fn ring_links_around_dead_nodes() {
        let p = LinkPlan::new(&Topology::Ring, &names(&["a", "b", "c", "d", "e"]), None).unwrap();
        assert_eq!(plan(&p, "b", &["c"]), (set(&["a", "d"]), set(&["c"])));
        assert_eq!(plan(&p, "d", &["c"]), (set(&["b", "e"]), set(&["c"])));
        assert_eq!(plan(&p, "a", &["c"]), (set(&["b", "e"]), set(&[])));
        assert_eq!(
            plan(&p, "b", &["c", "d"]),
            (set(&["a", "e"]), set(&["c", "d"]))
        );
        assert_eq!(
            plan(&p, "e", &["c", "d"]),
            (set(&["a", "b"]), set(&["c", "d"]))
        );
    }

    /// A star whose hub is dead becomes a mesh of spokes, or a star around the
    /// standby hub; a dead spoke changes nothing for the others.
    #[test]
    fn star_falls_back_to_a_mesh_or_the_standby_hub() {
        let nodes = names(&["a", "b", "c", "d"]);
        let star = Topology::Star { hub: "a".into() };
        let p = LinkPlan::new(&star, &nodes, None).unwrap();
        assert_eq!(plan(&p, "b", &["a"]), (set(&["c", "d"]), set(&["a"])));
        assert_eq!(plan(&p, "c", &["d"]), (set(&["a"]), set(&[])));
        assert_eq!(plan(&p, "a", &["d"]), (set(&["b", "c"]), set(&["d"])));

        let p = LinkPlan::new(&star, &nodes, Some("b")).unwrap();
        assert_eq!(plan(&p, "c", &["a"]), (set(&["b"]), set(&["a"])));
        assert_eq!(plan(&p, "b", &["a"]), (set(&["c", "d"]), set(&["a"])));
        // With the standby down too, the spokes fall back to a mesh.
        assert_eq!(plan(&p, "c", &["a", "b"]), (set(&["d"]), set(&["a", "b"])));
        assert_eq!(
            LinkPlan::new(&star, &nodes, Some("z")),
            Err(TopologyError::UnknownNode("z".into()))
        );
        assert_eq!(
            LinkPlan::new(&Topology::Ring, &nodes, Some("b")),
            Err(TopologyError::StandbyWithoutStar)
        );
    }

    /// Nodes that agree on who is unreachable plan each other (links are symmetric),
    /// and the links among reachable nodes keep them connected, for every subset of
    /// dead nodes of several topologies.
    #[test]
    fn plans_are_symmetric_and_connected() {
        let nodes = names(&["a", "b", "c", "d", "e", "f"]);
        let topologies = [
            (Topology::Ring, None),
            (Topology::Star { hub: "a".into() }, None),
            (Topology::Star { hub: "a".into() }, Some("f")),
            (
                Topology::Custom {
                    links: vec![
                        ("a".into(), "b".into()),
                        ("b".into(), "c".into()),
                        ("c".into(), "d".into()),
                        ("b".into(), "e".into()),
                        ("e".into(), "f".into()),
                    ],
                },
                None,
            ),
        ];
        for (topology, standby) in topologies {
            let p = LinkPlan::new(&topology, &nodes, standby).unwrap();
            for mask in 0u32..(1 << nodes.len()) {
                let down: BTreeSet<String> = nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| n.clone())
                    .collect();
                let live: Vec<&String> = nodes.iter().filter(|n| !down.contains(*n)).collect();
                let plans: BTreeMap<&String, Plan> =
                    live.iter().map(|n| (*n, p.plan(n, &down))).collect();
                for (me, plan) in &plans {
                    for peer in &plan.links {
                        assert!(!down.contains(peer));
                        assert!(
                            plans[peer].links.contains(*me),
                            "{topology:?} down {down:?}: {me} plans {peer}, not back"
                        );
                    }
                }
                let Some(first) = live.first() else { continue };
                let mut reached = BTreeSet::from([*first]);
                let mut frontier = vec![*first];
                while let Some(at) = frontier.pop() {
                    for next in &plans[at].links {
                        if reached.insert(next) {
                            frontier.push(next);
                        }
                    }
                }
                assert_eq!(reached.len(), live.len(), "{topology:?} down {down:?}");
            }
        }
    }
}
