//! The replication engine: the state of every peer link, driven by events, answering
//! with commands. No I/O, no clock, no randomness: tests assert exact commands.
//!
//! Sending to a peer (per session, i.e. per connection):
//!
//! ```text
//!  Connected(hello, acked_seq) ─▶ read_seq = acked_seq ─▶ ReadLog(after read_seq)
//!  LogRead(entries, through) ─▶ Send Entries(those the peer lacks, through); in flight
//!  Ack(applied, through)      ─▶ acked_seq = through, SaveCursor; read more
//! ```
//! At most `window_frames_max` `Entries` frames are unacknowledged at once: a slow peer
//! slows its sender instead of filling memory (backpressure).
//!
//! Receiving from a peer: entries queue up and are handed to the node in order
//! (`Apply`, one batch at a time per peer). The node applies an entry only once its
//! dependencies are applied; the rest comes back as waiting (`Applied`) and is tried
//! again after progress. The `Ack` never covers a waiting entry, so a crash loses
//! nothing: the sender resends from the acknowledged cursor.

use crate::PeerName;
use crate::frame::{Frame, Hello};
use chorus_core::{ConflictId, ConflictRecord, Dot, Entry, KeyState, VersionVector};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bounds of the engine, each limiting memory or work per peer.
#[derive(Clone, Debug)]
pub struct EngineLimits {
    /// Entries read from the log for one `Entries` frame.
    pub batch_entries_max: usize,
    /// Unacknowledged `Entries` frames per peer.
    pub window_frames_max: usize,
    /// Entries from one peer waiting for their dependencies before the link is reset
    /// (the peer then resends from the acknowledged cursor).
    pub waiting_entries_max: usize,
    /// Received entries queued per peer before they are handed to the node.
    pub apply_batch_entries_max: usize,
    /// Idle time after which a `Ping` is sent.
    pub keepalive_ms: u64,
    /// Silence after which a peer is considered gone.
    pub peer_timeout_ms: u64,
    /// Op-log entries kept for a peer that has not acknowledged them; beyond this the
    /// oldest are collected and that peer gets a state transfer when it returns.
    pub retention_entries_max: u64,
    /// The same bound in bytes of the op log, and in age of its entries (the runtime
    /// measures them and reports `Event::RetentionLimit`).
    pub retention_bytes_max: u64,
    pub retention_age_ms_max: u64,
    /// Key states per `State` frame.
    pub state_frame_keys_max: usize,
    /// How often stable tombstones are collected (each collection scans the store).
    pub tombstone_collection_ms: u64,
}

impl Default for EngineLimits {
    fn default() -> EngineLimits {
        EngineLimits {
            batch_entries_max: 256,
            window_frames_max: 16,
            waiting_entries_max: 10_000,
            apply_batch_entries_max: 1024,
            keepalive_ms: 1_000,
            peer_timeout_ms: 5_000,
            retention_entries_max: 1_000_000,
            retention_bytes_max: 1 << 30,
            retention_age_ms_max: 7 * 24 * 3_600_000,
            state_frame_keys_max: 256,
            tombstone_collection_ms: 60_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session with `peer` began; `acked_seq` is the cursor it acknowledged before.
    Connected {
        peer: PeerName,
        hello: Hello,
        acked_seq: u64,
    },
    Disconnected {
        peer: PeerName,
    },
    Received {
        peer: PeerName,
        frame: Frame,
    },
    /// A piece of a frame from `peer` arrived, the frame not yet whole: the peer is
    /// alive, however long a large frame takes to cross its link.
    Heard {
        peer: PeerName,
    },
    /// The answer to `ReadLog`: entries after `after_seq`, and how far the log was read.
    LogRead {
        peer: PeerName,
        session: u64,
        entries: Vec<(u64, Entry)>,
        through_seq: u64,
    },
    /// The answer to `Apply`: what the node has applied now, and which entries wait.
    Applied {
        peer: PeerName,
        session: u64,
        applied: VersionVector,
        waiting: Vec<Dot>,
    },
    /// The local op log changed: it grew (local writes, relayed entries), its start
    /// moved (collected entries), or a transfer was adopted.
    Committed {
        position: LogPosition,
    },
    /// The answer to `ReadBuckets`: a hash of the key states in each bucket, and,
    /// as of those states, our floor (what they reflect that our log no longer
    /// holds) and the first sequence still in our log.
    BucketsRead {
        peer: PeerName,
        session: u64,
        hashes: Vec<u64>,
        floor: VersionVector,
        log_start: u64,
    },
    /// The answer to `CompareBuckets`: the buckets whose hashes differ from ours, and
    /// our change sequence as we compared (`as_of`): a key of those buckets not
    /// written since was not part of the transfer that follows.
    BucketsCompared {
        peer: PeerName,
        session: u64,
        wanted: Vec<u8>,
        as_of: u64,
    },
    /// The answer to `ReadState`: key states of the wanted buckets after the cursor,
    /// or, once those are all sent, records of the conflict log; and the cursor for
    /// the next read (`None`: that was the last).
    StateRead {
        peer: PeerName,
        session: u64,
        keys: Vec<(String, String, KeyState)>,
        conflicts: Vec<ConflictRecord>,
        next: Option<StateCursor>,
    },
    /// The op log's entries through `seq` fall outside the byte or age bound.
    RetentionLimit {
        seq: u64,
    },
    /// The answer to `MergeState`.
    StateMerged {
        peer: PeerName,
        session: u64,
    },
    /// The answer to `AdoptState`: what the node has applied now.
    StateAdopted {
        peer: PeerName,
        session: u64,
        applied: VersionVector,
    },
    Tick {
        now_ms: u64,
    },
    /// The cluster changed (a node joined or left, the planned links moved).
    Reconfigured {
        membership: Membership,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Send {
        peer: PeerName,
        frame: Frame,
    },
    ReadLog {
        peer: PeerName,
        session: u64,
        after_seq: u64,
        max_entries: usize,
    },
    Apply {
        peer: PeerName,
        session: u64,
        entries: Vec<Entry>,
    },
    SaveCursor {
        peer: PeerName,
        seq: u64,
    },
    Disconnect {
        peer: PeerName,
        reason: String,
    },
    /// Hash our key states by bucket, to offer a transfer.
    ReadBuckets {
        peer: PeerName,
        session: u64,
    },
    /// Compare a peer's bucket hashes with ours, to ask for the buckets that differ.
    CompareBuckets {
        peer: PeerName,
        session: u64,
        hashes: Vec<u64>,
    },
    /// Read the next part of a transfer from `after`: key states of `buckets`, then
    /// conflict records, a frame's worth.
    ReadState {
        peer: PeerName,
        session: u64,
        after: StateCursor,
        max_keys: usize,
        buckets: Vec<u8>,
    },
    /// Merge key states and conflict records received in a transfer.
    MergeState {
        peer: PeerName,
        session: u64,
        keys: Vec<(String, String, KeyState)>,
        conflicts: Vec<ConflictRecord>,
    },
    /// The transfer is complete: take `applied` as applied, and restart the local op
    /// log after a gap (its neighbours then get the new state by transfer too). The
    /// sender sent every key of `buckets` it holds: a key of ours there that the
    /// transfer did not write (unchanged since change `as_of`) is one the sender no
    /// longer holds, and its versions the sender covers were collected there.
    AdoptState {
        peer: PeerName,
        session: u64,
        applied: VersionVector,
        buckets: Vec<u8>,
        as_of: u64,
    },
    /// Collect op-log entries before `before_seq`.
    TruncateLog {
        before_seq: u64,
    },
    /// Collect deleted documents whose every version `stable` covers: every member
    /// has applied them, so no member can send an older version of them again.
    CollectTombstones {
        stable: VersionVector,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: PeerName,
    pub connected: bool,
    /// Entries of our log the peer has not acknowledged.
    pub lag_ops: u64,
    /// How long the peer has been behind (0 when caught up).
    pub lag_ms: u64,
    pub acked_seq: u64,
    pub entries_sent: u64,
    pub entries_received: u64,
    /// A state transfer to the peer is in progress (it was behind our log's start).
    pub syncing: bool,
}

/// How far the members' histories agree, by the applied vectors they gossip: a
/// write `stable` covers is on every member (a member that loses its disk cannot
/// take it with it); one beyond `seen` is on no member this node has heard from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stability {
    /// The meet of the members' applied vectors (empty until every member was heard).
    pub stable: VersionVector,
    /// The join of them, this node's own included.
    pub seen: VersionVector,
    /// Whether this node has heard what every other member applied (not so for a
    /// while after it starts): until then `seen` may miss what they have.
    pub heard_from_all: bool,
}

/// What a node knows of one member's applied vector: of the member's latest
/// incarnation it has heard of (a member restored from a backup starts a new one, and
/// what its former self applied is no longer true of it), the join of what it heard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    incarnation: u64,
    applied: VersionVector,
}

impl Known {
    /// Takes in what another node says of the member: a later incarnation replaces,
    /// the same one joins, an earlier one is stale.
    fn learn(&mut self, incarnation: u64, applied: &VersionVector) {
        if incarnation > self.incarnation {
            *self = Known {
                incarnation,
                applied: applied.clone(),
            };
        } else if incarnation == self.incarnation {
            self.applied.join(applied);
        }
    }
}

/// Where a node's op log stands.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogPosition {
    /// Everything the node has applied, per origin.
    pub applied: VersionVector,
    /// The newest sequence in the op log (0 when nothing was ever logged).
    pub last_seq: u64,
    /// The first sequence still in the op log.
    pub log_start: u64,
    /// When this replica was last restored from a backup (wall-clock milliseconds; 0:
    /// never): what it applied before was not kept, so gossip about it from before
    /// is stale.
    pub incarnation: u64,
    /// Everything applied whose entries are not all in the op log: collected
    /// entries, and states adopted from transfers. A peer that lacks any of it can
    /// only catch up by a state transfer.
    pub floor: VersionVector,
}

/// The state of one document in a transfer: collection, key, key state.
pub type KeyStateOf = (String, String, KeyState);

/// A state transfer to a peer, in progress.
#[derive(Default)]
struct OutgoingState {
    /// The bucket hashes were asked for (the offer is read or sent).
    offered: bool,
    /// The buckets the peer wants, once it answered the offer.
    wanted: Option<Vec<u8>>,
    /// Where the next read starts.
    after: StateCursor,
    /// Read with the bucket hashes: the floor the peer adopts, and the sequence
    /// streaming resumes after (just before our log start).
    snapshot: Option<(VersionVector, u64)>,
    reading: bool,
    /// `State` frames not yet acknowledged.
    unacked: usize,
    /// `State` frames sent (`StateEnd` says how many).
    sent: u64,
}

/// Where a state transfer's next read starts. A transfer sends the key states of the
/// wanted buckets in storage order, then the whole conflict log in id order (the
/// bucket hashes do not cover it), each part bounded by bytes so that no frame grows
/// with the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StateCursor {
    /// Key states from the first.
    #[default]
    KeysFromStart,
    /// Key states after this collection and key.
    KeysAfter(String, String),
    /// Conflict records after this id (from the first when `None`).
    Conflicts(Option<ConflictId>),
}

