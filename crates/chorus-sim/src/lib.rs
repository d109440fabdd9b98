//! Deterministic simulation of a whole Chorus cluster, from a seed.
//!
//! Every node is the real thing: a [`chorus_node::Node`] (committer, redb store) on a
//! simulated disk ([`disk::SimDisk`]) and a real replication [`Engine`]. What is
//! simulated is everything around them, driven by one seeded [`rng::Rng`] in one
//! thread, so a seed replays exactly:
//!
//! - **time**: a simulated clock; each node's physical clock drifts by an offset;
//! - **network**: links carry frames with random delays, in order per connection
//!   (like TCP); faults reset connections (a frame lost), duplicate or reorder a
//!   frame within a connection, and partition links (frames wait until the link heals
//!   or an engine times the connection out);
//! - **crashes**: a node loses everything not fsynced and restarts from its disk;
//! - **clients**: writes and deletes with and without contexts (fresh and stale), on a
//!   `siblings` and an `lww` collection.
//!
//! After the faults stop, the network heals and every node restarts; the run then
//! checks ([`checks`]) that all replicas converge (equal digests and conflict logs),
//! that no acknowledged write is lost, and that no node applied an entry before one it
//! depends on.
//!
//! The committer runs in its own thread, but the simulator waits for each request's
//! answer before doing anything else, so every batch holds exactly one request and the
//! run is deterministic.

pub mod checks;
pub mod disk;
pub mod rng;

use chorus_core::crdt::{OpError, Operation, Update};
use chorus_core::{Dot, EntryBody, PhysicalClock, VersionVector};
use chorus_node::{
    CollectionConfig, Context, Node, NodeConfig, NodeId, Policy, ReplicationStep, Write,
};
use chorus_peer::replication::{Effect, applied_event, effect_of, hello};
use chorus_repl::{Command, Engine, EngineLimits, Event, Frame, Membership, Topology};
use disk::SimDisk;
use rng::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const CLUSTER: &str = "sim";
/// Wall clock at simulated time 0 (milliseconds since the Unix epoch).
const EPOCH_MS: u64 = 1_800_000_000_000;
const TICK_MS: u64 = 100;
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
/// Simulated time allowed for convergence once faults stop.
const SETTLE_MS_MAX: u64 = 600_000;

/// What one run did, for the figures.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub topology: String,
    pub writes_acked: u64,
    pub frames_delivered: u64,
    /// State transfers completed (a peer behind a collected op log).
    pub state_transfers: u64,
    pub state_transfer_keys: u64,
    /// Buckets that differed (of 256 per transfer), so were sent.
    pub state_buckets_wanted: u64,
    /// Times a node collected causally stable tombstones.
    pub tombstone_collections: u64,
    /// Times a node moved the conflict log's retention watermark.
    pub conflict_prunes: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub sim_ms: u64,
}

impl Report {
    /// Adds another run's counts to these (for totals over many seeds).
    pub fn absorb(&mut self, other: &Report) {
        self.writes_acked += other.writes_acked;
        self.frames_delivered += other.frames_delivered;
        self.state_transfers += other.state_transfers;
        self.state_transfer_keys += other.state_transfer_keys;
        self.state_buckets_wanted += other.state_buckets_wanted;
        self.tombstone_collections += other.tombstone_collections;
        self.conflict_prunes += other.conflict_prunes;
        self.sim_ms += other.sim_ms;
        for (kind, n) in &other.faults {
            *self.faults.entry(kind).or_default() += n;
        }
    }
}

/// A node's physical clock: simulated time plus its own drift.
struct NodeClock {
    now_ms: Arc<AtomicU64>,
    offset_ms: AtomicI64,
}

impl PhysicalClock for NodeClock {
    fn now_ms(&self) -> u64 {
        let now = EPOCH_MS + self.now_ms.load(Ordering::Relaxed);
        now.saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }
}

