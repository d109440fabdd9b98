//! The cluster file (TOML): the nodes, their addresses, and the planned links.
//!
//! ```toml
//! cluster = "prod"          # optional; nodes of different clusters refuse each other
//! topology = "ring"         # mesh | ring | star | custom
//! # hub = "a"               # star only
//! # links = [["a","b"]]     # custom only (undirected)
//! # standby_hub = "b"       # star only: takes over while the hub is unreachable
//! # heal_after_ms = 5000    # how long a node is unreachable before links go around it
//! [[nodes]]
//! name = "a"
//! http = "127.0.0.1:7001"
//! peer = "127.0.0.1:7101"
//! [[emulate]]               # optional link emulation (both directions)
//! link = ["a", "b"]
//! delay_ms = 40             # one-way; also jitter_ms, loss, partitioned
//! ```
//! Ring order is the order of `[[nodes]]`. Unknown keys are an error.

use crate::emulation::LinkEmulation;
use chorus_repl::{LinkPlan, Topology, TopologyError};
use serde::Deserialize;
use std::path::Path;

/// The cluster name when the file gives none.
pub const DEFAULT_CLUSTER: &str = "chorus";
/// How long a node stays unreachable before its neighbours link around it.
pub const HEAL_AFTER_MS: u64 = 5_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    cluster: Option<String>,
    topology: String,
    hub: Option<String>,
    links: Option<Vec<[String; 2]>>,
    standby_hub: Option<String>,
    heal_after_ms: Option<u64>,
    nodes: Vec<NodeEntry>,
    #[serde(default)]
    emulate: Vec<EmulateEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmulateEntry {
    link: [String; 2],
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    partitioned: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    http: String,
    peer: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub http: String,
    pub peer: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub topology: Topology,
    pub nodes: Vec<ClusterNode>,
    /// Star only: the node that takes over as hub while the hub is unreachable.
    pub standby_hub: Option<String>,
    pub heal_after_ms: u64,
    /// Emulated conditions per link, as `(a, b, conditions)`.
    pub emulate: Vec<(String, String, LinkEmulation)>,
}

/// Why a cluster file, or a change to it, is refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read cluster file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cluster file {path}: {error}")]
    In {
        path: String,
        error: Box<ClusterError>,
    },
    /// The file's text or settings (the message says which and what to write).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("the new cluster file does not name this node {0:?}")]
    NotNamed(String),
    #[error("this node's peer address changes ({from} to {to}); restart it to move")]
    PeerMoved { from: String, to: String },
    #[error("the cluster name changes ({from:?} to {to:?}); restart every node to rename")]
    Renamed { from: String, to: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("replication has stopped")]
    Stopped,
}

