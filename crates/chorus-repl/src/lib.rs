//! Replication between Chorus nodes, without I/O.
//!
//! ```text
//!             ┌────────────── Engine (one per node) ──────────────┐
//!  Event ───▶ │ per peer: what it has, what it acked, what is in   │ ───▶ Command
//!  Connected  │ flight, what waits for dependencies                │      Send(Frame)
//!  Received   └────────────────────────────────────────────────────┘      ReadLog
//!  LogRead, Applied, Committed, Tick                                      Apply, SaveCursor,
//!                                                                         Disconnect
//! ```
//!
//! The runtime (`chorus-peer`'s `replication` module) owns sockets, tasks and the
//! store, feeds events in and executes the commands; the simulator drives the same
//! engine, and the same link decisions ([`LinkKeeper`]), with a seeded network. The clock comes in with events (`Tick`), never read.
//!
//! **Architecture Invariant:** one rule covers every topology. To each connected
//! neighbour a node streams, in its op-log order, the entries that neighbour has not
//! reported as applied; entries relay hop by hop, and version vectors stop loops and
//! duplicates.
//!
//! **Architecture Invariant:** a peer acknowledges an entry only once it is durably
//! applied; its acknowledgement (`Ack`) carries its whole applied version vector and
//! the sender's op-log position it has reached (the durable cursor).

pub mod engine;
pub mod frame;
pub mod keeper;
pub mod links;
mod peer_name;
pub mod topology;

pub use engine::{
    Command, Engine, EngineLimits, Event, LogPosition, Membership, PeerStatus, Stability,
    StateCursor,
};
pub use frame::{Frame, FrameError, Hello, PROTOCOL_VERSION};
pub use keeper::{Admission, Changes, LinkKeeper, LinkStatus};
pub use links::{LinkPlan, Plan};
pub use peer_name::PeerName;
pub use topology::{Topology, TopologyError};