struct SimNode {
    name: String,
    id: NodeId,
    disk: SimDisk,
    clock: Arc<NodeClock>,
    /// `None` while crashed.
    running: Option<(Node, Engine)>,
}

/// A write a client saw acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub node: String,
    pub dot: Dot,
    pub collection: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// The versions the write superseded (its op's context), kept here because op
    /// logs get collected.
    pub superseded: VersionVector,
    pub hlc: chorus_core::Hlc,
}

struct Session {
    id: u64,
    /// Time of the last frame scheduled in each direction (low → high, high → low),
    /// so frames of one connection arrive in order.
    last_at: [u64; 2],
}

struct InFlight {
    session: u64,
    from: usize,
    to: usize,
    frame: Frame,
}

pub struct Sim {
    rng: Rng,
    topology_rng: Rng,
    /// Draws when nodes prune their conflict logs (a stream of its own, so that older
    /// seeds run as they did).
    prune_rng: Rng,
    now_ms: Arc<AtomicU64>,
    nodes: Vec<SimNode>,
    neighbours: Vec<Vec<usize>>,
    sessions: BTreeMap<(usize, usize), Session>,
    partitioned: BTreeSet<(usize, usize)>,
    queue: BTreeMap<(u64, u64), InFlight>,
    next_order: u64,
    next_session: u64,
    /// Faults armed for the next frame sent.
    duplicate_next: bool,
    reorder_next: bool,
    /// Pending heals and restarts: (time, what).
    scheduled: Vec<(u64, Scheduled)>,
    contexts: BTreeMap<(usize, String), Context>,
    pub acked: Vec<Acked>,
    /// With a CRDT workload ([`Sim::with_crdt`]): per key of collection `c`, what
    /// every replica's counters must show in the end.
    pub crdt_totals: Option<BTreeMap<String, CrdtTotals>>,
    pub report: Report,
    /// Print every event and command (`CHORUS_SIM_TRACE=1`), to study a failing seed.
    trace: bool,
    limits: EngineLimits,
}

/// The sums of the acknowledged CRDT operations on one document.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrdtTotals {
    /// `counter.add` to `/n`.
    pub counter: i64,
    /// `bounded.add` to `/stock`, increments less spends.
    pub bounded: i64,
}

