//! The document rules of Chorus: what a document is, and what a read shows of a key's
//! versions under each collection's policy. Pure functions of their inputs.
//!
//! ```text
//!  bytes in ─▶ json::check_document ─▶ (stored by chorus-node)
//!  key state ─▶ document::Document::from_state ─▶ policy: siblings │ lww │ merge │ custom │ crdt
//!                                                   merge::merge, custom::resolve, crdt_json::render
//! ```
//!
//! **Architecture Invariant:** this crate does no I/O, reads no clock and holds no
//! state beyond caches of compiled scripts: every replica that holds the same key
//! state and settings answers the same. It knows JSON (core does not) and nothing of
//! storage, replication or HTTP.
//!
//! **API Boundary:** `chorus-node` builds on it and re-exports what embedders use
//! (`chorus_node::{merge, custom, crdt_json, json, Document, CollectionConfig, ...}`).

pub mod collections;
pub mod crdt_json;
pub mod custom;
pub mod document;
pub mod home;
pub mod json;
pub mod limits;
pub mod merge;
pub mod rights;

pub use collections::{CollectionConfig, Home, SETTINGS_COLLECTION, check_collection_name};
pub use document::{
    Change, ChangesPage, ConflictsPage, Context, DocVersion, Document, KeysPage, document_bytes,
};