fn invalid(message: impl Into<String>) -> ClusterError {
    ClusterError::Invalid(message.into())
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ClusterError::Read {
            path: shown.clone(),
            error,
        })?;
        ClusterConfig::from_toml(&text).map_err(|error| ClusterError::In {
            path: shown,
            error: Box::new(error),
        })
    }

    pub fn from_toml(text: &str) -> Result<ClusterConfig, ClusterError> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| invalid(e.to_string().trim()))?;
        let topology = match (file.topology.as_str(), file.hub, file.links) {
            ("mesh", None, None) => Topology::Mesh,
            ("ring", None, None) => Topology::Ring,
            ("star", Some(hub), None) => Topology::Star { hub },
            ("star", None, _) => return Err(invalid("topology \"star\" needs hub = \"NAME\"")),
            ("custom", None, Some(links)) => Topology::Custom {
                links: links.into_iter().map(|[a, b]| (a, b)).collect(),
            },
            ("custom", _, None) => {
                return Err(invalid(
                    "topology \"custom\" needs links = [[\"a\", \"b\"], ...]",
                ));
            }
            ("mesh" | "ring" | "star" | "custom", _, _) => {
                return Err(invalid("hub is for star only, links for custom only"));
            }
            (other, _, _) => {
                return Err(invalid(format!(
                    "unknown topology {other:?}; use mesh, ring, star or custom"
                )));
            }
        };
        if file.nodes.is_empty() {
            return Err(invalid("the cluster has no [[nodes]]"));
        }
        let config = ClusterConfig {
            name: file.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into()),
            topology,
            standby_hub: file.standby_hub,
            heal_after_ms: file.heal_after_ms.unwrap_or(HEAL_AFTER_MS),
            emulate: file
                .emulate
                .into_iter()
                .map(|e| {
                    let [a, b] = e.link;
                    let conditions = LinkEmulation {
                        delay_ms: e.delay_ms,
                        jitter_ms: e.jitter_ms,
                        loss: e.loss,
                        partitioned: e.partitioned,
                    };
                    (a, b, conditions)
                })
                .collect(),
            nodes: file
                .nodes
                .into_iter()
                .map(|n| ClusterNode {
                    name: n.name,
                    http: n.http,
                    peer: n.peer,
                })
                .collect(),
        };
        config.link_plan()?;
        for (a, b, conditions) in &config.emulate {
            for end in [a, b] {
                if config.node(end).is_none() {
                    return Err(invalid(format!(
                        "[[emulate]] names {end:?}, not a node of the cluster"
                    )));
                }
            }
            conditions.check().map_err(invalid)?;
        }
        Ok(config)
    }

    /// The planned links, ready to be planned around unreachable nodes.
    pub fn link_plan(&self) -> Result<LinkPlan, ClusterError> {
        Ok(LinkPlan::new(
            &self.topology,
            &self.names(),
            self.standby_hub.as_deref(),
        )?)
    }

    /// The emulated conditions of the link between `a` and `b` (the last entry
    /// naming it wins; none means a plain link).
    pub fn emulation(&self, a: &str, b: &str) -> LinkEmulation {
        self.emulate
            .iter()
            .rev()
            .find(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
            .map(|(_, _, conditions)| conditions.clone())
            .unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Why node `me` running under this file cannot take `new` without a restart,
    /// if it cannot: `new` must name it, at the same peer address, in a cluster of
    /// the same name.
    pub fn check_reload(&self, new: &ClusterConfig, me: &str) -> Result<(), ClusterError> {
        match (self.node(me), new.node(me)) {
            (_, None) => return Err(ClusterError::NotNamed(me.to_owned())),
            (Some(old), Some(new)) if old.peer != new.peer => {
                return Err(ClusterError::PeerMoved {
                    from: old.peer.clone(),
                    to: new.peer.clone(),
                });
            }
            _ => {}
        }
        if new.name != self.name {
            return Err(ClusterError::Renamed {
                from: self.name.clone(),
                to: new.name.clone(),
            });
        }
        Ok(())
    }

    /// The planned neighbours of `name`.
    pub fn neighbours(&self, name: &str) -> Vec<String> {
        self.link_plan()
            .expect("checked when loaded")
            .planned(name)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"
[[nodes]]
name = "a"
http = "127.0.0.1:7001"
peer = "127.0.0.1:7101"
[[nodes]]
name = "b"
http = "127.0.0.1:7002"
peer = "127.0.0.1:7102"
[[nodes]]
name = "c"
http = "127.0.0.1:7003"
peer = "127.0.0.1:7103"
"#;

    /// The contract's example parses; every topology finds its neighbours.
    #[test]
    fn parses_topologies() {
        let mesh = ClusterConfig::from_toml(&format!("topology = \"mesh\"\n{NODES}")).unwrap();
        assert_eq!(mesh.name, DEFAULT_CLUSTER);
        assert_eq!(mesh.neighbours("a"), ["b", "c"]);
        assert_eq!(mesh.node("b").unwrap().peer, "127.0.0.1:7102");
        let star = ClusterConfig::from_toml(&format!("topology = \"star\"\nhub = \"b\"\n{NODES}"))
            .unwrap();
        assert_eq!(star.neighbours("a"), ["b"]);
        let custom = ClusterConfig::from_toml(&format!(
            "cluster = \"x\"\ntopology = \"custom\"\nlinks = [[\"a\",\"b\"],[\"b\",\"c\"]]\n{NODES}"
        ))
        .unwrap();
        assert_eq!(custom.name, "x");
        assert_eq!(custom.neighbours("c"), ["b"]);
        assert_eq!(custom.heal_after_ms, HEAL_AFTER_MS);

        let healing = ClusterConfig::from_toml(&format!(
            "topology = \"star\"\nhub = \"a\"\nstandby_hub = \"b\"\nheal_after_ms = 700\n{NODES}\
             [[emulate]]\nlink = [\"c\", \"a\"]\ndelay_ms = 40\nloss = 0.1\n"
        ))
        .unwrap();
        assert_eq!(healing.standby_hub.as_deref(), Some("b"));
        assert_eq!(healing.heal_after_ms, 700);
        assert_eq!(healing.emulation("a", "c").delay_ms, 40);
        assert!(!healing.emulation("a", "b").is_active());
    }

    /// Unknown keys, unknown topologies, misplaced options and broken graphs are errors
    /// that say what is wrong.
    #[test]
    fn refuses_bad_files() {
        let bad = |text: String, needle: &str| {
            let err = ClusterConfig::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        bad(
            format!("topology = \"mesh\"\ncolour = \"red\"\n{NODES}"),
            "colour",
        );
        bad(
            format!("topology = \"hypercube\"\n{NODES}"),
            "unknown topology",
        );
        bad(format!("topology = \"star\"\n{NODES}"), "needs hub");
        bad(
            format!("topology = \"mesh\"\nhub = \"a\"\n{NODES}"),
            "star only",
        );
        bad(
            format!("topology = \"custom\"\nlinks = [[\"a\",\"b\"]]\n{NODES}"),
            "cannot reach",
        );
        bad(
            format!("topology = \"star\"\nhub = \"z\"\n{NODES}"),
            "not a node",
        );
        bad("topology = \"mesh\"\nnodes = []".into(), "no [[nodes]]");
        bad(
            format!("topology = \"ring\"\nstandby_hub = \"a\"\n{NODES}"),
            "\"star\" only",
        );
        bad(
            format!("topology = \"mesh\"\n{NODES}[[emulate]]\nlink = [\"a\", \"z\"]\n"),
            "not a node",
        );
        bad(
            format!("topology = \"mesh\"\n{NODES}[[emulate]]\nlink = [\"a\", \"b\"]\nloss = 3.0\n"),
            "probability",
        );
        bad(
            format!("topology = \"mesh\"\n{NODES}[[emulate]]\nlink = [\"a\", \"b\"]\nlag = 3\n"),
            "lag",
        );
        bad(
            format!(
                "topology = \"mesh\"\n{NODES}[[nodes]]\nname = \"a\"\nhttp = \"x\"\npeer = \"y\"\n"
            ),
            "twice",
        );
    }
}
