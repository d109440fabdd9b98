//! Operations a client asks for, checked against the document and turned into the
//! delta that replicates.
//!
//! [`prepare`] runs at the writing node only, inside its committer, so the checks
//! (types, paths, a bounded counter's rights) see exactly the state the write is
//! applied to. A refused operation refuses the whole write: nothing changes.

use super::map::{Action, Change, Delta, Field, Kind, Map};
use super::sequenced::Seen;
use super::{Corrupted, PATH_DEPTH_MAX};
use crate::{Dot, Hlc, NodeId, VersionVector};
use chorus_text::Beyond;

/// One operation on one field.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Operation {
    /// Names of the nested maps, then of the field.
    pub path: Vec<String>,
    pub update: Update,
}

impl Operation {
    /// Bytes of names and values the operation carries (for size limits).
    pub fn bytes(&self) -> usize {
        self.path.iter().map(String::len).sum::<usize>() + self.value_bytes()
    }

    /// Bytes of the set element, register value, text or list element it carries
    /// (0 for counters, flags, deletes and removes).
    pub fn value_bytes(&self) -> usize {
        match &self.update {
            Update::SetAdd(v)
            | Update::SetRemove(v)
            | Update::MvSet(v)
            | Update::LwwSet(v)
            | Update::ListInsert { value: v, .. } => v.len(),
            Update::TextInsert { text, .. } => text.len(),
            _ => 0,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Update {
    /// Adds to (or, negative, subtracts from) a PN-counter.
    CounterAdd(i64),
    /// Adds to a bounded counter (rights for this node), or subtracts, spending
    /// rights this node holds.
    BoundedAdd(i64),
    /// Moves `by` of this node's rights on a bounded counter to node `to`.
    BoundedTransfer {
        to: NodeId,
        by: u64,
    },
    SetAdd(Vec<u8>),
    SetRemove(Vec<u8>),
    MvSet(Vec<u8>),
    LwwSet(Vec<u8>),
    FlagEnable,
    FlagDisable,
    /// Removes the field (every kind of it) or nested map at the path.
    Remove,
    /// Inserts `text` before the character at `pos` (Unicode code points, in the
    /// version the write's context names; the text's length puts it at the end).
    TextInsert {
        pos: u64,
        text: String,
    },
    /// Deletes `len` characters from `pos`.
    TextDelete {
        pos: u64,
        len: u64,
    },
    /// Inserts `value` (JSON text) before the element at `pos`.
    ListInsert {
        pos: u64,
        value: Vec<u8>,
    },
    /// Deletes `len` elements from `pos`.
    ListDelete {
        pos: u64,
        len: u64,
    },
}

impl Update {
    /// The operation's name in the HTTP API.
    pub fn name(&self) -> &'static str {
        match self {
            Update::CounterAdd(_) => "counter.add",
            Update::BoundedAdd(_) => "bounded.add",
            Update::BoundedTransfer { .. } => "bounded.transfer",
            Update::SetAdd(_) => "set.add",
            Update::SetRemove(_) => "set.remove",
            Update::MvSet(_) => "mvreg.set",
            Update::LwwSet(_) => "lwwreg.set",
            Update::FlagEnable => "flag.enable",
            Update::FlagDisable => "flag.disable",
            Update::Remove => "map.remove",
            Update::TextInsert { .. } => "text.insert",
            Update::TextDelete { .. } => "text.delete",
            Update::ListInsert { .. } => "list.insert",
            Update::ListDelete { .. } => "list.delete",
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Update::CounterAdd(_) => Kind::Counter,
            Update::BoundedAdd(_) | Update::BoundedTransfer { .. } => Kind::Bounded,
            Update::SetAdd(_) | Update::SetRemove(_) => Kind::Set,
            Update::MvSet(_) => Kind::MvRegister,
            Update::LwwSet(_) => Kind::LwwRegister,
            Update::FlagEnable | Update::FlagDisable => Kind::Flag,
            Update::TextInsert { .. } | Update::TextDelete { .. } => Kind::Text,
            Update::ListInsert { .. } | Update::ListDelete { .. } => Kind::List,
            Update::Remove => return None,
        })
    }
}

/// Why an operation was refused. The write it belongs to changes nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("bad path {path:?}: give one or more non-empty names, at most {PATH_DEPTH_MAX} deep")]
    BadPath { path: String },
    #[error(
        "{path} is a {}, so {op} cannot apply to it; use another path, or a {}.* operation",
        found.noun(),
        found.name()
    )]
    TypeMismatch {
        path: String,
        found: Kind,
        op: &'static str,
    },
    #[error("{}", self.describe(|node| node.to_string()))]
    InsufficientRights {
        path: String,
        held: u64,
        needed: u64,
        /// Nodes holding rights, and how many.
        holders: Vec<(NodeId, u64)>,
    },
    #[error("bounded counter {path}: rights cannot be sent to the leader that holds them")]
    SelfTransfer { path: String },
    #[error(
        "{path} holds a bounded counter: its rights cannot be withdrawn without coordination, so it cannot be removed"
    )]
    BoundedNotRemovable { path: String },
    #[error("counter {path} would overflow")]
    Overflow { path: String },
    #[error(
        "{path}: {op} at {pos} (of {len}) goes past the end of the {noun}, which had {shown} \
         items in the version the write was made against; read the document again and \
         edit against its context",
        noun = kind.noun()
    )]
    Beyond {
        path: String,
        op: &'static str,
        kind: Kind,
        pos: u64,
        len: u64,
        shown: u64,
    },
    #[error("{0}")]
    Corrupted(#[from] Corrupted),
}

