//! Frames of the peer protocol, and their bytes.
//!
//! A frame is encoded as `[format byte 0x01] [postcard body]`. On the wire it travels
//! in pieces of at most [`PIECE_BYTES_MAX`], each `[length: u32 BE] [more: u8]
//! [bytes]` (`more` is 1 when another piece of the same frame follows, 0 on its
//! last), so that a frame larger than any buffer a receiver allocates ahead (one key
//! state with many 16 MiB siblings, a large conflict record) still travels; the
//! receiver grows its buffer only as bytes arrive, up to [`FRAME_BYTES_MAX`] (and
//! [`HELLO_BYTES_MAX`] before a handshake completes). Entries travel in the op-log
//! record encoding of `chorus-codec` (one format for disk and wire).
//!
//! A session: the dialer sends `Hello`, the listener answers `Hello` or `Refused`.
//! Then both sides stream `Entries` and answer them with `Ack`; `Ping`/`Pong` keep an
//! idle link alive.

use chorus_codec::{self as codec, bytes::Blob};
use chorus_core::{ConflictRecord, Entry, KeyState, NodeId, VersionVector};
use serde::{Deserialize, Serialize};

/// The protocol version; a peer speaking another is refused at the handshake.
/// Version 2 split frames into pieces on the wire; version 4 tells members' incarnations
/// in `Known` (a member restored from a backup starts a new one).
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame a peer may send, in bytes of its encoding. Senders bound their
/// frames by bytes far below this (a batch of entries, a part of a state transfer),
/// except that one entry, key state or conflict record always travels whole: this
/// bounds the largest such item that can replicate (see `chorus_node::limits`). A
/// larger frame is a corrupt or hostile stream and ends the connection.
pub const FRAME_BYTES_MAX: usize = 1 << 30;

/// Largest piece of a frame on the wire, in bytes: what a receiver reads before it
/// knows more is coming.
pub const PIECE_BYTES_MAX: usize = 1 << 20;

/// Largest frame before the handshake completes (a `Hello` or `Refused`): a
/// connection that has not proved it is a peer holds at most this much memory.
pub const HELLO_BYTES_MAX: usize = 256 * 1024;

/// Replica names a `Hello` may carry, and the longest name: what a handshake may
/// teach a node is bounded, so its own `Hello` stays within [`HELLO_BYTES_MAX`].
pub const HELLO_NAMES_MAX: usize = 512;
pub const NODE_NAME_BYTES_MAX: usize = 128;

const _: () = assert!(HELLO_NAMES_MAX * (NODE_NAME_BYTES_MAX + 16) < HELLO_BYTES_MAX / 2);
const _: () = assert!(PIECE_BYTES_MAX <= u32::MAX as usize && HELLO_BYTES_MAX < FRAME_BYTES_MAX);

