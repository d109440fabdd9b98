//! The causality and conflict model of Chorus, with no I/O, no async and no JSON.
//!
//! Everything a replica decides about concurrent writes is decided here, as pure
//! functions of the data, so that every replica decides the same way:
//!
//! ```text
//!   Op (dot, hlc, context, value) ──apply──▶ KeyState (siblings + causal context)
//!                                                 │
//!                  Policy::winner / Policy::conflict
//!                                                 ▼
//!                        what a read shows, ConflictRecord?
//! ```
//!
//! **Architecture Invariant:** this crate never reads a clock, a random source or a
//! file. Time comes in through [`hlc::PhysicalClock`]; documents are opaque bytes.
//! **Architecture Invariant:** core types are not `Serialize`; the store and the
//! server convert them at their boundary, so the persisted and wire formats are
//! versioned where they are written.

pub mod conflict;
pub mod context_token;
pub mod crdt;
pub mod dot;
pub mod hlc;
pub mod key_state;
pub mod op;
pub mod policy;
pub use chorus_text::varint;
pub mod version_vector;

pub use conflict::{ConflictId, ConflictRecord, Outcome};
pub use context_token::{ContextToken, TokenError};
pub use dot::{Dot, NodeId};
pub use hlc::{Hlc, HlcClock, PhysicalClock, SystemClock};
pub use key_state::{CrdtVersion, KeyState, Version};
pub use op::{Entry, EntryBody, Op};
pub use policy::Policy;
pub use version_vector::VersionVector;