/// A state transfer from a peer, in progress.
#[derive(Default)]
struct IncomingState {
    /// The buckets we asked for, and our change sequence as we compared.
    compared: Option<(Vec<u8>, u64)>,
    /// `State` frames received in this transfer.
    received: u64,
    chunks: VecDeque<(Vec<KeyStateOf>, Vec<ConflictRecord>)>,
    merging: bool,
    end: Option<(VersionVector, u64)>,
    adopting: bool,
}

impl IncomingState {
    fn active(&self) -> bool {
        !self.chunks.is_empty() || self.merging || self.end.is_some() || self.adopting
    }
}

#[derive(Default)]
struct Peer {
    outgoing_state: Option<OutgoingState>,
    incoming_state: IncomingState,
    connected: bool,
    session: u64,
    /// What the peer reported as durably applied.
    applied: VersionVector,
    acked_seq: u64,
    /// Our log has been considered for this peer through here (this session).
    read_seq: u64,
    reading: bool,
    /// `through_seq` of each unacknowledged `Entries` frame.
    in_flight: VecDeque<u64>,
    /// Received entries not yet handed to the node.
    received: VecDeque<(u64, Entry)>,
    received_through: u64,
    /// The `from_seq` the next `Entries` frame must have (none yet this session).
    expect_from: Option<u64>,
    /// Whether this session's first `Entries` frame (the one that `resumes`) is sent.
    sent_first: bool,
    /// The batch handed to the node, and the cursor it completes.
    applying: Option<(Vec<(u64, Entry)>, u64)>,
    /// The peer connected having applied nothing while we had applied something:
    /// a new (or wiped) node, for whom our state is smaller than its history. It
    /// gets a state transfer rather than the whole log.
    fresh: bool,
    /// Entries that wait for dependencies.
    waiting: Vec<(u64, Entry)>,
    /// Another peer made progress while a batch was applying: retry what waits
    /// once it is answered.
    retry_waiting: bool,
    acked_to_peer: u64,
    last_heard_ms: u64,
    last_sent_ms: u64,
    behind_since_ms: Option<u64>,
    entries_sent: u64,
    entries_received: u64,
}

impl Peer {
    /// Panics unless the invariants every handled event leaves true hold (checked
    /// after each event in debug builds, so every engine test and every simulated
    /// run checks them):
    /// - frames go out in log order and never beyond what was read: `in_flight`
    ///   does not decrease, and ends at or before `read_seq`;
    /// - nothing is acknowledged before it was received:
    ///   `acked_to_peer <= received_through`;
    /// - a batch is handed to the node only from what was received in order: while
    ///   one applies, `expect_from` is set.
    fn check(&self, name: &str) {
        let ordered = self.in_flight.iter().zip(self.in_flight.iter().skip(1));
        assert!(
            ordered.clone().all(|(a, b)| a <= b)
                && self
                    .in_flight
                    .back()
                    .is_none_or(|&last| last <= self.read_seq),
            "peer {name}: frames in flight {:?} out of order or beyond read_seq {}",
            self.in_flight,
            self.read_seq
        );
        assert!(
            self.acked_to_peer <= self.received_through,
            "peer {name}: acknowledged {} beyond what was received ({})",
            self.acked_to_peer,
            self.received_through
        );
        assert!(
            self.applying.is_none() || self.expect_from.is_some(),
            "peer {name}: applying a batch with no entries received in order"
        );
    }
}

/// Who takes part: this node, its planned neighbours, and every member of the
/// cluster (whose applied vectors decide what is causally stable).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Membership {
    pub me: PeerName,
    pub neighbours: Vec<PeerName>,
    pub members: Vec<PeerName>,
}

/// Where an `Entries` frame sits in the sender's op log.
struct EntriesSpan {
    from_seq: u64,
    through_seq: u64,
    /// The session's first frame: the sender resumes here.
    resumes: bool,
}

pub struct Engine {
    limits: EngineLimits,
    me: PeerName,
    /// The planned neighbours: kept (with their cursors) while disconnected.
    planned: BTreeSet<PeerName>,
    /// Planned neighbours, and any other node while a link to it is up.
    peers: BTreeMap<PeerName, Peer>,
    log: LogPosition,
    /// The newest applied vector known for each member (ours included), learned
    /// from `Known` frames; their meet is what every member has applied.
    known: BTreeMap<PeerName, Known>,
    /// The stable vector last handed to the node for tombstone collection, and when.
    stable_collected: VersionVector,
    last_collection_ms: u64,
    last_gossip_ms: u64,
    /// Entries through here are beyond the byte or age bound.
    retention_limit: u64,
    now_ms: u64,
    next_session: u64,
}

impl Engine {
    /// An engine for a node whose op log stands at `log`, with the planned
    /// neighbours `peers` (others may connect later).
    pub fn new(
        membership: Membership,
        log: LogPosition,
        now_ms: u64,
        limits: EngineLimits,
    ) -> Engine {
        let peers = membership
            .neighbours
            .iter()
            .map(|p| (p.clone(), Peer::default()))
            .collect();
        let planned = membership.neighbours.iter().cloned().collect();
        let known = membership
            .members
            .iter()
            .map(|m| (m.clone(), Known::default()))
            .collect();
        Engine {
            limits,
            me: membership.me,
            planned,
            peers,
            log,
            known,
            stable_collected: VersionVector::new(),
            last_collection_ms: now_ms,
            last_gossip_ms: now_ms,
            retention_limit: 0,
            now_ms,
            next_session: 1,
        }
    }

    /// What every member has applied, as far as this node knows (their meet); empty
    /// while any member has not been heard of.
    pub fn stable(&self) -> VersionVector {
        let mut vectors = self.known.iter().map(|(name, known)| {
            if *name == self.me {
                &self.log.applied
            } else {
                &known.applied
            }
        });
        let Some(first) = vectors.next() else {
            return VersionVector::new();
        };
        vectors.fold(first.clone(), |acc, vv| acc.meet(vv))
    }