impl OpError {
    /// A short name of the reason, for metrics and error codes.
    pub fn reason(&self) -> &'static str {
        match self {
            OpError::BadPath { .. } => "bad_path",
            OpError::TypeMismatch { .. } => "type_mismatch",
            OpError::InsufficientRights { .. } => "insufficient_rights",
            OpError::SelfTransfer { .. } => "self_transfer",
            OpError::BoundedNotRemovable { .. } => "bounded_not_removable",
            OpError::Overflow { .. } => "overflow",
            OpError::Beyond { .. } => "beyond_end",
            OpError::Corrupted(_) => "corrupted",
        }
    }

    /// The message, with nodes named by `name_of` (the error's `Display` names them
    /// by id; a node that knows its peers' names can do better).
    pub fn describe(&self, name_of: impl Fn(NodeId) -> String) -> String {
        match self {
            OpError::InsufficientRights {
                path,
                held,
                needed,
                holders,
            } => {
                let holders: Vec<String> = holders
                    .iter()
                    .map(|(node, rights)| format!("{}: {rights}", name_of(*node)))
                    .collect();
                let holders = if holders.is_empty() {
                    "none".to_owned()
                } else {
                    holders.join(", ")
                };
                format!(
                    "bounded counter {path}: this leader holds {held} rights and {needed} are \
                     needed; a leader holding rights ({holders}) can move some here with \
                     bounded.transfer"
                )
            }
            other => other.to_string(),
        }
    }
}