const FRAME_FORMAT: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub cluster: String,
    pub name: String,
    pub node_id: NodeId,
    /// Everything the sender has durably applied.
    pub applied: VersionVector,
    /// Names of replicas the sender knows, so origins display by name everywhere.
    pub names: Vec<(NodeId, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    /// The handshake was refused, and why.
    Refused {
        reason: String,
    },
    /// Entries of the sender's op log, each with its sequence number, in log order:
    /// those the receiver lacks among the entries after `from_seq` through
    /// `through_seq`. Frames of a session chain (`from_seq` is the previous frame's
    /// `through_seq`; the first has `resumes` set), so a lost, repeated or reordered
    /// frame is detected.
    Entries {
        entries: Vec<(u64, Entry)>,
        from_seq: u64,
        through_seq: u64,
        resumes: bool,
    },
    /// The receiver has durably applied what `applied` says, and every entry of the
    /// sender's log through `through_seq` that it needs.
    Ack {
        applied: VersionVector,
        through_seq: u64,
    },
    /// A state transfer begins: a hash of the sender's key states in each of 256
    /// buckets of the key space, for the receiver to compare with its own.
    StateOffer {
        hashes: Vec<u64>,
    },
    /// The buckets whose hashes differ: only their key states are sent.
    StateWanted {
        buckets: Vec<u8>,
    },
    /// Part of a state transfer to a peer that lacks what only the sender's state
    /// holds: whole key states (to merge) and conflict records.
    State {
        keys: Vec<(String, String, KeyState)>,
        conflicts: Vec<ConflictRecord>,
    },
    /// The receiver merged one `State` frame (flow control for the transfer).
    StateAck,
    /// The end of a state transfer. The states sent reflect everything the sender
    /// applied; of that, the receiver takes on the sender's word only `floor`, what
    /// the sender's log no longer holds (collected entries, states it adopted).
    /// Streaming resumes after `through_seq`, just before the sender's log start, so
    /// every entry the log still holds arrives as itself: a sender whose idea of what
    /// it applied is wrong cannot make the receiver skip an entry.
    ///
    /// `chunks` counts the `State` frames of the transfer: a receiver that got
    /// another number (a frame lost or overtaken) must not adopt `floor`.
    StateEnd {
        floor: VersionVector,
        through_seq: u64,
        chunks: u64,
    },
    /// The newest applied vector the sender knows for each cluster member, with the
    /// member's incarnation it belongs to (gossip for causal stability).
    Known {
        table: Vec<(String, u64, VersionVector)>,
    },
    Ping,
    Pong,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is empty")]
    Empty,
    #[error("frame has unknown format {0}")]
    UnknownFormat(u8),
    #[error("corrupt frame: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
enum FrameV1 {
    Hello {
        protocol: u32,
        cluster: String,
        name: String,
        node_id: u64,
        applied: Vec<(u64, u64)>,
        names: Vec<(u64, String)>,
    },
    Refused {
        reason: String,
    },
    Entries {
        entries: Vec<(u64, Blob)>,
        from_seq: u64,
        through_seq: u64,
        resumes: bool,
    },
    Ack {
        applied: Vec<(u64, u64)>,
        through_seq: u64,
    },
    StateOffer {
        hashes: Vec<u64>,
    },
    StateWanted {
        buckets: Vec<u8>,
    },
    State {
        keys: Vec<(String, String, Blob)>,
        conflicts: Vec<Blob>,
    },
    StateAck,
    StateEnd {
        applied: Vec<(u64, u64)>,
        through_seq: u64,
        chunks: u64,
    },
    Known {
        table: Vec<KnownV1>,
    },
    Ping,
    Pong,
}

/// A member's name, its incarnation, and its applied vector as `(node, counter)`.
type KnownV1 = (String, u64, Vec<(u64, u64)>);

fn vv_v1(vv: &VersionVector) -> Vec<(u64, u64)> {
    vv.iter().map(|(n, c)| (n.0, c)).collect()
}

fn vv_from(entries: &[(u64, u64)]) -> VersionVector {
    VersionVector::from_entries(entries.iter().map(|&(n, c)| (NodeId(n), c)))
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let v1 = match self {
            Frame::Hello(h) => FrameV1::Hello {
                protocol: h.protocol,
                cluster: h.cluster.clone(),
                name: h.name.clone(),
                node_id: h.node_id.0,
                applied: vv_v1(&h.applied),
                names: h.names.iter().map(|(id, n)| (id.0, n.clone())).collect(),
            },
            Frame::Refused { reason } => FrameV1::Refused {
                reason: reason.clone(),
            },
            Frame::Entries {
                entries,
                from_seq,
                through_seq,
                resumes,
            } => FrameV1::Entries {
                entries: entries
                    .iter()
                    .map(|(seq, e)| (*seq, Blob(codec::encode_entry(e))))
                    .collect(),
                from_seq: *from_seq,
                through_seq: *through_seq,
                resumes: *resumes,
            },
            Frame::Ack {
                applied,
                through_seq,
            } => FrameV1::Ack {
                applied: vv_v1(applied),
                through_seq: *through_seq,
            },
            Frame::State { keys, conflicts } => FrameV1::State {
                keys: keys
                    .iter()
                    .map(|(c, k, s)| (c.clone(), k.clone(), Blob(codec::encode_key_state(s))))
                    .collect(),
                conflicts: conflicts
                    .iter()
                    .map(|c| Blob(codec::encode_conflict(c)))
                    .collect(),
            },
            Frame::StateOffer { hashes } => FrameV1::StateOffer {
                hashes: hashes.clone(),
            },
            Frame::StateWanted { buckets } => FrameV1::StateWanted {
                buckets: buckets.clone(),
            },
            Frame::StateAck => FrameV1::StateAck,
            Frame::StateEnd {
                floor,
                through_seq,
                chunks,
            } => FrameV1::StateEnd {
                applied: vv_v1(floor),
                through_seq: *through_seq,
                chunks: *chunks,
            },
            Frame::Known { table } => FrameV1::Known {
                table: table
                    .iter()
                    .map(|(n, i, vv)| (n.clone(), *i, vv_v1(vv)))
                    .collect(),
            },
            Frame::Ping => FrameV1::Ping,
            Frame::Pong => FrameV1::Pong,
        };
        let mut out = vec![FRAME_FORMAT];
        out.extend(postcard::to_stdvec(&v1).expect("encoding into a Vec cannot fail"));
        out
    }

    /// The frame's bytes on the wire: its encoding, in pieces.
    pub fn to_wire(&self) -> Vec<u8> {
        let bytes = self.encode();
        let pieces = bytes.len().div_ceil(PIECE_BYTES_MAX).max(1);
        let mut out = Vec::with_capacity(bytes.len() + 5 * pieces);
        let mut chunks = bytes.chunks(PIECE_BYTES_MAX).peekable();
        while let Some(piece) = chunks.next() {
            out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            out.push(u8::from(chunks.peek().is_some()));
            out.extend_from_slice(piece);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let body = match bytes.split_first() {
            None => return Err(FrameError::Empty),
            Some((&FRAME_FORMAT, body)) => body,
            Some((&other, _)) => return Err(FrameError::UnknownFormat(other)),
        };
        let v1: FrameV1 =
            postcard::from_bytes(body).map_err(|e| FrameError::Corrupt(e.to_string()))?;
        Ok(match v1 {
            FrameV1::Hello {
                protocol,
                cluster,
                name,
                node_id,
                applied,
                names,
            } => Frame::Hello(Hello {
                protocol,
                cluster,
                name,
                node_id: NodeId(node_id),
                applied: vv_from(&applied),
                names: names.into_iter().map(|(id, n)| (NodeId(id), n)).collect(),
            }),
            FrameV1::Refused { reason } => Frame::Refused { reason },
            FrameV1::Entries {
                entries,
                from_seq,
                through_seq,
                resumes,
            } => Frame::Entries {
                entries: entries
                    .into_iter()
                    .map(|(seq, Blob(bytes))| {
                        codec::decode_entry("frame", &bytes)
                            .map(|e| (seq, e))
                            .map_err(|e| FrameError::Corrupt(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?,
                from_seq,
                through_seq,
                resumes,
            },
            FrameV1::Ack {
                applied,
                through_seq,
            } => Frame::Ack {
                applied: vv_from(&applied),
                through_seq,
            },
            FrameV1::State { keys, conflicts } => Frame::State {
                keys: keys
                    .into_iter()
                    .map(|(c, k, Blob(bytes))| {
                        // A CRDT document is decoded with it, before it is merged.
                        let state = codec::decode_key_state(&bytes)
                            .map_err(|e| FrameError::Corrupt(e.to_string()))?;
                        Ok((c, k, state))
                    })
                    .collect::<Result<_, FrameError>>()?,
                conflicts: conflicts
                    .iter()
                    .map(|Blob(bytes)| codec::decode_conflict(bytes))
                    .collect::<Result<_, _>>()
                    .map_err(|e| FrameError::Corrupt(e.to_string()))?,
            },
            FrameV1::StateOffer { hashes } => Frame::StateOffer { hashes },
            FrameV1::StateWanted { buckets } => Frame::StateWanted { buckets },
            FrameV1::StateAck => Frame::StateAck,
            FrameV1::StateEnd {
                applied,
                through_seq,
                chunks,
            } => Frame::StateEnd {
                floor: vv_from(&applied),
                through_seq,
                chunks,
            },
            FrameV1::Known { table } => Frame::Known {
                table: table
                    .into_iter()
                    .map(|(n, i, vv)| (n, i, vv_from(&vv)))
                    .collect(),
            },
            FrameV1::Ping => Frame::Ping,
            FrameV1::Pong => Frame::Pong,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{Dot, EntryBody, Hlc, Op};

    /// Every frame survives encoding; truncated, foreign or garbage bytes are errors.
    #[test]
    fn round_trip_and_corruption() {
        let entry = Entry {
            deps: VersionVector::from_entries([(NodeId(1), 1)]),
            body: EntryBody::Write(Op {
                dot: Dot::new(NodeId(1), 2),
                hlc: Hlc(5),
                collection: "c".into(),
                key: "k".into(),
                context: VersionVector::new(),
                value: Some(b"{}".to_vec()),
            }),
        };
        let frames = [
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                cluster: "x".into(),
                name: "a".into(),
                node_id: NodeId(9),
                applied: VersionVector::from_entries([(NodeId(9), 3)]),
                names: vec![(NodeId(9), "a".into())],
            }),
            Frame::Refused {
                reason: "no".into(),
            },
            Frame::Entries {
                entries: vec![(7, entry)],
                from_seq: 6,
                through_seq: 8,
                resumes: true,
            },
            Frame::Ack {
                applied: VersionVector::new(),
                through_seq: 8,
            },
            Frame::State {
                keys: vec![("c".into(), "k".into(), KeyState::new())],
                conflicts: vec![],
            },
            Frame::StateOffer {
                hashes: vec![1, 2, 3],
            },
            Frame::StateWanted {
                buckets: vec![0, 255],
            },
            Frame::Known {
                table: vec![("a".into(), 7, VersionVector::from_entries([(NodeId(1), 4)]))],
            },
            Frame::StateAck,
            Frame::StateEnd {
                floor: VersionVector::from_entries([(NodeId(1), 2)]),
                through_seq: 9,
                chunks: 3,
            },
            Frame::Ping,
            Frame::Pong,
        ];
        for frame in frames {
            let bytes = frame.encode();
            assert_eq!(Frame::decode(&bytes).unwrap(), frame);
            if bytes.len() > 2 {
                assert!(
                    Frame::decode(&bytes[..bytes.len() - 1]).is_err(),
                    "{frame:?} truncated"
                );
            }
        }
        assert!(matches!(Frame::decode(&[]), Err(FrameError::Empty)));
        assert!(matches!(
            Frame::decode(&[2, 0]),
            Err(FrameError::UnknownFormat(2))
        ));
        assert!(matches!(
            Frame::decode(&[1, 200, 200, 200]),
            Err(FrameError::Corrupt(_))
        ));
    }
}
