//! The peer runtime of a Chorus node: the cluster file, the links to other nodes
//! (dialled, accepted, healed around unreachable nodes, reconfigured by reload), link
//! emulation, and the tokio tasks that feed the replication engine (`chorus-repl`)
//! and carry out its commands on a [`chorus_node::Node`].
//!
//! ```text
//!  cluster file ─▶ cluster::ClusterConfig ─▶ replication::start ─▶ Replication (status, reload)
//!                                              │ actor: Engine events in, Effect out
//!                                              └ sockets (frames in pieces), timers, link plans
//! ```
//!
//! **Architecture Invariant:** the node knows nothing of this crate: replication
//! reaches it only through its public replica interface (read the log, apply
//! entries, commit replication steps), and status about peers and links lives here.

pub mod cluster;
pub mod emulation;
pub mod replication;
pub mod tls;
