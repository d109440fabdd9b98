//! Planned links between named nodes: mesh, ring, star or a custom graph.

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every node linked to every other.
    Mesh,
    /// Each node linked to the next in order, the last to the first.
    Ring,
    /// Every node linked to the hub.
    Star { hub: String },
    /// The given undirected links.
    Custom { links: Vec<(String, String)> },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("node {0:?} is named twice")]
    DuplicateNode(String),
    #[error("{0:?} is not a node of the cluster")]
    UnknownNode(String),
    #[error("a link from {0:?} to itself")]
    SelfLink(String),
    #[error("the nodes are not all connected: {0:?} cannot reach {1:?}")]
    Disconnected(String, String),
    #[error("standby_hub is for topology \"star\" only")]
    StandbyWithoutStar,
    #[error("the standby hub {0:?} is the hub itself")]
    StandbyIsHub(String),
}

impl Topology {
    /// Every planned link as an ordered pair `(smaller name, larger name)`, after
    /// checking that names are unique, links name known nodes, and the graph is
    /// connected (otherwise some replicas could never converge).
    pub fn links(&self, nodes: &[String]) -> Result<BTreeSet<(String, String)>, TopologyError> {
        let mut seen = BTreeSet::new();
        for node in nodes {
            if !seen.insert(node.as_str()) {
                return Err(TopologyError::DuplicateNode(node.clone()));
            }
        }
        let pair = |a: &str, b: &str| {
            if a < b {
                (a.to_owned(), b.to_owned())
            } else {
                (b.to_owned(), a.to_owned())
            }
        };
        let mut links = BTreeSet::new();
        match self {
            Topology::Mesh => {
                for (i, a) in nodes.iter().enumerate() {
                    for b in &nodes[i + 1..] {
                        links.insert(pair(a, b));
                    }
                }
            }
            Topology::Ring => {
                for (i, a) in nodes.iter().enumerate() {
                    let b = &nodes[(i + 1) % nodes.len()];
                    if a != b {
                        links.insert(pair(a, b));
                    }
                }
            }
            Topology::Star { hub } => {
                if !seen.contains(hub.as_str()) {
                    return Err(TopologyError::UnknownNode(hub.clone()));
                }
                for node in nodes.iter().filter(|n| *n != hub) {
                    links.insert(pair(hub, node));
                }
            }
            Topology::Custom { links: given } => {
                for (a, b) in given {
                    for end in [a, b] {
                        if !seen.contains(end.as_str()) {
                            return Err(TopologyError::UnknownNode(end.clone()));
                        }
                    }
                    if a == b {
                        return Err(TopologyError::SelfLink(a.clone()));
                    }
                    links.insert(pair(a, b));
                }
            }
        }
        if let Some(first) = nodes.first() {
            let mut reached = BTreeSet::from([first.as_str()]);
            let mut frontier = vec![first.as_str()];
            while let Some(at) = frontier.pop() {
                for (a, b) in &links {
                    let next = if a == at {
                        b
                    } else if b == at {
                        a
                    } else {
                        continue;
                    };
                    if reached.insert(next.as_str()) {
                        frontier.push(next);
                    }
                }
            }
            if let Some(lost) = nodes.iter().find(|n| !reached.contains(n.as_str())) {
                return Err(TopologyError::Disconnected(first.clone(), lost.clone()));
            }
        }
        Ok(links)
    }

    /// The planned neighbours of `node`.
    pub fn neighbours(&self, nodes: &[String], node: &str) -> Result<Vec<String>, TopologyError> {
        Ok(self
            .links(nodes)?
            .into_iter()
            .filter_map(|(a, b)| {
                if a == node {
                    Some(b)
                } else if b == node {
                    Some(a)
                } else {
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Each topology yields its planned neighbours; bad graphs are refused.
    #[test]
    fn neighbours_per_topology() {
        let nodes = names(&["a", "b", "c", "d"]);
        assert_eq!(
            Topology::Mesh.neighbours(&nodes, "a").unwrap(),
            names(&["b", "c", "d"])
        );
        assert_eq!(
            Topology::Ring.neighbours(&nodes, "a").unwrap(),
            names(&["b", "d"])
        );
        assert_eq!(
            Topology::Ring.neighbours(&nodes, "c").unwrap(),
            names(&["b", "d"])
        );
        let star = Topology::Star { hub: "b".into() };
        assert_eq!(
            star.neighbours(&nodes, "b").unwrap(),
            names(&["a", "c", "d"])
        );
        assert_eq!(star.neighbours(&nodes, "d").unwrap(), names(&["b"]));
        let custom = Topology::Custom {
            links: vec![
                ("a".into(), "b".into()),
                ("b".into(), "c".into()),
                ("c".into(), "d".into()),
            ],
        };
        assert_eq!(custom.neighbours(&nodes, "b").unwrap(), names(&["a", "c"]));

        let broken = Topology::Custom {
            links: vec![("a".into(), "b".into())],
        };
        assert!(matches!(
            broken.links(&nodes),
            Err(TopologyError::Disconnected(..))
        ));
        let unknown = Topology::Star { hub: "z".into() };
        assert_eq!(
            unknown.links(&nodes),
            Err(TopologyError::UnknownNode("z".into()))
        );
        assert!(matches!(
            Topology::Mesh.links(&names(&["a", "a"])),
            Err(TopologyError::DuplicateNode(_))
        ));
        let self_link = Topology::Custom {
            links: vec![("a".into(), "a".into())],
        };
        assert!(matches!(
            self_link.links(&nodes),
            Err(TopologyError::SelfLink(_))
        ));
    }
}