#[derive(Clone, Copy)]
enum Scheduled {
    Heal(usize, usize),
    Restart(usize),
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let count = 3 + rng.below(3) as usize;
        let names: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
        let topology = match rng.below(3) {
            0 => Topology::Mesh,
            1 => Topology::Ring,
            _ => Topology::Star {
                hub: names[rng.below(count as u64) as usize].clone(),
            },
        };
        let neighbours = names
            .iter()
            .map(|n| {
                let peers = topology.neighbours(&names, n).expect("a valid topology");
                peers
                    .iter()
                    .map(|p| names.iter().position(|x| x == p).expect("a node"))
                    .collect()
            })
            .collect();
        let now_ms = Arc::new(AtomicU64::new(0));
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| SimNode {
                name: name.clone(),
                id: NodeId(rng.next_u64() | 1 << 63 | i as u64),
                disk: SimDisk::default(),
                clock: Arc::new(NodeClock {
                    now_ms: Arc::clone(&now_ms),
                    offset_ms: AtomicI64::new(0),
                }),
                running: None,
            })
            .collect();
        // A short retention bound in half of the runs, so that op logs are collected
        // and peers that fall behind get state transfers.
        let retention_entries_max = if rng.chance(50) {
            20 + rng.below(100)
        } else {
            1_000_000
        };
        // Byte and age bounds from a stream of their own (older seeds run as before).
        let mut bounds = Rng::new(seed ^ 0x5151_5151_5151_5151);
        let retention_bytes_max = if bounds.chance(30) {
            5_000 + bounds.below(50_000)
        } else {
            u64::MAX
        };
        let retention_age_ms_max = if bounds.chance(30) {
            500 + bounds.below(5_000)
        } else {
            u64::MAX
        };
        let limits = EngineLimits {
            retention_entries_max,
            retention_bytes_max,
            retention_age_ms_max,
            tombstone_collection_ms: 1_000,
            ..EngineLimits::default()
        };
        let report = Report {
            seed,
            nodes: count,
            topology: format!("{topology:?}"),
            ..Report::default()
        };
        let mut sim = Sim {
            rng,
            topology_rng: Rng::new(seed ^ 0x7070_7070_7070_7070),
            prune_rng: Rng::new(seed ^ 0x5252_5252_5252_5252),
            now_ms,
            nodes,
            neighbours,
            sessions: BTreeMap::new(),
            partitioned: BTreeSet::new(),
            queue: BTreeMap::new(),
            next_order: 0,
            next_session: 1,
            duplicate_next: false,
            reorder_next: false,
            scheduled: Vec::new(),
            contexts: BTreeMap::new(),
            acked: Vec::new(),
            crdt_totals: None,
            report,
            trace: std::env::var_os("CHORUS_SIM_TRACE").is_some(),
            limits,
        };
        for i in 0..count {
            sim.start(i);
        }
        sim
    }

    fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    fn fault(&mut self, kind: &'static str) {
        *self.report.faults.entry(kind).or_default() += 1;
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].running.as_ref().expect("node is running").0
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn start(&mut self, i: usize) {
        let n = &self.nodes[i];
        let config = NodeConfig {
            name: n.name.clone(),
            clock: n.clock.clone(),
            node_id: Some(n.id),
            ..NodeConfig::default()
        };
        let node = Node::open_backend(n.disk.clone(), config).expect("a simulated disk opens");
        let position = node.replica().position().expect("reads work");
        let peers: Vec<String> = self.neighbours[i]
            .iter()
            .map(|&j| self.nodes[j].name.clone())
            .collect();
        let members = self.nodes.iter().map(|n| n.name.clone()).collect();
        let membership = Membership {
            me: self.nodes[i].name.clone(),
            neighbours: peers,
            members,
        };
        let engine = Engine::new(membership, position, self.now(), self.limits.clone());
        self.nodes[i].running = Some((node, engine));
    }

    fn crash(&mut self, i: usize) {
        for j in self.neighbours[i].clone() {
            self.close(i, j);
        }
        // Take the disk as power loss leaves it, then let the process go.
        let n = &mut self.nodes[i];
        n.disk = n.disk.after_crash();
        n.running = None;
    }

    /// Adds CRDT operations to the workload: counter increments and set edits on
    /// collection `c` (policy `crdt`). Off by default so the seeds of the plain
    /// workload replay as they always did.
    pub fn with_crdt(mut self) -> Sim {
        self.crdt_totals = Some(BTreeMap::new());
        self
    }

    /// Runs `steps` steps of client operations and faults, then heals everything and
    /// runs until the cluster converges; returns an error describing the first
    /// violated property.
    pub fn run(mut self, steps: u64) -> Result<Report, String> {
        self.client_set_policy("l", Policy::Lww);
        if self.crdt_totals.is_some() {
            self.client_set_policy("c", Policy::Crdt);
        }
        for _ in 0..steps {
            let pause_ms = 1 + self.rng.below(20);
            self.advance(pause_ms);
            if self.rng.chance(45) {
                self.client_op();
            }
            if self.crdt_totals.is_some() && self.rng.chance(30) {
                self.client_crdt_op();
            }
            if self.rng.chance(4) {
                self.inject_fault();
            }
            self.maybe_add_link();
            self.maybe_prune_conflicts();
        }
        self.heal_all();
        self.settle()?;
        checks::check(&self)?;
        self.report.writes_acked = self.acked.len() as u64;
        self.report.sim_ms = self.now();
        Ok(self.report)
    }

    // ---- time and the network -------------------------------------------------------

    /// Moves time forward by `ms`, delivering frames, firing timers and scheduled
    /// events, and linking up whatever can link.
    fn advance(&mut self, ms: u64) {
        let target = self.now() + ms;
        loop {
            let next_frame = self
                .queue
                .keys()
                .next()
                .map(|(at, _)| *at)
                .filter(|at| *at <= target);
            let next_tick = (self.now() / TICK_MS + 1) * TICK_MS;
            let next = next_frame.map_or(next_tick, |f| f.min(next_tick));
            if next > target {
                break;
            }
            self.now_ms.store(next, Ordering::Relaxed);
            if next_frame == Some(next) {
                let (key, msg) = self.queue.pop_first().expect("a frame is due");
                self.deliver(key, msg);
            } else {
                self.tick();
            }
        }
        self.now_ms.store(target, Ordering::Relaxed);
        self.run_scheduled();
        self.connect_all();
    }

    fn tick(&mut self) {
        let now = self.now();
        for i in 0..self.nodes.len() {
            self.handle(i, Event::Tick { now_ms: now });
            // Once a simulated second, as the runtime does every ten: measure the log.
            if now.is_multiple_of(1_000) && self.nodes[i].running.is_some() {
                let (bytes, age) = (
                    self.limits.retention_bytes_max,
                    self.limits.retention_age_ms_max,
                );
                let wall_ms = self.nodes[i].clock.now_ms();
                let seq = self
                    .node(i)
                    .replica()
                    .retention_limit(bytes, age, wall_ms)
                    .expect("reads work");
                if seq > 0 {
                    self.handle(i, Event::RetentionLimit { seq });
                }
            }
        }
    }

    fn run_scheduled(&mut self) {
        let now = self.now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.scheduled.drain(..).partition(|(at, _)| *at <= now);
        self.scheduled = later;
        for (_, what) in due {
            match what {
                Scheduled::Heal(a, b) => {
                    self.partitioned.remove(&link(a, b));
                }
                Scheduled::Restart(i) if self.nodes[i].running.is_none() => self.start(i),
                Scheduled::Restart(_) => {}
            }
        }
    }

    fn connect_all(&mut self) {
        for a in 0..self.nodes.len() {
            for b in self.neighbours[a].clone() {
                let key = link(a, b);
                let up = self.nodes[a].running.is_some() && self.nodes[b].running.is_some();
                if a < b
                    && up
                    && !self.partitioned.contains(&key)
                    && !self.sessions.contains_key(&key)
                {
                    let id = self.next_session;
                    self.next_session += 1;
                    self.sessions.insert(
                        key,
                        Session {
                            id,
                            last_at: [0, 0],
                        },
                    );
                    self.connected(a, b);
                    self.connected(b, a);
                }
            }
        }
    }

    /// Tells `i` that its link to `j` is up, with `j`'s handshake.
    fn connected(&mut self, i: usize, j: usize) {
        let theirs = hello(self.node(j), CLUSTER, &self.nodes[j].name).expect("reads work");
        let acked_seq = self
            .node(i)
            .replica()
            .peer_cursor(self.nodes[j].id)
            .expect("reads work");
        let peer = self.nodes[j].name.clone();
        self.handle(
            i,
            Event::Connected {
                peer,
                hello: theirs,
                acked_seq,
            },
        );
    }

    /// Ends the connection between `a` and `b`; both ends are told if running.
    fn close(&mut self, a: usize, b: usize) {
        if self.sessions.remove(&link(a, b)).is_none() {
            return;
        }
        for (i, j) in [(a, b), (b, a)] {
            if self.nodes[i].running.is_some() {
                let peer = self.nodes[j].name.clone();
                self.handle(i, Event::Disconnected { peer });
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, frame: Frame) {
        let key = link(from, to);
        let now = self.now();
        let delay = if self.rng.chance(5) {
            100 + self.rng.below(1500)
        } else {
            1 + self.rng.below(30)
        };
        let (reorder, duplicate) = (
            std::mem::take(&mut self.reorder_next),
            std::mem::take(&mut self.duplicate_next),
        );
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let direction = usize::from(from > to);
        // In order per connection, unless a reorder fault lets this frame overtake.
        let at = if reorder {
            now + 1
        } else {
            (now + delay).max(session.last_at[direction])
        };
        session.last_at[direction] = session.last_at[direction].max(at);
        let id = session.id;
        let copies = if duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let order = self.next_order;
            self.next_order += 1;
            self.queue.insert(
                (at, order),
                InFlight {
                    session: id,
                    from,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, key: (u64, u64), msg: InFlight) {
        let link_key = link(msg.from, msg.to);
        if self
            .sessions
            .get(&link_key)
            .is_none_or(|s| s.id != msg.session)
        {
            return; // The connection it travelled on is gone.
        }
        if self.partitioned.contains(&link_key) {
            // Held back (as TCP would retransmit) until the link heals or times out.
            let order = self.next_order;
            self.next_order += 1;
            self.queue.insert((key.0 + TICK_MS, order), msg);
            return;
        }
        self.report.frames_delivered += 1;
        let peer = self.nodes[msg.from].name.clone();
        self.handle(
            msg.to,
            Event::Received {
                peer,
                frame: msg.frame,
            },
        );
    }

    /// Feeds an event to node `i`'s engine and executes the commands, including the
    /// events they produce, until none are left.
    fn handle(&mut self, i: usize, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            if self.trace {
                eprintln!(
                    "{:>8} {} <- {}",
                    self.now(),
                    self.nodes[i].name,
                    brief_event(&event)
                );
            }
            let Some((_, engine)) = self.nodes[i].running.as_mut() else {
                return;
            };
            let commands = engine.handle(event);
            for command in commands {
                if self.trace {
                    eprintln!(
                        "{:>8} {} -> {}",
                        self.now(),
                        self.nodes[i].name,
                        brief_command(&command)
                    );
                }
                self.execute(i, command, &mut events);
            }
        }
    }

    fn peer_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a known peer")
    }

    fn execute(&mut self, i: usize, command: Command, events: &mut VecDeque<Event>) {
        let ids: Vec<(String, NodeId)> =
            self.nodes.iter().map(|n| (n.name.clone(), n.id)).collect();
        let peer_id = |peer: &str| ids.iter().find(|(name, _)| name == peer).map(|(_, id)| *id);
        let Some(effect) = effect_of(self.node(i), command, peer_id) else {
            return;
        };
        match effect {
            // Scans run inline here: simulated time does not pass while reading.
            Effect::Answered(answer) => events.push_back(self.read(answer)),
            Effect::Scan(scan) => {
                let answer = scan.answer(self.node(i));
                events.push_back(self.read(answer));
            }
            Effect::Send { peer, frame } => {
                let j = self.peer_index(&peer);
                self.send(i, j, frame);
            }
            Effect::Disconnect { peer, .. } => {
                let j = self.peer_index(&peer);
                self.close(i, j);
            }
            Effect::Apply {
                peer,
                session,
                entries,
            } => {
                let outcome = self
                    .node(i)
                    .replica()
                    .apply_remote_blocking(entries)
                    .expect("the simulated disk works");
                if self.trace && !outcome.waiting.is_empty() {
                    let first = &outcome.waiting[0];
                    eprintln!(
                        "         {} waits: {} deps {:?}; applied {:?}",
                        self.nodes[i].name,
                        first.dot(),
                        first.deps,
                        outcome.applied
                    );
                }
                events.push_back(applied_event(peer, session, outcome));
                events.push_back(self.committed(i));
            }
            Effect::Commit { step, then } => {
                match &step {
                    ReplicationStep::AdoptState { .. } => self.report.state_transfers += 1,
                    ReplicationStep::CollectTombstones { .. } => {
                        self.report.tombstone_collections += 1
                    }
                    _ => {}
                }
                self.replicate(i, step);
                let moves_position = then.moves_position();
                events.extend(then.event(self.node(i)));
                if moves_position {
                    events.push_back(self.committed(i));
                }
            }
        }
    }

    /// The event a read answered with, counted in the report.
    fn read(&mut self, answer: Result<Event, chorus_node::ReadError>) -> Event {
        let event = answer.expect("reads work");
        match &event {
            Event::BucketsCompared { wanted, .. } => {
                self.report.state_buckets_wanted += wanted.len() as u64
            }
            Event::StateRead { keys, .. } => self.report.state_transfer_keys += keys.len() as u64,
            _ => {}
        }
        event
    }

    fn committed(&self, i: usize) -> Event {
        Event::Committed {
            position: self.node(i).replica().position().expect("reads work"),
        }
    }

    fn replicate(&self, i: usize, step: ReplicationStep) {
        self.node(i)
            .replica()
            .replicate_blocking(step)
            .expect("the simulated disk works");
    }

    // ---- clients ----------------------------------------------------------------------

    fn running(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some())
            .collect();
        (!up.is_empty()).then(|| *self.rng.pick(&up))
    }

    /// Sets `collection`'s policy, on node 0.
    fn client_set_policy(&mut self, collection: &str, policy: Policy) {
        let config = CollectionConfig {
            policy,
            ..CollectionConfig::default()
        };
        self.node(0)
            .set_collection(collection, &config)
            .expect("settings write");
        let event = self.committed(0);
        self.handle(0, event);
    }

    /// An increment and a set edit in one write, or a bounded counter's increment,
    /// spend or transfer of rights. Refused while the node has not yet received
    /// collection `c`'s settings, for lack of rights, or (a spend) while a transfer
    /// is merged.
    fn client_crdt_op(&mut self) {
        let Some(i) = self.running() else { return };
        let key = self.rng.pick(&KEYS).to_string();
        let op = |path: &str, update| Operation {
            path: vec![path.to_owned()],
            update,
        };
        let (operations, counted) = match self.rng.below(10) {
            0..=6 => {
                let by = 1 + self.rng.below(5) as i64;
                let element = format!("{}", self.rng.below(4)).into_bytes();
                let edit = if self.rng.chance(60) {
                    Update::SetAdd(element)
                } else {
                    Update::SetRemove(element)
                };
                let ops = vec![op("n", Update::CounterAdd(by)), op("s", edit)];
                (
                    ops,
                    CrdtTotals {
                        counter: by,
                        bounded: 0,
                    },
                )
            }
            7 => (
                vec![op("stock", Update::BoundedAdd(3))],
                CrdtTotals {
                    counter: 0,
                    bounded: 3,
                },
            ),
            8 => (
                vec![op("stock", Update::BoundedAdd(-1))],
                CrdtTotals {
                    counter: 0,
                    bounded: -1,
                },
            ),
            _ => {
                let to = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].id;
                let transfer = Update::BoundedTransfer {
                    to,
                    by: 1 + self.rng.below(2),
                };
                (vec![op("stock", transfer)], CrdtTotals::default())
            }
        };
        match self.node(i).update("c", &key, operations) {
            Ok(_) => {
                let totals = self.crdt_totals.as_mut().expect("CRDT workload");
                let expected = totals.entry(key).or_default();
                expected.counter += counted.counter;
                expected.bounded += counted.bounded;
                let event = self.committed(i);
                self.handle(i, event);
            }
            Err(
                chorus_node::WriteError::Invalid(_)
                | chorus_node::WriteError::Busy(_)
                | chorus_node::WriteError::Refused(
                    OpError::InsufficientRights { .. } | OpError::SelfTransfer { .. },
                ),
            ) => {}
            Err(e) => panic!("CRDT write failed: {e}"),
        }
    }

    fn client_op(&mut self) {
        let Some(i) = self.running() else { return };
        let collection = if self.rng.chance(50) { "s" } else { "l" };
        let key = self.rng.pick(&KEYS).to_string();
        let serial = self.acked.len() + 1;
        let value = (!self.rng.chance(15)).then(|| format!("{{\"w\":{serial}}}").into_bytes());
        let context = match self.rng.below(10) {
            0..=3 => None,
            4 => self.contexts.get(&(i, key.clone())).cloned(),
            _ => Some(
                self.node(i)
                    .get(collection, &key)
                    .expect("reads work")
                    .context,
            ),
        };
        let write = Write {
            collection: collection.into(),
            key: Some(key.clone()),
            value: value.clone(),
            context,
        };
        let ack = self.node(i).write(write).expect("the simulated disk works");
        let logged = self
            .node(i)
            .replica()
            .read_log(ack.seq - 1, 1, usize::MAX)
            .expect("reads work");
        let superseded = match logged.first().map(|(_, e)| &e.body) {
            Some(EntryBody::Write(op)) if op.dot == ack.dot => op.context.clone(),
            _ => unreachable!("a write's entry is in the log right after it is acknowledged"),
        };
        self.contexts.insert((i, key.clone()), ack.context);
        self.acked.push(Acked {
            node: self.nodes[i].name.clone(),
            dot: ack.dot,
            collection: collection.into(),
            key,
            value,
            superseded,
            hlc: ack.hlc,
        });
        let event = self.committed(i);
        self.handle(i, event);
    }

    // ---- faults -------------------------------------------------------------------------

    fn inject_fault(&mut self) {
        let now = self.now();
        match self.rng.below(7) {
            0 => {
                let Some(i) = self.running() else { return };
                self.crash(i);
                self.fault("crash");
                let back = now + 50 + self.rng.below(8_000);
                self.scheduled.push((back, Scheduled::Restart(i)));
            }
            1 | 2 => {
                let a = self.rng.below(self.nodes.len() as u64) as usize;
                let Some(&b) = self.neighbours[a]
                    .get(self.rng.below(self.neighbours[a].len() as u64) as usize)
                else {
                    return;
                };
                self.partitioned.insert(link(a, b));
                self.fault("partition");
                let heal = now + 100 + self.rng.below(10_000);
                self.scheduled.push((heal, Scheduled::Heal(a, b)));
            }
            3 => {
                let keys: Vec<(usize, usize)> = self.sessions.keys().copied().collect();
                if let Some(&(a, b)) = keys.get(self.rng.below(keys.len().max(1) as u64) as usize) {
                    self.close(a, b);
                    self.fault("connection reset");
                }
            }
            4 => {
                self.duplicate_next = true;
                self.fault("duplicated frame");
            }
            5 => {
                self.reorder_next = true;
                self.fault("reordered frame");
            }
            _ => {
                let i = self.rng.below(self.nodes.len() as u64) as usize;
                let offset = self.rng.below(120_001) as i64 - 60_000;
                self.nodes[i]
                    .clock
                    .offset_ms
                    .fetch_add(offset, Ordering::Relaxed);
                self.fault("clock jump");
            }
        }
    }

    /// Sometimes a running node prunes its conflict log by its own clock (skewed by the
    /// clock jumps), with a retention short enough to bite: the logs must still end
    /// identical on every node.
    fn maybe_prune_conflicts(&mut self) {
        const RETENTION_MS: u64 = 500;
        if !self.prune_rng.chance(2) {
            return;
        }
        let i = self.prune_rng.below(self.nodes.len() as u64) as usize;
        if self.nodes[i].running.is_none() {
            return;
        }
        let before_wall_ms = self.nodes[i].clock.now_ms().saturating_sub(RETENTION_MS);
        let watermark = |sim: &Sim| {
            sim.node(i)
                .conflicts_pruned_before_ms()
                .expect("reads work")
        };
        let was = watermark(self);
        self.replicate(i, ReplicationStep::PruneConflicts { before_wall_ms });
        if watermark(self) != was {
            self.report.conflict_prunes += 1;
        }
    }

    /// Sometimes the topology changes: a new link between two nodes not linked yet.
    /// Drawn from a stream of its own, so that adding this fault left the runs of
    /// older seeds (the regression seeds among them) as they were.
    fn maybe_add_link(&mut self) {
        if !self.topology_rng.chance(1) {
            return;
        }
        let n = self.nodes.len() as u64;
        let (a, b) = (
            self.topology_rng.below(n) as usize,
            self.topology_rng.below(n) as usize,
        );
        if a != b && !self.neighbours[a].contains(&b) {
            self.neighbours[a].push(b);
            self.neighbours[b].push(a);
            self.fault("link added");
        }
    }

    fn heal_all(&mut self) {
        self.partitioned.clear();
        self.scheduled.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].running.is_none() {
                self.start(i);
            }
        }
        self.connect_all();
    }

    /// Runs until every link is up, nothing lags and all digests agree.
    fn settle(&mut self) -> Result<(), String> {
        let deadline = self.now() + SETTLE_MS_MAX;
        while self.now() < deadline {
            self.advance(TICK_MS);
            if self.quiet() && checks::digests_agree(self) {
                return Ok(());
            }
        }
        let lags: Vec<String> = (0..self.nodes.len())
            .map(|i| {
                format!(
                    "{}: {:?}",
                    self.nodes[i].name,
                    self.nodes[i].running.as_ref().map(|(_, e)| e.peers())
                )
            })
            .collect();
        let divergence = if self.quiet() {
            checks::describe_divergence(self)
        } else {
            String::new()
        };
        Err(format!(
            "no convergence within {SETTLE_MS_MAX} ms after healing: {divergence}; peers: {}",
            lags.join("; ")
        ))
    }

    fn quiet(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.running.as_ref().is_some_and(|(_, engine)| {
                engine.peers().iter().all(|p| p.connected && p.lag_ops == 0)
            })
        })
    }
}