    /// What every member has applied and what some member has, as far as this node
    /// knows (see [`Stability`]).
    pub fn stability(&self) -> Stability {
        let mut seen = self.log.applied.clone();
        for (name, known) in &self.known {
            if *name != self.me {
                seen.join(&known.applied);
            }
        }
        let heard_from_all = self
            .known
            .iter()
            .all(|(name, known)| *name == self.me || !known.applied.is_empty());
        Stability {
            stable: self.stable(),
            seen,
            heard_from_all,
        }
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                connected: p.connected,
                lag_ops: self.log.last_seq.saturating_sub(p.acked_seq),
                lag_ms: p
                    .behind_since_ms
                    .map_or(0, |t| self.now_ms.saturating_sub(t)),
                acked_seq: p.acked_seq,
                entries_sent: p.entries_sent,
                entries_received: p.entries_received,
                syncing: p.outgoing_state.is_some(),
            })
            .collect()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Connected {
                peer,
                hello,
                acked_seq,
            } => self.on_connected(peer, hello, acked_seq, &mut out),
            Event::Disconnected { peer } => self.on_disconnected(peer),
            Event::Reconfigured { membership } => self.on_reconfigured(membership),
            Event::Received { peer, frame } => self.received(&peer, frame, &mut out),
            Event::Heard { peer } => self.on_heard(peer),
            Event::LogRead {
                peer,
                session,
                entries,
                through_seq,
            } => self.on_log_read(peer, session, entries, through_seq, &mut out),
            Event::Applied {
                peer,
                session,
                applied,
                waiting,
            } => self.on_applied(peer, session, applied, waiting, &mut out),
            Event::Committed { position } => self.on_committed(position, &mut out),
            Event::RetentionLimit { seq } => self.on_retention_limit(seq, &mut out),
            Event::BucketsRead {
                peer,
                session,
                hashes,
                floor,
                log_start,
            } => self.on_buckets_read(peer, session, hashes, floor, log_start, &mut out),
            Event::BucketsCompared {
                peer,
                session,
                wanted,
                as_of,
            } => self.on_buckets_compared(peer, session, wanted, as_of, &mut out),
            Event::StateRead {
                peer,
                session,
                keys,
                conflicts,
                next,
            } => self.on_state_read(peer, session, keys, conflicts, next, &mut out),
            Event::StateMerged { peer, session } => self.on_state_merged(peer, session, &mut out),
            Event::StateAdopted {
                peer,
                session,
                applied,
            } => self.on_state_adopted(peer, session, applied, &mut out),
            Event::Tick { now_ms } => self.on_tick(now_ms, &mut out),
        }
        if cfg!(debug_assertions) {
            for (name, p) in &self.peers {
                p.check(name);
            }
        }
        out
    }

    /// A link came up: a new session starts from the peer's acknowledged cursor.
    fn on_connected(
        &mut self,
        peer: PeerName,
        hello: Hello,
        acked_seq: u64,
        out: &mut Vec<Command>,
    ) {
        let session = self.next_session;
        self.next_session += 1;
        let fresh = hello.applied.is_empty() && !self.log.applied.is_empty();
        let p = self.peers.entry(peer.clone()).or_default();
        *p = Peer {
            connected: true,
            fresh,
            session,
            applied: hello.applied,
            acked_seq,
            read_seq: acked_seq,
            last_heard_ms: self.now_ms,
            last_sent_ms: self.now_ms,
            entries_sent: p.entries_sent,
            entries_received: p.entries_received,
            ..Peer::default()
        };
        self.track_lag(&peer);
        self.maybe_read(&peer, out);
    }

    /// A link went down: a planned peer is kept (its session resumes later), a
    /// link around a failure is forgotten.
    fn on_disconnected(&mut self, peer: PeerName) {
        if !self.planned.contains(&peer) {
            // A link around a failure, or from a node that left: its cursor
            // is stored, and it holds back nothing once the link is gone.
            self.peers.remove(&peer);
        } else if let Some(p) = self.peers.get_mut(&peer) {
            p.connected = false;
        }
    }

    /// The cluster changed: planned neighbours and the members gossiped about.
    fn on_reconfigured(&mut self, membership: Membership) {
        self.planned = membership.neighbours.iter().cloned().collect();
        for name in &membership.neighbours {
            self.peers.entry(name.clone()).or_default();
        }
        self.peers
            .retain(|name, p| p.connected || self.planned.contains(name));
        let known = std::mem::take(&mut self.known);
        self.known = membership
            .members
            .into_iter()
            .map(|m| {
                let vv = known.get(&m).cloned().unwrap_or_default();
                (m, vv)
            })
            .collect();
    }

    /// Part of a large frame arrived: the peer is alive.
    fn on_heard(&mut self, peer: PeerName) {
        if let Some(p) = self.peers.get_mut(&peer).filter(|p| p.connected) {
            p.last_heard_ms = self.now_ms;
        }
    }

    /// Entries read for a peer: send what it lacks, and read on within the window.
    fn on_log_read(
        &mut self,
        peer: PeerName,
        session: u64,
        entries: Vec<(u64, Entry)>,
        through_seq: u64,
        out: &mut Vec<Command>,
    ) {
        let Some(p) = self.session(&peer, session) else {
            return;
        };
        p.reading = false;
        if through_seq <= p.read_seq {
            return; // Nothing new in the log; the next commit reads again.
        }
        self.send_entries(&peer, entries, through_seq, out);
        self.maybe_read(&peer, out);
    }

    /// A peer's batch was applied: acknowledge it, keep what still waits, retry
    /// what progress may have freed.
    fn on_applied(
        &mut self,
        peer: PeerName,
        session: u64,
        applied: VersionVector,
        waiting: Vec<Dot>,
        out: &mut Vec<Command>,
    ) {
        let progress = !self.log.applied.dominates(&applied);
        self.log.applied.join(&applied);
        let (waiting_max, applied_now) =
            (self.limits.waiting_entries_max, self.log.applied.clone());
        if let Some(p) = self.session(&peer, session) {
            let (batch, through) = p.applying.take().expect("Applied answers an Apply");
            p.waiting = batch
                .into_iter()
                .filter(|(_, e)| waiting.contains(&e.dot()))
                .collect();
            if p.waiting.len() > waiting_max {
                p.connected = false;
                let reason = format!("{} entries wait for missing dependencies", p.waiting.len());
                out.push(Command::Disconnect {
                    peer: peer.clone(),
                    reason,
                });
                return;
            }
            // Everything received is applied unless some of it waits, or more
            // arrived meanwhile (then this batch's cursor is the bound).
            let ack_through = match (p.waiting.first(), p.received.is_empty()) {
                (Some((seq, _)), _) => seq - 1,
                (None, true) => p.received_through,
                (None, false) => through,
            };
            let ack = (ack_through > p.acked_to_peer || progress).then(|| {
                p.acked_to_peer = p.acked_to_peer.max(ack_through);
                Frame::Ack {
                    applied: applied_now,
                    through_seq: p.acked_to_peer,
                }
            });
            // Progress from another peer during this apply may have freed
            // what waits: retry it now rather than at the next progress.
            let retry = std::mem::take(&mut p.retry_waiting);
            if let Some(frame) = ack {
                self.send(&peer, frame, out);
            }
            self.try_apply(&peer, retry, out);
        }
        if progress {
            self.retry_others(&peer, out);
        }
    }

    /// Our log moved: update lag and read for every peer.
    fn on_committed(&mut self, position: LogPosition, out: &mut Vec<Command>) {
        self.log.last_seq = self.log.last_seq.max(position.last_seq);
        self.log.log_start = self.log.log_start.max(position.log_start);
        self.log.applied.join(&position.applied);
        self.log.floor.join(&position.floor);
        let names: Vec<PeerName> = self.peers.keys().cloned().collect();
        for name in names {
            self.track_lag(&name);
            self.maybe_read(&name, out);
        }
    }

    /// Entries fell outside the retention bounds: collect them.
    fn on_retention_limit(&mut self, seq: u64, out: &mut Vec<Command>) {
        self.retention_limit = self.retention_limit.max(seq);
        self.collect_log(out);
    }

    /// Our bucket hashes were read: offer them to the peer.
    fn on_buckets_read(
        &mut self,
        peer: PeerName,
        session: u64,
        hashes: Vec<u64>,
        floor: VersionVector,
        log_start: u64,
        out: &mut Vec<Command>,
    ) {
        let Some(transfer) = self.outgoing(&peer, session) else {
            return;
        };
        // The peer takes only the floor on our word; every entry our log holds
        // follows the states as itself (see `Frame::StateEnd`).
        transfer.snapshot = Some((floor, log_start.saturating_sub(1)));
        self.send(&peer, Frame::StateOffer { hashes }, out);
    }

    /// The peer's offer was compared: ask for the buckets that differ.
    fn on_buckets_compared(
        &mut self,
        peer: PeerName,
        session: u64,
        wanted: Vec<u8>,
        as_of: u64,
        out: &mut Vec<Command>,
    ) {
        if let Some(p) = self.session(&peer, session) {
            p.incoming_state.compared = Some((wanted.clone(), as_of));
            self.send(&peer, Frame::StateWanted { buckets: wanted }, out);
        }
    }

    /// A part of a transfer was read: send it, and end the transfer after the last.
    fn on_state_read(
        &mut self,
        peer: PeerName,
        session: u64,
        keys: Vec<(String, String, KeyState)>,
        conflicts: Vec<ConflictRecord>,
        next: Option<StateCursor>,
        out: &mut Vec<Command>,
    ) {
        let Some(transfer) = self.outgoing(&peer, session) else {
            return;
        };
        transfer.reading = false;
        transfer.unacked += 1;
        transfer.sent += 1;
        let finished = next.is_none();
        transfer.after = next.unwrap_or_default();
        self.send(&peer, Frame::State { keys, conflicts }, out);
        if finished {
            self.finish_transfer(&peer, out);
        }
        self.maybe_read(&peer, out);
    }

    /// A part of an incoming transfer was merged: acknowledge it, merge the next.
    fn on_state_merged(&mut self, peer: PeerName, session: u64, out: &mut Vec<Command>) {
        let Some(p) = self.session(&peer, session) else {
            return;
        };
        p.incoming_state.merging = false;
        self.send(&peer, Frame::StateAck, out);
        self.try_merge(&peer, out);
    }

    /// An incoming transfer was adopted: acknowledge through its end, apply what
    /// waited.
    fn on_state_adopted(
        &mut self,
        peer: PeerName,
        session: u64,
        applied: VersionVector,
        out: &mut Vec<Command>,
    ) {
        // What the transfer brought may be what other peers' entries wait for.
        if !self.log.applied.dominates(&applied) {
            self.log.applied.join(&applied);
            self.retry_others(&peer, out);
        }
        let applied_now = self.log.applied.clone();
        let Some(p) = self.session(&peer, session) else {
            return;
        };
        p.incoming_state.adopting = false;
        let (_, through_seq) = p
            .incoming_state
            .end
            .take()
            .expect("adopted an ended transfer");
        p.received_through = p.received_through.max(through_seq);
        p.acked_to_peer = p.acked_to_peer.max(through_seq);
        let frame = Frame::Ack {
            applied: applied_now,
            through_seq: p.acked_to_peer,
        };
        self.send(&peer, frame, out);
        self.try_apply(&peer, true, out);
    }

    /// Time passed: collect the log, time out silent peers, ping idle ones, gossip.
    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.now_ms = self.now_ms.max(now_ms);
        self.collect_log(out);
        let names: Vec<PeerName> = self.peers.keys().cloned().collect();
        for name in names {
            let p = &self.peers[&name];
            if !p.connected {
                continue;
            }
            if self.now_ms.saturating_sub(p.last_heard_ms) >= self.limits.peer_timeout_ms {
                self.peers.get_mut(&name).expect("listed").connected = false;
                out.push(Command::Disconnect {
                    peer: name,
                    reason: format!("silent for {} ms", self.limits.peer_timeout_ms),
                });
            } else if self.now_ms.saturating_sub(p.last_sent_ms) >= self.limits.keepalive_ms {
                self.send(&name, Frame::Ping, out);
            }
        }
        self.gossip(out);
    }

    /// The transfer to `peer` in progress in this session, if any.
    fn outgoing(&mut self, peer: &str, session: u64) -> Option<&mut OutgoingState> {
        self.session(peer, session)?.outgoing_state.as_mut()
    }

    fn session(&mut self, peer: &str, session: u64) -> Option<&mut Peer> {
        self.peers
            .get_mut(peer)
            .filter(|p| p.connected && p.session == session)
    }

    fn received(&mut self, peer: &str, frame: Frame, out: &mut Vec<Command>) {
        let now = self.now_ms;
        let Some(p) = self.peers.get_mut(peer).filter(|p| p.connected) else {
            return;
        };
        p.last_heard_ms = now;
        match frame {
            Frame::Entries {
                entries,
                from_seq,
                through_seq,
                resumes,
            } => {
                let span = EntriesSpan {
                    from_seq,
                    through_seq,
                    resumes,
                };
                self.on_entries(peer, entries, span, out)
            }
            Frame::Ack {
                applied,
                through_seq,
            } => self.on_ack(peer, applied, through_seq, out),
            Frame::State { keys, conflicts } => {
                p.incoming_state.received += 1;
                p.incoming_state.chunks.push_back((keys, conflicts));
                self.try_merge(peer, out);
            }
            Frame::StateOffer { hashes } => out.push(Command::CompareBuckets {
                peer: peer.into(),
                session: p.session,
                hashes,
            }),
            Frame::StateWanted { buckets } => {
                let Some(transfer) = p.outgoing_state.as_mut() else {
                    return;
                };
                // Even with no bucket wanted, one read follows: it carries the
                // conflict log, which the bucket hashes do not cover.
                transfer.wanted = Some(buckets);
                self.maybe_read(peer, out);
            }
            Frame::StateAck => {
                if let Some(transfer) = p.outgoing_state.as_mut() {
                    transfer.unacked = transfer.unacked.saturating_sub(1);
                }
                self.maybe_read(peer, out);
            }
            Frame::StateEnd {
                floor,
                through_seq,
                chunks,
            } => {
                let received = std::mem::take(&mut p.incoming_state.received);
                if chunks != received {
                    // A part was lost or overtaken: adopting `floor` would claim
                    // states never merged. The next session transfers again.
                    let reason =
                        format!("state transfer incomplete: {received} of {chunks} parts arrived");
                    self.end_session(peer, reason, out);
                    return;
                }
                // Entries that follow continue from where the states end.
                p.expect_from = Some(through_seq);
                p.incoming_state.end = Some((floor, through_seq));
                self.try_merge(peer, out);
            }
            Frame::Known { table } => self.on_known(table),
            Frame::Ping => self.send(peer, Frame::Pong, out),
            Frame::Pong => {}
            Frame::Hello(_) | Frame::Refused { .. } => {
                let reason = "handshake frame in an established session".to_owned();
                self.end_session(peer, reason, out);
            }
        }
    }

    /// Ends the session with `peer` after a protocol fault: the runtime drops the
    /// link, and the peer resends from the acknowledged cursor next session.
    fn end_session(&mut self, peer: &str, reason: String, out: &mut Vec<Command>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.connected = false;
        }
        out.push(Command::Disconnect {
            peer: peer.into(),
            reason,
        });
    }

    /// Entries from a connected `peer`: in order, they join what waits to be
    /// applied (and what the peer is known to have); a duplicate is ignored; a gap
    /// ends the session.
    fn on_entries(
        &mut self,
        peer: &str,
        entries: Vec<(u64, Entry)>,
        span: EntriesSpan,
        out: &mut Vec<Command>,
    ) {
        let p = self.peers.get_mut(peer).expect("a connected peer");
        let out_of_order = match p.expect_from {
            // A frame seen before (a duplicate): nothing new in it.
            Some(expected) if span.through_seq <= expected => return,
            Some(expected) => span.from_seq != expected,
            // The session's first frame says where the sender resumes; any other
            // frame first means the first one was lost or overtaken.
            None => !span.resumes,
        };
        if out_of_order {
            let reason = format!(
                "entries out of order: got from {}, expected from {:?}",
                span.from_seq, p.expect_from
            );
            self.end_session(peer, reason, out);
            return;
        }
        p.expect_from = Some(span.through_seq);
        p.entries_received += entries.len() as u64;
        // The peer sends only what it has applied: a truthful, free report of its
        // state, which keeps us from echoing these entries back to it.
        for (_, entry) in &entries {
            p.applied.add(entry.dot());
            p.applied.join(&entry.deps);
        }
        p.received.extend(entries);
        p.received_through = p.received_through.max(span.through_seq);
        let idle = p.received.is_empty() && p.applying.is_none() && p.waiting.is_empty();
        if idle && p.received_through > p.acked_to_peer {
            // Nothing to apply (the peer skipped what we have): acknowledge at once.
            p.acked_to_peer = p.received_through;
            let frame = Frame::Ack {
                applied: self.log.applied.clone(),
                through_seq: p.acked_to_peer,
            };
            self.send(peer, frame, out);
        }
        self.try_apply(peer, false, out);
    }

    /// `peer` acknowledged our entries through `through_seq`: the frames it covers
    /// leave the window, the durable cursor moves, and reading goes on.
    fn on_ack(
        &mut self,
        peer: &str,
        applied: VersionVector,
        through_seq: u64,
        out: &mut Vec<Command>,
    ) {
        let p = self.peers.get_mut(peer).expect("a connected peer");
        if through_seq > p.read_seq {
            // An acknowledgement of what was never sent would stop replication to
            // this peer for good: a broken or hostile peer.
            let reason = format!(
                "acknowledged through {through_seq}, beyond what was sent ({})",
                p.read_seq
            );
            self.end_session(peer, reason, out);
            return;
        }
        p.applied.join(&applied);
        while p.in_flight.front().is_some_and(|&t| t <= through_seq) {
            p.in_flight.pop_front();
        }
        if through_seq > p.acked_seq {
            p.acked_seq = through_seq;
            out.push(Command::SaveCursor {
                peer: peer.into(),
                seq: through_seq,
            });
        }
        self.track_lag(peer);
        self.maybe_read(peer, out);
    }

    /// A neighbour's table of what every member has applied: learned, for stability.
    fn on_known(&mut self, table: Vec<(String, u64, VersionVector)>) {
        for (name, incarnation, applied) in table {
            if let Some(known) = self.known.get_mut(name.as_str()) {
                known.learn(incarnation, &applied);
            }
        }
    }

    /// After progress made through `peer`, retries what other peers' entries wait for.
    fn retry_others(&mut self, peer: &str, out: &mut Vec<Command>) {
        let others: Vec<PeerName> = self
            .peers
            .iter()
            .filter(|(n, p)| *n != peer && (!p.waiting.is_empty() || p.applying.is_some()))
            .map(|(n, _)| n.clone())
            .collect();
        for other in others {
            self.try_apply(&other, true, out);
        }
    }

    /// Hands the next batch of received entries to the node, unless one is being
    /// applied. Entries that wait for dependencies go first, so order is kept; they
    /// alone are retried only after progress elsewhere (`retry_waiting`).
    fn try_apply(&mut self, peer: &str, retry_waiting: bool, out: &mut Vec<Command>) {
        let limit = self.limits.apply_batch_entries_max;
        let Some(p) = self.peers.get_mut(peer).filter(|p| p.connected) else {
            return;
        };
        if retry_waiting && p.applying.is_some() {
            p.retry_waiting = true;
        }
        let retry = retry_waiting && !p.waiting.is_empty();
        if p.applying.is_some() || p.incoming_state.active() || (p.received.is_empty() && !retry) {
            return;
        }
        let mut batch: Vec<(u64, Entry)> = std::mem::take(&mut p.waiting);
        let take = p.received.len().min(limit);
        batch.extend(p.received.drain(..take));
        // The cursor this batch completes: its last entry when more is queued.
        let through = match (p.received.front(), batch.last()) {
            (Some(_), Some((seq, _))) => *seq,
            _ => p.received_through,
        };
        let entries = batch.iter().map(|(_, e)| e.clone()).collect();
        p.applying = Some((batch, through));
        out.push(Command::Apply {
            peer: peer.into(),
            session: p.session,
            entries,
        });
    }

    /// Reads what the peer needs next: op-log entries, or, when it lacks something
    /// only our state has (collected or adopted), key states for a transfer.
    fn maybe_read(&mut self, peer: &str, out: &mut Vec<Command>) {
        let (window, max_entries) = (self.limits.window_frames_max, self.limits.batch_entries_max);
        let max_keys = self.limits.state_frame_keys_max;
        let (last_seq, log_start) = (self.log.last_seq, self.log.log_start);
        let Some(p) = self.peers.get_mut(peer).filter(|p| p.connected) else {
            return;
        };
        // A peer that lacks something only our state has gets a transfer; so does a
        // peer that arrived empty (see `fresh`).
        if p.outgoing_state.is_none() && (p.fresh || !p.applied.dominates(&self.log.floor)) {
            p.fresh = false;
            // Once what is in flight is acknowledged, send the state instead.
            if !p.in_flight.is_empty() {
                return;
            }
            p.outgoing_state = Some(OutgoingState::default());
        }
        if let Some(transfer) = p.outgoing_state.as_mut() {
            if !transfer.offered {
                transfer.offered = true;
                out.push(Command::ReadBuckets {
                    peer: peer.into(),
                    session: p.session,
                });
            } else if let Some(buckets) = &transfer.wanted
                && !transfer.reading
                && transfer.unacked < window
            {
                transfer.reading = true;
                let (after, buckets) = (transfer.after.clone(), buckets.clone());
                out.push(Command::ReadState {
                    peer: peer.into(),
                    session: p.session,
                    after,
                    max_keys,
                    buckets,
                });
            }
            return;
        }
        if p.reading {
            return;
        }
        if p.read_seq + 1 < log_start && p.in_flight.len() < window {
            // The peer has every collected entry (it has the floor): skip them.
            self.send_entries(peer, Vec::new(), log_start - 1, out);
            return self.maybe_read(peer, out);
        }
        if p.in_flight.len() < window && p.read_seq < last_seq {
            p.reading = true;
            out.push(Command::ReadLog {
                peer: peer.into(),
                session: p.session,
                after_seq: p.read_seq,
                max_entries,
            });
        }
    }

    /// Sends the peer the entries it lacks among those of our log after its read
    /// position through `through_seq`.
    fn send_entries(
        &mut self,
        peer: &str,
        entries: Vec<(u64, Entry)>,
        through_seq: u64,
        out: &mut Vec<Command>,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let lacking: Vec<(u64, Entry)> = entries
            .into_iter()
            .filter(|(_, e)| !p.applied.covers(e.dot()))
            .collect();
        p.entries_sent += lacking.len() as u64;
        let from_seq = std::mem::replace(&mut p.read_seq, through_seq);
        p.in_flight.push_back(through_seq);
        let resumes = !std::mem::replace(&mut p.sent_first, true);
        let frame = Frame::Entries {
            entries: lacking,
            from_seq,
            through_seq,
            resumes,
        };
        self.send(peer, frame, out);
    }

    /// Ends a transfer to `peer`: `StateEnd`, then streaming resumes at our log's
    /// start. Within this session the peer counts as having the floor (a failed
    /// adoption ends the session, and the next handshake tells the truth).
    fn finish_transfer(&mut self, peer: &str, out: &mut Vec<Command>) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(transfer) = p.outgoing_state.take() else {
            return;
        };
        let (floor, through_seq) = transfer.snapshot.expect("the offer reads the snapshot");
        p.read_seq = through_seq;
        p.sent_first = true;
        p.in_flight.push_back(through_seq);
        p.applied.join(&floor);
        let end = Frame::StateEnd {
            floor,
            through_seq,
            chunks: transfer.sent,
        };
        self.send(peer, end, out);
    }

    /// Hands the next part of an incoming transfer to the node: merge the chunks in
    /// order, then adopt the end.
    fn try_merge(&mut self, peer: &str, out: &mut Vec<Command>) {
        let Some(p) = self.peers.get_mut(peer).filter(|p| p.connected) else {
            return;
        };
        let incoming = &mut p.incoming_state;
        if incoming.merging || incoming.adopting {
            return;
        }
        if let Some((keys, conflicts)) = incoming.chunks.pop_front() {
            incoming.merging = true;
            out.push(Command::MergeState {
                peer: peer.into(),
                session: p.session,
                keys,
                conflicts,
            });
        } else if let Some((applied, _)) = &incoming.end {
            incoming.adopting = true;
            let (buckets, as_of) = incoming.compared.clone().unwrap_or_default();
            out.push(Command::AdoptState {
                peer: peer.into(),
                session: p.session,
                applied: applied.clone(),
                buckets,
                as_of,
            });
        }
    }

    /// Collects op-log entries every known peer has acknowledged, and, past the
    /// retention bound, entries some peer still lacks (it will get a transfer).
    /// Every keepalive period: tell connected peers the applied vectors we know, and
    /// let the node collect tombstones that became causally stable.
    fn gossip(&mut self, out: &mut Vec<Command>) {
        if self.now_ms.saturating_sub(self.last_gossip_ms) < self.limits.keepalive_ms {
            return;
        }
        self.last_gossip_ms = self.now_ms;
        if let Some(mine) = self.known.get_mut(&self.me) {
            mine.learn(self.log.incarnation, &self.log.applied);
        }
        let table: Vec<(String, u64, VersionVector)> = self
            .known
            .iter()
            .map(|(n, k)| (n.to_string(), k.incarnation, k.applied.clone()))
            .collect();
        let connected: Vec<PeerName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(n, _)| n.clone())
            .collect();
        for peer in connected {
            self.send(
                &peer,
                Frame::Known {
                    table: table.clone(),
                },
                out,
            );
        }
        let stable = self.stable();
        let due = self.now_ms.saturating_sub(self.last_collection_ms)
            >= self.limits.tombstone_collection_ms;
        if due && !stable.is_empty() && stable != self.stable_collected {
            self.stable_collected = stable.clone();
            self.last_collection_ms = self.now_ms;
            out.push(Command::CollectTombstones { stable });
        }
    }

    fn collect_log(&mut self, out: &mut Vec<Command>) {
        // With no peer at all, only the retention bound applies.
        let acked = self.peers.values().map(|p| p.acked_seq).min().unwrap_or(0);
        let bound = self
            .log
            .last_seq
            .saturating_sub(self.limits.retention_entries_max);
        let before_seq = acked.max(bound).max(self.retention_limit) + 1;
        if before_seq > self.log.log_start {
            self.log.log_start = before_seq;
            out.push(Command::TruncateLog { before_seq });
        }
    }

    fn send(&mut self, peer: &str, frame: Frame, out: &mut Vec<Command>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.last_sent_ms = self.now_ms;
        }
        out.push(Command::Send {
            peer: peer.into(),
            frame,
        });
    }

    fn track_lag(&mut self, peer: &str) {
        let (now, last_seq) = (self.now_ms, self.log.last_seq);
        if let Some(p) = self.peers.get_mut(peer) {
            if p.acked_seq >= last_seq {
                p.behind_since_ms = None;
            } else if p.behind_since_ms.is_none() {
                p.behind_since_ms = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PROTOCOL_VERSION;
    use chorus_core::{EntryBody, Hlc, NodeId, Op};

    fn entry(node: u64, counter: u64, deps: &[(u64, u64)]) -> Entry {
        Entry {
            deps: VersionVector::from_entries(deps.iter().map(|&(n, c)| (NodeId(n), c))),
            body: EntryBody::Write(Op {
                dot: Dot::new(NodeId(node), counter),
                hlc: Hlc(counter),
                collection: "c".into(),
                key: format!("k{counter}"),
                context: VersionVector::new(),
                value: Some(b"1".to_vec()),
            }),
        }
    }

    fn hello(applied: &[(u64, u64)]) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: "t".into(),
            name: "b".into(),
            node_id: NodeId(2),
            applied: VersionVector::from_entries(applied.iter().map(|&(n, c)| (NodeId(n), c))),
            names: vec![],
        }
    }

    fn vector(entries: &[(u64, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|&(i, c)| (NodeId(i), c)))
    }

    /// Node "a" with neighbours `peers`; the cluster is "a" and them.
    fn members(peers: &[&str]) -> Membership {
        let neighbours: Vec<PeerName> = peers.iter().map(|&p| p.into()).collect();
        let mut members = neighbours.clone();
        members.push("a".into());
        Membership {
            me: "a".into(),
            neighbours,
            members,
        }
    }

    fn engine(last_seq: u64) -> Engine {
        let limits = EngineLimits {
            window_frames_max: 2,
            batch_entries_max: 2,
            ..EngineLimits::default()
        };
        let log = LogPosition {
            last_seq,
            log_start: 1,
            ..LogPosition::default()
        };
        Engine::new(members(&["b"]), log, 0, limits)
    }

    fn connect(e: &mut Engine, applied: &[(u64, u64)], acked_seq: u64) -> Vec<Command> {
        e.handle(Event::Connected {
            peer: "b".into(),
            hello: hello(applied),
            acked_seq,
        })
    }

    /// On connect the engine reads the log from the peer's cursor, sends only what
    /// the peer lacks, and stops at the window until acknowledgements come.
    #[test]
    fn streams_what_the_peer_lacks_within_the_window() {
        let mut e = engine(6);
        let cmds = connect(&mut e, &[(1, 1)], 0);
        assert_eq!(
            cmds,
            [Command::ReadLog {
                peer: "b".into(),
                session: 1,
                after_seq: 0,
                max_entries: 2
            }]
        );
        let cmds = e.handle(Event::LogRead {
            peer: "b".into(),
            session: 1,
            entries: vec![(1, entry(1, 1, &[])), (2, entry(1, 2, &[(1, 1)]))],
            through_seq: 2,
        });
        assert_eq!(
            cmds,
            [
                Command::Send {
                    peer: "b".into(),
                    frame: Frame::Entries {
                        entries: vec![(2, entry(1, 2, &[(1, 1)]))],
                        from_seq: 0,
                        through_seq: 2,
                        resumes: true,
                    }
                },
                Command::ReadLog {
                    peer: "b".into(),
                    session: 1,
                    after_seq: 2,
                    max_entries: 2
                },
            ]
        );
        let cmds = e.handle(Event::LogRead {
            peer: "b".into(),
            session: 1,
            entries: vec![(3, entry(1, 3, &[])), (4, entry(1, 4, &[]))],
            through_seq: 4,
        });
        assert_eq!(
            cmds.len(),
            1,
            "window of 2 frames is full: no further read: {cmds:?}"
        );
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::Ack {
                applied: VersionVector::new(),
                through_seq: 2,
            },
        });
        assert_eq!(
            cmds,
            [
                Command::SaveCursor {
                    peer: "b".into(),
                    seq: 2
                },
                Command::ReadLog {
                    peer: "b".into(),
                    session: 1,
                    after_seq: 4,
                    max_entries: 2
                },
            ]
        );
        let status = &e.peers()[0];
        assert_eq!(
            (status.lag_ops, status.acked_seq, status.entries_sent),
            (4, 2, 3)
        );
    }

    /// An engine with an empty log, connected to b (session 1) and c (session 2),
    /// neither of which has applied anything.
    fn empty_engine_linked_to_b_and_c() -> Engine {
        let log = LogPosition {
            log_start: 1,
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b", "c"]), log, 0, EngineLimits::default());
        connect(&mut e, &[], 0);
        e.handle(Event::Connected {
            peer: "c".into(),
            hello: hello(&[]),
            acked_seq: 0,
        });
        e
    }

    /// Received entries go to the node in order; an entry waiting for a dependency is
    /// not acknowledged, and is retried once another peer's entries make progress.
    #[test]
    fn waiting_entries_are_not_acknowledged() {
        let mut e = empty_engine_linked_to_b_and_c();
        // b sends y (from node 3, depends on x = 1:1) before anyone sent x.
        let y = entry(3, 1, &[(1, 1)]);
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::Entries {
                entries: vec![(10, y.clone())],
                from_seq: 9,
                through_seq: 10,
                resumes: true,
            },
        });
        assert_eq!(
            cmds,
            [Command::Apply {
                peer: "b".into(),
                session: 1,
                entries: vec![y.clone()]
            }]
        );
        let cmds = e.handle(Event::Applied {
            peer: "b".into(),
            session: 1,
            applied: VersionVector::new(),
            waiting: vec![y.dot()],
        });
        // The acknowledgement stops short of the waiting entry (sequence 10).
        let empty = VersionVector::new();
        assert_eq!(
            cmds,
            [Command::Send {
                peer: "b".into(),
                frame: Frame::Ack {
                    applied: empty,
                    through_seq: 9
                }
            }]
        );
        // c delivers x; once applied, b's waiting y is retried and b gets its ack.
        let x = entry(1, 1, &[]);
        e.handle(Event::Received {
            peer: "c".into(),
            frame: Frame::Entries {
                entries: vec![(5, x)],
                from_seq: 4,
                through_seq: 5,
                resumes: true,
            },
        });
        let after_x = VersionVector::from_entries([(NodeId(1), 1)]);
        let cmds = e.handle(Event::Applied {
            peer: "c".into(),
            session: 2,
            applied: after_x.clone(),
            waiting: vec![],
        });
        assert_eq!(
            cmds,
            [
                Command::Send {
                    peer: "c".into(),
                    frame: Frame::Ack {
                        applied: after_x,
                        through_seq: 5
                    }
                },
                Command::Apply {
                    peer: "b".into(),
                    session: 1,
                    entries: vec![y.clone()]
                },
            ]
        );
        let both = VersionVector::from_entries([(NodeId(1), 1), (NodeId(3), 1)]);
        let cmds = e.handle(Event::Applied {
            peer: "b".into(),
            session: 1,
            applied: both.clone(),
            waiting: vec![],
        });
        assert_eq!(
            cmds,
            [Command::Send {
                peer: "b".into(),
                frame: Frame::Ack {
                    applied: both,
                    through_seq: 10
                }
            }]
        );
    }

    /// An entry waiting for a dependency is retried when that dependency arrives by
    /// another peer's state transfer, not only by entries (else it would wait until
    /// the link is reset, and the sender would count it as lag forever).
    #[test]
    fn waiting_entries_are_retried_after_an_adopted_transfer() {
        let mut e = empty_engine_linked_to_b_and_c();
        let y = entry(3, 1, &[(1, 1)]);
        let from_b = Frame::Entries {
            entries: vec![(10, y.clone())],
            from_seq: 9,
            through_seq: 10,
            resumes: true,
        };
        e.handle(Event::Received {
            peer: "b".into(),
            frame: from_b,
        });
        e.handle(Event::Applied {
            peer: "b".into(),
            session: 1,
            applied: VersionVector::new(),
            waiting: vec![y.dot()],
        });
        // c transfers a state that holds x = 1:1.
        let from_c = |frame| Event::Received {
            peer: "c".into(),
            frame,
        };
        let with_x = VersionVector::from_entries([(NodeId(1), 1)]);
        e.handle(from_c(Frame::State {
            keys: vec![],
            conflicts: vec![],
        }));
        e.handle(from_c(Frame::StateEnd {
            floor: with_x.clone(),
            through_seq: 4,
            chunks: 1,
        }));
        e.handle(Event::StateMerged {
            peer: "c".into(),
            session: 2,
        });
        let cmds = e.handle(Event::StateAdopted {
            peer: "c".into(),
            session: 2,
            applied: with_x,
        });
        assert!(
            cmds.contains(&Command::Apply {
                peer: "b".into(),
                session: 1,
                entries: vec![y],
            }),
            "{cmds:?}"
        );
    }

    /// When the entry another peer's waiting entry needs is applied while that peer
    /// has a batch applying, the waiting entry is retried as soon as the batch is
    /// answered, not at some later progress.
    #[test]
    fn waiting_entries_are_retried_after_progress_during_an_apply() {
        let mut e = empty_engine_linked_to_b_and_c();
        let entries = |entries: Vec<(u64, Entry)>, from_seq, through_seq| Frame::Entries {
            entries,
            from_seq,
            through_seq,
            resumes: from_seq == 0,
        };
        // b's y waits for x; b then sends z, which is applying when x arrives.
        let (x, y, z) = (entry(1, 1, &[]), entry(3, 1, &[(1, 1)]), entry(3, 2, &[]));
        e.handle(Event::Received {
            peer: "b".into(),
            frame: entries(vec![(1, y.clone())], 0, 1),
        });
        e.handle(Event::Applied {
            peer: "b".into(),
            session: 1,
            applied: VersionVector::new(),
            waiting: vec![y.dot()],
        });
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: entries(vec![(2, z.clone())], 1, 2),
        });
        assert!(matches!(&cmds[..], [Command::Apply { entries, .. }] if entries.len() == 2));
        e.handle(Event::Received {
            peer: "c".into(),
            frame: entries(vec![(1, x)], 0, 1),
        });
        let after_x = VersionVector::from_entries([(NodeId(1), 1)]);
        e.handle(Event::Applied {
            peer: "c".into(),
            session: 2,
            applied: after_x,
            waiting: vec![],
        });
        // b's batch (y and z) was computed before x: y still waits in its answer.
        let cmds = e.handle(Event::Applied {
            peer: "b".into(),
            session: 1,
            applied: VersionVector::from_entries([(NodeId(1), 1), (NodeId(3), 0)]),
            waiting: vec![y.dot()],
        });
        assert!(
            cmds.iter().any(|c| matches!(
                c,
                Command::Apply { peer, entries, .. } if peer == "b" && entries == &vec![y.clone()]
            )),
            "y is retried at once: {cmds:?}"
        );
    }

    /// An `Entries` frame with nothing we lack is acknowledged at once.
    #[test]
    fn empty_entries_frame_is_acknowledged() {
        let mut e = engine(0);
        connect(&mut e, &[], 0);
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::Entries {
                entries: vec![],
                from_seq: 0,
                through_seq: 7,
                resumes: true,
            },
        });
        let ack = Frame::Ack {
            applied: VersionVector::new(),
            through_seq: 7,
        };
        assert_eq!(
            cmds,
            [Command::Send {
                peer: "b".into(),
                frame: ack
            }]
        );
    }

    /// Within a session, a repeated `Entries` frame is ignored and a gap (a lost or
    /// reordered frame) drops the link, to resume from the acknowledged cursor.
    #[test]
    fn duplicate_and_out_of_order_frames() {
        let mut e = engine(0);
        connect(&mut e, &[], 0);
        let frame = |from_seq, through_seq, resumes| Event::Received {
            peer: "b".into(),
            frame: Frame::Entries {
                entries: vec![],
                from_seq,
                through_seq,
                resumes,
            },
        };
        let refused = |cmds: Vec<Command>| matches!(&cmds[..], [Command::Disconnect { reason, .. }] if reason.contains("out of order"));
        // A frame that overtook the session's first one is refused.
        assert!(refused(e.handle(frame(3, 5, false))));
        connect(&mut e, &[], 0);
        assert_eq!(
            e.handle(frame(0, 3, true)).len(),
            1,
            "first frame acknowledged"
        );
        assert!(e.handle(frame(0, 3, true)).is_empty(), "duplicate ignored");
        let cmds = e.handle(frame(5, 8, false));
        assert!(
            matches!(&cmds[..], [Command::Disconnect { reason, .. }] if reason.contains("out of order"))
        );
    }

    /// A new (or wiped) peer, one that has applied nothing, gets the state by
    /// transfer rather than the whole history, even with the full log at hand.
    #[test]
    fn a_new_peer_gets_a_state_transfer() {
        let log = LogPosition {
            last_seq: 3,
            log_start: 1,
            applied: VersionVector::from_entries([(NodeId(1), 3)]),
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, EngineLimits::default());
        assert_eq!(
            connect(&mut e, &[], 0),
            [Command::ReadBuckets {
                peer: "b".into(),
                session: 1
            }]
        );
    }

    /// A link to a node that is not a planned neighbour (a link around a failure) is
    /// forgotten when it goes down, so it holds back no log collection; planned
    /// neighbours stay. Reconfiguring changes both, and the members whose vectors
    /// decide stability.
    #[test]
    fn links_beyond_the_plan_are_forgotten_and_membership_changes() {
        let mut e = engine(4);
        let hello_of = |name: &str| Hello {
            name: name.into(),
            ..hello(&[])
        };
        e.handle(Event::Connected {
            peer: "c".into(),
            hello: hello_of("c"),
            acked_seq: 0,
        });
        assert_eq!(e.peers().len(), 2);
        e.handle(Event::Disconnected { peer: "c".into() });
        e.handle(Event::Disconnected { peer: "b".into() });
        let names: Vec<PeerName> = e.peers().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["b"]);
        // Collection waits for the planned neighbour only.
        assert!(e.handle(Event::Tick { now_ms: 1 }).is_empty());

        e.handle(Event::Reconfigured {
            membership: members(&["c", "d"]),
        });
        let names: Vec<PeerName> = e.peers().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["c", "d"]);
        assert!(e.stable().is_empty(), "new members not heard of yet");
    }

    /// A peer lacking what only our state holds (the floor) gets a transfer: bucket
    /// hashes first, then the key states of the buckets it wants in chunks within the
    /// window, the conflict log with the last, then `StateEnd` with the floor only,
    /// after which every entry of our log streams from its start, as itself.
    #[test]
    fn a_peer_behind_the_floor_gets_a_state_transfer() {
        let floor = VersionVector::from_entries([(NodeId(1), 5)]);
        // However much we believe we applied (here far more than our log and floor
        // hold, as a bug might), the peer is told only the floor.
        let log = LogPosition {
            last_seq: 9,
            log_start: 6,
            applied: VersionVector::from_entries([(NodeId(1), 1000)]),
            floor: floor.clone(),
            ..LogPosition::default()
        };
        let mut e = Engine::new(
            members(&["b"]),
            log,
            0,
            EngineLimits {
                window_frames_max: 2,
                ..EngineLimits::default()
            },
        );
        let send = |frame| Command::Send {
            peer: "b".into(),
            frame,
        };
        assert_eq!(
            connect(&mut e, &[(1, 2)], 2),
            [Command::ReadBuckets {
                peer: "b".into(),
                session: 1
            }]
        );
        let hashes = vec![7; 256];
        let cmds = e.handle(Event::BucketsRead {
            peer: "b".into(),
            session: 1,
            hashes: hashes.clone(),
            floor: floor.clone(),
            log_start: 6,
        });
        assert_eq!(cmds, [send(Frame::StateOffer { hashes })]);
        let read = |after| Command::ReadState {
            peer: "b".into(),
            session: 1,
            after,
            max_keys: 256,
            buckets: vec![3],
        };
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::StateWanted { buckets: vec![3] },
        });
        assert_eq!(cmds, [read(StateCursor::KeysFromStart)]);
        let key = StateCursor::KeysAfter("c".into(), "k".into());
        let chunk = |next: Option<StateCursor>| Event::StateRead {
            peer: "b".into(),
            session: 1,
            keys: vec![],
            conflicts: vec![],
            next,
        };
        let state = send(Frame::State {
            keys: vec![],
            conflicts: vec![],
        });
        assert_eq!(
            e.handle(chunk(Some(key.clone()))),
            [state.clone(), read(key)]
        );
        let end = send(Frame::StateEnd {
            floor: floor.clone(),
            through_seq: 5,
            chunks: 2,
        });
        let stream = Command::ReadLog {
            peer: "b".into(),
            session: 1,
            after_seq: 5,
            max_entries: 256,
        };
        assert_eq!(e.handle(chunk(None)), [state, end, stream]);
        assert!(e.peers()[0].lag_ops > 0, "not acknowledged yet");
        let ack = Frame::Ack {
            applied: floor.clone(),
            through_seq: 5,
        };
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: ack,
        });
        let save = Command::SaveCursor {
            peer: "b".into(),
            seq: 5,
        };
        assert_eq!(cmds, [save]);
        assert_eq!(
            e.peers()[0].lag_ops,
            4,
            "entries 6 to 9 follow as themselves"
        );
    }

    /// When no bucket differs, only the conflict log is read and sent before the
    /// transfer ends; the receiving side compares the offer and names the buckets it
    /// wants.
    #[test]
    fn equal_buckets_send_only_the_conflict_log() {
        let floor = VersionVector::from_entries([(NodeId(1), 5)]);
        let log = LogPosition {
            last_seq: 9,
            log_start: 6,
            applied: floor.clone(),
            floor: floor.clone(),
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, EngineLimits::default());
        connect(&mut e, &[], 2);
        let read = Event::BucketsRead {
            peer: "b".into(),
            session: 1,
            hashes: vec![],
            floor: floor.clone(),
            log_start: 6,
        };
        e.handle(read);
        let cmds = e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::StateWanted { buckets: vec![] },
        });
        let read = Command::ReadState {
            peer: "b".into(),
            session: 1,
            after: StateCursor::KeysFromStart,
            max_keys: 256,
            buckets: vec![],
        };
        assert_eq!(cmds, [read]);
        let cmds = e.handle(Event::StateRead {
            peer: "b".into(),
            session: 1,
            keys: vec![],
            conflicts: vec![],
            next: None,
        });
        let end = Frame::StateEnd {
            floor,
            through_seq: 5,
            chunks: 1,
        };
        let state = Frame::State {
            keys: vec![],
            conflicts: vec![],
        };
        let send = |frame| Command::Send {
            peer: "b".into(),
            frame,
        };
        let stream = Command::ReadLog {
            peer: "b".into(),
            session: 1,
            after_seq: 5,
            max_entries: 256,
        };
        assert_eq!(cmds, [send(state), send(end), stream]);

        let mut receiver = engine(0);
        connect(&mut receiver, &[], 0);
        let offer = Frame::StateOffer { hashes: vec![1, 2] };
        let cmds = receiver.handle(Event::Received {
            peer: "b".into(),
            frame: offer,
        });
        assert_eq!(
            cmds,
            [Command::CompareBuckets {
                peer: "b".into(),
                session: 1,
                hashes: vec![1, 2]
            }]
        );
        let cmds = receiver.handle(Event::BucketsCompared {
            peer: "b".into(),
            session: 1,
            wanted: vec![1],
            as_of: 0,
        });
        assert_eq!(
            cmds,
            [Command::Send {
                peer: "b".into(),
                frame: Frame::StateWanted { buckets: vec![1] }
            }]
        );
    }

    /// An engine connected to `b`, how `b`'s frames arrive, and an empty `State` part.
    fn receiving_a_transfer() -> (Engine, impl Fn(Frame) -> Event, Frame) {
        let mut e = engine(0);
        connect(&mut e, &[], 0);
        let received = |frame| Event::Received {
            peer: "b".into(),
            frame,
        };
        let state = Frame::State {
            keys: vec![],
            conflicts: vec![],
        };
        (e, received, state)
    }

    /// An acknowledgement beyond what was sent ends the session (it would otherwise
    /// stop replication to the peer while its status showed no lag).
    #[test]
    fn an_ack_beyond_what_was_sent_ends_the_session() {
        let (mut e, received, _) = receiving_a_transfer();
        let ack = Frame::Ack {
            applied: VersionVector::new(),
            through_seq: 1_000,
        };
        assert_eq!(
            e.handle(received(ack)),
            [Command::Disconnect {
                peer: "b".into(),
                reason: "acknowledged through 1000, beyond what was sent (0)".into()
            }]
        );
        assert!(!e.peers()[0].connected);
    }

    /// A transfer whose `StateEnd` counts more parts than arrived (one lost or
    /// overtaken) is not adopted: the session ends, and the next one transfers again.
    #[test]
    fn a_transfer_missing_a_part_is_not_adopted() {
        let (mut e, received, state) = receiving_a_transfer();
        assert_eq!(e.handle(received(state)).len(), 1, "merged");
        let end = Frame::StateEnd {
            floor: VersionVector::from_entries([(NodeId(1), 5)]),
            through_seq: 9,
            chunks: 2,
        };
        assert_eq!(
            e.handle(received(end)),
            [Command::Disconnect {
                peer: "b".into(),
                reason: "state transfer incomplete: 1 of 2 parts arrived".into()
            }]
        );
        let merged = Event::StateMerged {
            peer: "b".into(),
            session: 1,
        };
        assert!(
            e.handle(merged).is_empty(),
            "the session is over: no adoption"
        );
    }

    /// The receiving side merges chunks one at a time, adopts at the end, and then
    /// acknowledges the sender's sequence.
    #[test]
    fn a_state_transfer_is_merged_then_adopted() {
        let (mut e, received, state) = receiving_a_transfer();
        let merge = Command::MergeState {
            peer: "b".into(),
            session: 1,
            keys: vec![],
            conflicts: vec![],
        };
        assert_eq!(
            e.handle(received(state.clone())),
            std::slice::from_ref(&merge)
        );
        assert!(e.handle(received(state)).is_empty(), "one merge at a time");
        let applied = VersionVector::from_entries([(NodeId(1), 5)]);
        assert!(
            e.handle(received(Frame::StateEnd {
                floor: applied.clone(),
                through_seq: 9,
                chunks: 2,
            }))
            .is_empty()
        );
        let merged = Event::StateMerged {
            peer: "b".into(),
            session: 1,
        };
        let state_ack = Command::Send {
            peer: "b".into(),
            frame: Frame::StateAck,
        };
        assert_eq!(e.handle(merged.clone()), [state_ack.clone(), merge]);
        let adopt = Command::AdoptState {
            peer: "b".into(),
            session: 1,
            applied: applied.clone(),
            buckets: vec![],
            as_of: 0,
        };
        assert_eq!(e.handle(merged), [state_ack, adopt]);
        let cmds = e.handle(Event::StateAdopted {
            peer: "b".into(),
            session: 1,
            applied: applied.clone(),
        });
        assert_eq!(
            cmds,
            [Command::Send {
                peer: "b".into(),
                frame: Frame::Ack {
                    applied,
                    through_seq: 9
                }
            }]
        );
    }

    /// A peer that has everything collected skips to the log's start with an empty
    /// frame; entries every peer acknowledged are collected on the next tick.
    #[test]
    fn collected_entries_are_skipped_and_collection_follows_acks() {
        let log = LogPosition {
            last_seq: 8,
            log_start: 5,
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, EngineLimits::default());
        let cmds = connect(&mut e, &[], 2);
        let skip = Frame::Entries {
            entries: vec![],
            from_seq: 2,
            through_seq: 4,
            resumes: true,
        };
        assert_eq!(
            cmds,
            [
                Command::Send {
                    peer: "b".into(),
                    frame: skip
                },
                Command::ReadLog {
                    peer: "b".into(),
                    session: 1,
                    after_seq: 4,
                    max_entries: 256
                },
            ]
        );
        // The log is read and sent through 7, then acknowledged.
        e.handle(Event::LogRead {
            peer: "b".into(),
            session: 1,
            entries: vec![],
            through_seq: 7,
        });
        e.handle(Event::Received {
            peer: "b".into(),
            frame: Frame::Ack {
                applied: VersionVector::new(),
                through_seq: 7,
            },
        });
        let cmds = e.handle(Event::Tick { now_ms: 10 });
        assert_eq!(cmds, [Command::TruncateLog { before_seq: 8 }]);
        assert!(
            e.handle(Event::Tick { now_ms: 20 }).is_empty(),
            "collected once"
        );
    }

    /// Entries the runtime found beyond the byte or age bound are collected even
    /// though a peer (here never heard from) has not acknowledged them.
    #[test]
    fn byte_and_age_bounds_collect_unacknowledged_entries() {
        let log = LogPosition {
            last_seq: 10,
            log_start: 1,
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, EngineLimits::default());
        assert_eq!(
            e.handle(Event::RetentionLimit { seq: 6 }),
            [Command::TruncateLog { before_seq: 7 }]
        );
        assert!(
            e.handle(Event::RetentionLimit { seq: 4 }).is_empty(),
            "never moves back"
        );
    }

    /// Idle links get pings; a silent peer is disconnected.
    #[test]
    fn keepalive_and_timeout() {
        let limits = EngineLimits {
            keepalive_ms: 1_000,
            ..EngineLimits::default()
        };
        let log = LogPosition {
            log_start: 1,
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, limits);
        connect(&mut e, &[], 0);
        // Every keepalive period: a ping on an idle link, and the gossip of vectors.
        let cmds = e.handle(Event::Tick { now_ms: 1_000 });
        assert!(
            matches!(
                &cmds[..],
                [
                    Command::Send {
                        frame: Frame::Ping,
                        ..
                    },
                    Command::Send {
                        frame: Frame::Known { .. },
                        ..
                    }
                ]
            ),
            "{cmds:?}"
        );
        assert!(e.handle(Event::Tick { now_ms: 1_500 }).is_empty());
        let cmds = e.handle(Event::Tick { now_ms: 5_000 });
        assert!(matches!(&cmds[..], [Command::Disconnect { peer, .. }] if peer == "b"));
        assert!(!e.peers()[0].connected);
    }

    /// A peer whose large frame is still arriving in pieces is not silent: each
    /// piece heard puts off the timeout, and answers nothing by itself.
    #[test]
    fn pieces_of_a_frame_keep_a_peer_alive() {
        let log = LogPosition {
            log_start: 1,
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b"]), log, 0, EngineLimits::default());
        connect(&mut e, &[], 0);
        e.handle(Event::Tick { now_ms: 4_000 });
        let heard = Event::Heard { peer: "b".into() };
        assert_eq!(e.handle(heard), []);
        let cmds = e.handle(Event::Tick { now_ms: 8_000 });
        assert!(
            !cmds.iter().any(|c| matches!(c, Command::Disconnect { .. })),
            "{cmds:?}"
        );
        assert!(e.peers()[0].connected);
    }

    /// Tombstones are collected up to what every member has applied: nothing while a
    /// member is unheard of, then the meet of the vectors gossiped.
    #[test]
    fn stability_is_the_meet_of_every_members_vector() {
        let applied = VersionVector::from_entries([(NodeId(1), 9), (NodeId(2), 4)]);
        let log = LogPosition {
            applied,
            log_start: 1,
            ..LogPosition::default()
        };
        let limits = EngineLimits {
            tombstone_collection_ms: 1_000,
            ..EngineLimits::default()
        };
        let mut e = Engine::new(members(&["b", "c"]), log, 0, limits);
        connect(&mut e, &[], 0);
        let known = |table: Vec<(&str, &[(u64, u64)])>| Event::Received {
            peer: "b".into(),
            frame: Frame::Known {
                table: table
                    .into_iter()
                    .map(|(n, vv)| (n.to_string(), 0, vector(vv)))
                    .collect(),
            },
        };
        e.handle(known(vec![("b", &[(1, 5), (2, 4)])]));
        let collects = |cmds: &[Command]| {
            cmds.iter()
                .any(|c| matches!(c, Command::CollectTombstones { .. }))
        };
        assert!(
            !collects(&e.handle(Event::Tick { now_ms: 1_000 })),
            "c unheard of: nothing is stable"
        );
        e.handle(known(vec![("c", &[(1, 7), (2, 1)]), ("x", &[(1, 1)])]));
        let cmds = e.handle(Event::Tick { now_ms: 2_000 });
        let stable = VersionVector::from_entries([(NodeId(1), 5), (NodeId(2), 1)]);
        assert!(
            cmds.contains(&Command::CollectTombstones { stable }),
            "{cmds:?}"
        );
        assert!(
            !collects(&e.handle(Event::Tick { now_ms: 3_000 })),
            "nothing new is stable"
        );
    }

    /// A member restored from a backup starts a new incarnation: what others say of
    /// its former self (writes it no longer holds) gives way to what it says now,
    /// and older news of it is stale; a node counts itself by what it applied.
    #[test]
    fn gossip_of_a_former_incarnation_gives_way() {
        let log = LogPosition {
            applied: vector(&[(1, 3)]),
            ..LogPosition::default()
        };
        let mut e = Engine::new(members(&["b", "c"]), log, 0, EngineLimits::default());
        connect(&mut e, &[], 0);
        // A member's name, incarnation, and applied vector.
        type Said<'a> = (&'a str, u64, &'a [(u64, u64)]);
        let known = |table: Vec<Said>| Event::Received {
            peer: "b".into(),
            frame: Frame::Known {
                table: table
                    .into_iter()
                    .map(|(n, i, vv)| (n.to_string(), i, vector(vv)))
                    .collect(),
            },
        };
        // Before c's restore: c had applied 9 of node 7 (its old id), and a too,
        // by hearsay.
        e.handle(known(vec![
            ("a", 0, &[(7, 50)]),
            ("b", 0, &[(7, 9)]),
            ("c", 0, &[(7, 9)]),
        ]));
        assert_eq!(e.stability().seen.get(NodeId(7)), 9, "b has 9");
        assert_eq!(
            e.stability().seen.get(NodeId(1)),
            3,
            "a counts what it applied"
        );
        assert_eq!(e.stability().stable.get(NodeId(7)), 0, "a has none of 7");
        // c, restored at time 100, holds 5 of them; b has 5 too by now.
        e.handle(known(vec![("c", 100, &[(7, 5)]), ("b", 0, &[(7, 5)])]));
        // Stale news of c's former self changes nothing.
        e.handle(known(vec![("c", 0, &[(7, 9)])]));
        let stability = e.stability();
        assert_eq!(
            stability.seen.get(NodeId(7)),
            9,
            "b said 9 before: b's own history"
        );
        e.handle(known(vec![("b", 1, &[(7, 5)])]));
        assert_eq!(
            e.stability().seen.get(NodeId(7)),
            5,
            "b restored too: 5 now"
        );
    }

    /// Answers from an earlier session are ignored after a reconnect.
    #[test]
    fn stale_session_answers_are_ignored() {
        let mut e = engine(2);
        connect(&mut e, &[], 0);
        e.handle(Event::Disconnected { peer: "b".into() });
        let cmds = connect(&mut e, &[], 0);
        assert_eq!(
            cmds,
            [Command::ReadLog {
                peer: "b".into(),
                session: 2,
                after_seq: 0,
                max_entries: 2
            }]
        );
        let stale = e.handle(Event::LogRead {
            peer: "b".into(),
            session: 1,
            entries: vec![],
            through_seq: 2,
        });
        assert!(stale.is_empty());
    }
}
