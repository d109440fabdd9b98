//! What reads return: documents with their versions, pages of keys, changes and
//! conflicts.

use crate::collections::CollectionConfig;
use crate::crdt_json;
use crate::custom::{self, MergeHandler};
use crate::merge;
use chorus_core::crdt;
use chorus_core::{
    ConflictId, ConflictRecord, ContextToken, Dot, Hlc, KeyState, NodeId, Policy, TokenError,
    VersionVector,
};
use std::borrow::Cow;

/// The causal context of a read: which versions of one key it saw. Give it back with
/// a write to replace exactly those versions.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Context(VersionVector);

impl Context {
    /// The context that saw exactly `seen` (what a read of a key state answers).
    pub fn new(seen: VersionVector) -> Context {
        Context(seen)
    }

    /// The versions it saw.
    pub fn vector(&self) -> &VersionVector {
        &self.0
    }

    /// The opaque token form, bound to one document.
    pub fn to_token(&self, collection: &str, key: &str) -> Vec<u8> {
        ContextToken::encode(&self.0, collection, key)
    }

    /// Decodes a token; a corrupt token, or one issued for another document, fails.
    pub fn from_token(token: &[u8], collection: &str, key: &str) -> Result<Context, TokenError> {
        ContextToken::decode(token, collection, key).map(Context)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One live version of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocVersion {
    /// The JSON document, or `None` for a delete that is concurrent with other versions.
    pub value: Option<Vec<u8>>,
    pub origin: NodeId,
    pub hlc: Hlc,
    pub dot: Dot,
    /// A CRDT document (rendered as JSON in `value`). Its dot and HLC are the
    /// greatest of the writes folded into it *here*, which may differ between
    /// replicas holding the same document; reads and digests leave them out.
    pub crdt: bool,
}

/// The document a stored value shows users: a merge collection's header stripped,
/// a CRDT document rendered as JSON.
pub fn document_bytes(value: &[u8]) -> Cow<'_, [u8]> {
    if crdt::is_state(value) {
        let rendered = crdt_json::render_state(value);
        return Cow::Owned(serde_json::to_vec(&rendered).expect("a Value serializes"));
    }
    Cow::Borrowed(merge::strip_header(value))
}

/// A read of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub collection: String,
    pub key: String,
    pub context: Context,
    pub policy: Policy,
    /// The versions a read shows: every sibling under `siblings` and `merge`, the
    /// winner under `lww`. Sorted by dot; values are the documents as written.
    pub versions: Vec<DocVersion>,
    /// The one value, when the policy yields one (see [`Document::value`]).
    value: Option<Vec<u8>>,
    conflict: bool,
    /// Why a `custom` collection's handler left the versions in conflict.
    pub merge_error: Option<String>,
}

impl Document {
    /// The read of `state` under `config`; `handler` merges a `custom` collection's
    /// conflicts.
    pub fn from_state(
        collection: &str,
        key: &str,
        config: &CollectionConfig,
        state: &KeyState,
        handler: Option<&dyn MergeHandler>,
    ) -> Document {
        let policy = config.policy;
        let all = state.versions();
        let shown: Vec<_> = match policy {
            Policy::Siblings | Policy::Merge | Policy::Custom => all.iter().collect(),
            Policy::Lww => policy.winner(&all).into_iter().collect(),
            // A delete beside the CRDT version removed what it saw; it shows nothing.
            Policy::Crdt => all.iter().filter(|v| !v.is_tombstone()).collect(),
        };
        let versions: Vec<DocVersion> = shown
            .into_iter()
            .map(|v| DocVersion {
                value: v
                    .value
                    .as_deref()
                    .filter(|_| !v.is_tombstone())
                    .map(|b| document_bytes(b).into_owned()),
                origin: v.dot.node,
                hlc: v.hlc,
                dot: v.dot,
                crdt: v.is_crdt(),
            })
            .collect();
        let mut merge_error = None;
        let (value, conflict) = match (policy, versions.as_slice()) {
            (Policy::Merge, [_, _, ..]) => {
                let merged = merge::merge(&all, &config.merge);
                (merged.value, merged.conflict)
            }
            (Policy::Custom, [_, _, ..]) => {
                let resolved = match handler {
                    Some(handler) => custom::resolve(handler, &all),
                    None => custom::Resolved {
                        value: None,
                        error: Some("no merge handler for this collection on this node".into()),
                    },
                };
                merge_error = resolved.error;
                (resolved.value, merge_error.is_some())
            }
            (_, [only]) => (only.value.clone(), false),
            (_, many) => (None, many.len() > 1),
        };
        Document {
            collection: collection.to_owned(),
            key: key.to_owned(),
            context: Context(state.context().clone()),
            policy,
            versions,
            value,
            conflict,
            merge_error,
        }
    }

    /// True when the document was never written or is deleted.
    pub fn is_absent(&self) -> bool {
        self.versions.iter().all(|v| v.value.is_none())
    }

    /// True when the read leaves concurrent versions for the user: several shown
    /// under `siblings`, or under `merge` a field whose rule is `siblings` changed
    /// on both sides.
    pub fn conflict(&self) -> bool {
        self.conflict
    }

    /// The one value of the document, when its policy yields one and it is not
    /// deleted: the only version, the lww winner, or the merge of the versions.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

/// A page of keys of one collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<String>,
    /// Pass as `after` for the next page; `None` when the listing is complete.
    pub next: Option<String>,
}

/// A page of documents of one collection, in key order (a range read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentsPage {
    pub docs: Vec<Document>,
    /// Pass as `after` for the next page; `None` when the range is complete.
    pub next: Option<String>,
}

/// One entry of the change feed: a document, at its latest change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The document's latest change in this node's feed; a feed resumes after it.
    pub seq: u64,
    /// The document as it reads now (absent when deleted).
    pub doc: Document,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// The change sequence to resume after: past every change examined, so it
    /// moves even when a filter let none through.
    pub next: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictsPage {
    pub conflicts: Vec<ConflictRecord>,
    pub next: Option<ConflictId>,
}