/// Runs one seed with the default number of steps.
pub fn run_seed(seed: u64) -> Result<Report, String> {
    Sim::new(seed).run(DEFAULT_STEPS)
}

/// Steps of client operations and faults per seed.
pub const DEFAULT_STEPS: u64 = 400;

fn brief_frame(frame: &Frame) -> String {
    match frame {
        Frame::Entries {
            entries,
            from_seq,
            through_seq,
            ..
        } => {
            format!(
                "Entries[{} from {from_seq} through {through_seq}]",
                entries.len()
            )
        }
        Frame::Ack { through_seq, .. } => format!("Ack[through {through_seq}]"),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

fn brief_event(event: &Event) -> String {
    match event {
        Event::Received { peer, frame } => format!("Received {peer} {}", brief_frame(frame)),
        Event::LogRead {
            peer,
            entries,
            through_seq,
            ..
        } => {
            format!("LogRead {peer} {} through {through_seq}", entries.len())
        }
        Event::Applied { peer, waiting, .. } => format!("Applied {peer} waiting {}", waiting.len()),
        Event::Committed { position } => format!("Committed {}", position.last_seq),
        Event::Connected {
            peer, acked_seq, ..
        } => format!("Connected {peer} acked {acked_seq}"),
        other => format!("{other:?}"),
    }
}

fn brief_command(command: &Command) -> String {
    match command {
        Command::Send { peer, frame } => format!("Send {peer} {}", brief_frame(frame)),
        Command::Apply { peer, entries, .. } => format!("Apply {peer} {}", entries.len()),
        other => format!("{other:?}"),
    }
}