/// The path as users write it, a JSON pointer: `/a/b` (`/` in a name is `~1`, `~`
/// is `~0`).
pub fn path_text(path: &[String]) -> String {
    path.iter()
        .map(|name| format!("/{}", name.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Checks `operations` in order against `doc` (as the writer's node holds it; the
/// writer had seen `context`), applies them to it as the write `dot` at `hlc`, and
/// returns the delta that replicates them. A refused operation leaves `doc` part
/// changed: the caller drops it (and the write changes nothing). Preparing in place
/// costs what the write changes, not a copy of the document.
pub fn prepare(
    doc: &mut Map,
    context: &VersionVector,
    dot: Dot,
    hlc: Hlc,
    operations: &[Operation],
) -> Result<Delta, OpError> {
    let work = doc;
    let mut changes = Vec::with_capacity(operations.len());
    for operation in operations {
        let path = &operation.path;
        let text = path_text(path);
        if path.is_empty() || path.len() > PATH_DEPTH_MAX || path.iter().any(String::is_empty) {
            return Err(OpError::BadPath { path: text });
        }
        check_kinds(work, operation)?;
        let action = match operation.update.kind() {
            Some(kind @ (Kind::Text | Kind::List)) => {
                let seen = Seen {
                    context,
                    dot: Some(dot),
                };
                edit(work, operation, kind, dot.node, &seen, &text)?
            }
            _ => action(work, operation, dot.node, &text)?,
        };
        let change = Change {
            path: path.clone(),
            action,
        };
        work.apply(&change, dot, hlc, context)?;
        changes.push(change);
    }
    Ok(Delta { changes })
}

/// Every map on the path must be a map, and the field must be of the operation's
/// kind (or not exist yet).
fn check_kinds(doc: &Map, operation: &Operation) -> Result<(), OpError> {
    let op = operation.update.name();
    let mut map = doc;
    for (depth, name) in operation.path.iter().enumerate() {
        let last = depth + 1 == operation.path.len();
        let wanted = if last {
            operation.update.kind()
        } else {
            Some(Kind::Map)
        };
        let kinds = map.kinds(name);
        if let Some(wanted) = wanted
            && !kinds.is_empty()
            && !kinds.contains(&wanted)
        {
            return Err(OpError::TypeMismatch {
                path: path_text(&operation.path[..=depth]),
                found: kinds[0],
                op,
            });
        }
        match map.field(name, Kind::Map) {
            Some(Field::Map(inner)) if !last => map = inner,
            _ => break,
        }
    }
    Ok(())
}

/// The operations of a text or list edit, made (and applied) in `work` as `node`:
/// its positions count the items shown in the version `seen` names.
fn edit(
    work: &mut Map,
    operation: &Operation,
    kind: Kind,
    node: NodeId,
    seen: &Seen,
    path: &str,
) -> Result<Action, OpError> {
    let (last, parents) = operation.path.split_last().expect("checked");
    let field = work.map_mut(parents).field_mut((last.clone(), kind));
    let beyond = |pos: u64, len: u64| {
        move |Beyond { len: shown }| OpError::Beyond {
            path: path.to_owned(),
            op: operation.update.name(),
            kind,
            pos,
            len,
            shown,
        }
    };
    Ok(match (field, &operation.update) {
        (Field::Text(t), Update::TextInsert { pos, text }) => Action::Text(match text.is_empty() {
            true => Vec::new(),
            false => vec![
                t.insert(node, seen, *pos, text.clone())
                    .map_err(beyond(*pos, 0))?,
            ],
        }),
        (Field::Text(t), Update::TextDelete { pos, len }) => Action::Text(
            t.delete(node, seen, *pos, *len)
                .map_err(beyond(*pos, *len))?,
        ),
        (Field::List(l), Update::ListInsert { pos, value }) => {
            let element = String::from_utf8_lossy(value).into_owned();
            Action::List(vec![
                l.insert(node, seen, *pos, vec![element])
                    .map_err(beyond(*pos, 0))?,
            ])
        }
        (Field::List(l), Update::ListDelete { pos, len }) => Action::List(
            l.delete(node, seen, *pos, *len)
                .map_err(beyond(*pos, *len))?,
        ),
        (field, update) => unreachable!(
            "an edit of a {} goes to a field of its kind, not {:?}",
            update.name(),
            field.kind()
        ),
    })
}

fn action(doc: &Map, operation: &Operation, node: NodeId, path: &str) -> Result<Action, OpError> {
    let bounded = || match doc.get(&operation.path, Kind::Bounded) {
        Some(Field::Bounded(b)) => b.clone(),
        _ => Default::default(),
    };
    let refused = |needed: u64| {
        let b = bounded();
        OpError::InsufficientRights {
            path: path.to_owned(),
            held: b.rights(node),
            needed,
            holders: b.holders().into_iter().collect(),
        }
    };
    Ok(match &operation.update {
        Update::CounterAdd(by) => {
            let own = match doc.get(&operation.path, Kind::Counter) {
                Some(Field::Counter(d)) => d
                    .iter()
                    .filter(|(dot, _)| dot.node == node)
                    .map(|(_, v)| *v)
                    .sum(),
                _ => 0i64,
            };
            let overflow = || OpError::Overflow {
                path: path.to_owned(),
            };
            let total = own.checked_add(*by).ok_or_else(overflow)?;
            // The sum this node sees must stay an i64 too, or at least not move
            // further out: concurrent adds elsewhere may have taken it out (reads then
            // show the exact sum), and a write bringing it back is welcome.
            if let Some(Field::Counter(d)) = doc.get(&operation.path, Kind::Counter) {
                let before = Field::counter_value(d);
                let after = before + i128::from(*by);
                let fits = |sum: i128| i64::try_from(sum).is_ok();
                if !fits(after) && (fits(before) || after.abs() > before.abs()) {
                    return Err(overflow());
                }
            }
            Action::CounterTotal(total)
        }
        Update::BoundedAdd(by) if *by >= 0 => {
            let entry = bounded().add(node, by.unsigned_abs());
            Action::BoundedEntry(entry.ok_or_else(|| OpError::Overflow {
                path: path.to_owned(),
            })?)
        }
        Update::BoundedAdd(by) => {
            let needed = by.unsigned_abs();
            Action::BoundedEntry(
                bounded()
                    .spend(node, needed)
                    .ok_or_else(|| refused(needed))?,
            )
        }
        Update::BoundedTransfer { to, by } => {
            if *to == node {
                return Err(OpError::SelfTransfer {
                    path: path.to_owned(),
                });
            }
            Action::BoundedEntry(bounded().send(node, *to, *by).ok_or_else(|| refused(*by))?)
        }
        Update::SetAdd(element) => Action::SetAdd(element.clone()),
        Update::SetRemove(element) => Action::SetRemove(element.clone()),
        Update::MvSet(value) => Action::MvSet(value.clone()),
        Update::LwwSet(value) => Action::LwwSet(value.clone()),
        Update::FlagEnable => Action::FlagEnable,
        Update::FlagDisable => Action::FlagDisable,
        Update::TextInsert { .. }
        | Update::TextDelete { .. }
        | Update::ListInsert { .. }
        | Update::ListDelete { .. } => unreachable!("edits are made by `edit`"),
        Update::Remove => {
            if doc.holds_bounded(&operation.path) {
                return Err(OpError::BoundedNotRemovable {
                    path: path.to_owned(),
                });
            }
            Action::Remove
        }
    })
}
