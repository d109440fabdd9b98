//! Deterministic simulation of a whole Chorus cluster, from a seed.
//!
//! Every node is the real thing: a [`chorus_node::Node`] (committer, redb store) on a
//! simulated disk ([`disk::SimDisk`]) and a real replication [`Engine`]. What is
//! simulated is everything around them, driven by one seeded [`rng::Rng`] in one
//! thread, so a seed replays exactly:
//!
//! - **time**: a simulated clock; each node's physical clock drifts by an offset;
//! - **network** ([`network`]): nodes dial and accept connections as the runtime
//!   does, through the same link decisions (`chorus_repl::LinkKeeper`: the link
//!   plan, healing around unreachable nodes, probes, double-dial de-duplication);
//!   connections carry frames with random delays, in order (like TCP); faults reset
//!   connections (a frame lost), duplicate or reorder a frame, partition any two
//!   nodes (frames wait until the link heals or an engine times the connection out);
//! - **processes**: a node crashes (loses everything not fsynced, restarts from its
//!   disk) or freezes (stops answering, then resumes as if nothing happened);
//! - **the cluster file** ([`membership`]): links are added, a spare node joins, a
//!   drained member leaves; each node reloads the new file at its own moment;
//! - **clients**: writes and deletes with and without contexts (fresh and stale), on a
//!   `siblings` and an `lww` collection, and on a collection with a home, routed as
//!   the server routes them (`Home::order`: to the first reachable node); with
//!   [`Sim::with_devices`], device replicas uploading to any node (`devices`).
//!
//! After the faults stop, the network heals and every member restarts and reloads;
//! the run then checks ([`checks`]) that all replicas converge (equal digests and
//! conflict logs), that no acknowledged write is lost, that no node applied an entry
//! before one it depends on, and that every node is back on its planned links.
//!
//! The committer runs in its own thread, but the simulator waits for each request's
//! answer before doing anything else, so every batch holds exactly one request and the
//! run is deterministic.

pub mod checks;
mod devices;
pub mod disk;
mod membership;
mod network;
mod restores;
pub mod rng;

use chorus_core::crdt::{Field, Kind, OpError, Operation, Update};
use chorus_core::{Dot, EntryBody, PhysicalClock, VersionVector};
use chorus_node::{
    CollectionConfig, Context, Home, Node, NodeConfig, NodeId, Policy, ReplicationStep, Write,
};
use chorus_repl::{Command, Engine, EngineLimits, Event, Frame, LinkKeeper, Topology};
use disk::SimDisk;
use membership::ClusterFile;
use network::{Dialer, InFlight, Session};
use rng::Rng;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Writes to the collection with a home: taken by their home, by a later node
    /// of the order (the nodes before it unreachable), or abandoned (the node they
    /// went to was frozen: the client cannot know whether they took effect).
    pub home_writes_at_home: u64,
    pub home_writes_failed_over: u64,
    pub home_writes_uncertain: u64,
    /// Links dialled around unreachable nodes (beyond the planned neighbours).
    pub healing_links: u64,
    /// With devices: writes taken, uploads whose answer was lost, uploads refused
    /// while in doubt at another node.
    pub device_writes_taken: u64,
    pub device_answers_lost: u64,
    pub device_in_doubt_refusals: u64,
    /// With devices: records of devices the nodes expired.
    pub device_records_expired: u64,
    /// With devices: acknowledged writes lost by restoring their node from a backup
    /// older than them (device writes among them go up again from their devices).
    pub writes_lost_to_restores: u64,
    pub device_writes_requeued: u64,
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
        self.home_writes_at_home += other.home_writes_at_home;
        self.home_writes_failed_over += other.home_writes_failed_over;
        self.home_writes_uncertain += other.home_writes_uncertain;
        self.healing_links += other.healing_links;
        self.device_writes_taken += other.device_writes_taken;
        self.device_answers_lost += other.device_answers_lost;
        self.device_in_doubt_refusals += other.device_in_doubt_refusals;
        self.device_records_expired += other.device_records_expired;
        self.writes_lost_to_restores += other.writes_lost_to_restores;
        self.device_writes_requeued += other.device_writes_requeued;
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
    /// `None` while crashed, and before joining or after leaving the cluster.
    running: Option<Running>,
    /// Its latest backup ([`restores`]).
    backup: Option<SimDisk>,
}

/// A running node process: the replica, its engine, its link decisions.
struct Running {
    node: Node,
    engine: Engine,
    keeper: LinkKeeper<u64>,
    /// A dialer per peer the keeper dials.
    dialers: BTreeMap<String, Dialer>,
    /// The cluster file this process last loaded.
    cluster: ClusterFile,
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

pub struct Sim {
    rng: Rng,
    topology_rng: Rng,
    /// Draws when nodes prune their conflict logs (a stream of its own, so that older
    /// seeds run as they did).
    prune_rng: Rng,
    /// Draws when nodes join and leave, and when reloads happen.
    membership_rng: Rng,
    /// Draws of the devices' workload ([`Sim::with_devices`]).
    device_rng: Rng,
    /// Device replicas, when the workload has them.
    devices: Option<devices::Devices>,
    now_ms: Arc<AtomicU64>,
    nodes: Vec<SimNode>,
    /// The cluster file as the operator last wrote it.
    cluster: ClusterFile,
    /// A node outside the cluster, ready to join once.
    spare: Option<usize>,
    sessions: BTreeMap<u64, Session>,
    partitioned: BTreeSet<(usize, usize)>,
    frozen: BTreeSet<usize>,
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
    /// Words typed into texts so far (each one's name is its number).
    words_typed: u64,
    pub report: Report,
    /// Print every event and command (`CHORUS_SIM_TRACE=1`), to study a failing seed.
    trace: bool,
    limits: EngineLimits,
}

/// The sums of the acknowledged CRDT operations on one document.
#[derive(Clone, Debug, Default)]
pub struct CrdtTotals {
    /// `counter.add` to `/n`.
    pub counter: i64,
    /// `bounded.add` to `/stock`, increments less spends.
    pub bounded: i64,
    /// The words of the text `/t`: inserted (each unique, whole, with its space,
    /// between words), less those deleted.
    pub words: BTreeSet<String>,
}

/// A word edit of the text `/t`, once acknowledged.
enum WordEdit {
    Inserted(String),
    Deleted(String),
}

#[derive(Clone, Copy)]
enum Scheduled {
    Heal(usize, usize),
    Restart(usize),
    Thaw(usize),
    Reload(usize),
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let count = 3 + rng.below(3) as usize;
        // The members, and one spare node that may join later.
        let names: Vec<String> = (0..=count).map(|i| format!("n{i}")).collect();
        let members = names[..count].to_vec();
        let topology = match rng.below(3) {
            0 => Topology::Mesh,
            1 => Topology::Ring,
            _ => Topology::Star {
                hub: names[rng.below(count as u64) as usize].clone(),
            },
        };
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
                backup: None,
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
        let mut topology_rng = Rng::new(seed ^ 0x7070_7070_7070_7070);
        let cluster = ClusterFile {
            members,
            topology,
            heal_after_ms: 500 + topology_rng.below(2_500),
        };
        let mut sim = Sim {
            rng,
            topology_rng,
            prune_rng: Rng::new(seed ^ 0x5252_5252_5252_5252),
            membership_rng: Rng::new(seed ^ 0x6060_6060_6060_6060),
            device_rng: Rng::new(seed ^ 0x4d4d_4d4d_4d4d_4d4d),
            devices: None,
            now_ms,
            nodes,
            cluster,
            spare: Some(count),
            sessions: BTreeMap::new(),
            partitioned: BTreeSet::new(),
            frozen: BTreeSet::new(),
            queue: BTreeMap::new(),
            next_order: 0,
            next_session: 1,
            duplicate_next: false,
            reorder_next: false,
            scheduled: Vec::new(),
            contexts: BTreeMap::new(),
            acked: Vec::new(),
            crdt_totals: None,
            words_typed: 0,
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
        &self.running(i).node
    }

    /// The replicas of the cluster's members, in cluster-file order (all running
    /// once a run has settled).
    pub fn replicas(&self) -> Vec<&Node> {
        self.members().into_iter().map(|i| self.node(i)).collect()
    }

    /// Starts node `i`'s process under the cluster file as it is now: it dials its
    /// planned neighbours at once.
    fn start(&mut self, i: usize) {
        let n = &self.nodes[i];
        let config = NodeConfig {
            name: n.name.clone(),
            clock: n.clock.clone(),
            node_id: Some(n.id),
            ..NodeConfig::default()
        };
        let node = Node::open_backend(n.disk.clone(), config).expect("a simulated disk opens");
        // As handshakes teach a runtime's node the names of the others.
        for other in &self.nodes {
            node.replica().learn_name(other.id, &other.name);
        }
        let position = node.replica().position().expect("reads work");
        let cluster = self.cluster.clone();
        let membership = cluster.membership(&n.name);
        let engine = Engine::new(membership, position, self.now(), self.limits.clone());
        let keeper = LinkKeeper::new(&n.name, cluster.plan(), cluster.heal_after_ms);
        self.nodes[i].running = Some(Running {
            node,
            engine,
            keeper,
            dialers: BTreeMap::new(),
            cluster,
        });
        self.follow(i);
    }

    fn crash(&mut self, i: usize) {
        // Take the disk as power loss leaves it, then let the process go.
        let n = &mut self.nodes[i];
        n.disk = n.disk.after_crash();
        n.running = None;
        self.frozen.remove(&i);
        self.close_all(i);
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
        let homed = CollectionConfig {
            policy: Policy::Lww,
            home: Some(Home::Key),
            ..CollectionConfig::default()
        };
        self.client_set_collection("h", &homed);
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
            if self.devices.is_some() && self.device_rng.chance(25) {
                self.device_op()?;
            }
            self.maybe_change_cluster();
            self.maybe_prune_conflicts();
        }
        self.heal_all();
        self.settle()?;
        if self.devices.is_some() {
            self.flush_devices()?;
            self.settle()?;
            let devices = self.devices.as_ref().expect("on");
            self.report.device_writes_taken = devices.taken.len() as u64;
            self.report.device_answers_lost = devices.answers_lost;
            self.report.device_in_doubt_refusals = devices.in_doubt_refusals;
            self.report.device_writes_requeued = devices.requeued.len() as u64;
        }
        checks::check(&self)?;
        devices::check_no_duplicate(&self)?;
        devices::check_lost_requeued(&self)?;
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
                self.dial_due();
            }
        }
        self.now_ms.store(target, Ordering::Relaxed);
        self.run_scheduled();
        self.dial_due();
    }

    fn tick(&mut self) {
        let now = self.now();
        for i in 0..self.nodes.len() {
            if self.frozen.contains(&i) || self.nodes[i].running.is_none() {
                continue; // A stopped process's timers do not fire.
            }
            self.handle(i, Event::Tick { now_ms: now });
            // Time may make a failing peer unreachable.
            self.follow(i);
            // Once a simulated second, as the runtime does every ten: measure the log.
            if now.is_multiple_of(1_000) {
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
                    self.partitioned.remove(&network::pair(a, b));
                }
                Scheduled::Restart(i) => {
                    let member = self.cluster.members.contains(&self.nodes[i].name);
                    if member && self.nodes[i].running.is_none() {
                        self.start(i);
                    }
                }
                Scheduled::Thaw(i) => {
                    self.frozen.remove(&i);
                }
                // A frozen process reloads once it resumes.
                Scheduled::Reload(i) if self.frozen.contains(&i) => {
                    self.scheduled.push((now + TICK_MS, Scheduled::Reload(i)));
                }
                Scheduled::Reload(i) => self.reload(i),
            }
        }
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

    /// A node a client can reach: running and not frozen.
    fn client_node(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some() && !self.frozen.contains(&i))
            .collect();
        (!up.is_empty()).then(|| *self.rng.pick(&up))
    }

    /// Sets `collection`'s policy, on node 0.
    fn client_set_policy(&mut self, collection: &str, policy: Policy) {
        let config = CollectionConfig {
            policy,
            ..CollectionConfig::default()
        };
        self.client_set_collection(collection, &config);
    }

    /// Sets `collection`'s settings, on node 0.
    fn client_set_collection(&mut self, collection: &str, config: &CollectionConfig) {
        self.node(0)
            .set_collection(collection, config)
            .expect("settings write");
        let event = self.committed(0);
        self.handle(0, event);
    }

    /// Where a write to `key` of the collection with a home, sent to node `entry`,
    /// is taken: the first node of the key's order (as `entry` knows the members)
    /// that `entry` can reach, as the server forwards it. `None` when that node is
    /// frozen: the request times out and the client cannot know its fate.
    fn home_target(&mut self, entry: usize, key: &str) -> Option<usize> {
        let members = self.running(entry).cluster.members.clone();
        let order = Home::Key.order(&members, key);
        for (rank, name) in order.iter().enumerate() {
            let m = self.peer_index(name);
            if m == entry || (self.nodes[m].running.is_some() && !self.cut(entry, m)) {
                if self.frozen.contains(&m) {
                    self.report.home_writes_uncertain += 1;
                    return None;
                }
                if rank == 0 {
                    self.report.home_writes_at_home += 1;
                } else {
                    self.report.home_writes_failed_over += 1;
                }
                return Some(m);
            }
        }
        unreachable!("the order holds every member, the entry node among them")
    }

    /// An increment and a set edit in one write, or a bounded counter's increment,
    /// spend or transfer of rights. Refused while the node has not yet received
    /// collection `c`'s settings, for lack of rights, or (a spend) while a transfer
    /// is merged.
    fn client_crdt_op(&mut self) {
        let Some(i) = self.client_node() else { return };
        let key = self.rng.pick(&KEYS).to_string();
        let op = |path: &str, update| Operation {
            path: vec![path.to_owned()],
            update,
        };
        let mut word = None;
        let (operations, counted) = match self.rng.below(10) {
            0..=6 => {
                let by = 1 + self.rng.below(5) as i64;
                let element = format!("{}", self.rng.below(4)).into_bytes();
                let edit = if self.rng.chance(60) {
                    Update::SetAdd(element)
                } else {
                    Update::SetRemove(element)
                };
                let mut ops = vec![op("n", Update::CounterAdd(by)), op("s", edit)];
                if self.rng.chance(50) {
                    let (update, edit) = self.word_edit(i, &key);
                    ops.push(op("t", update));
                    word = Some(edit);
                }
                (
                    ops,
                    CrdtTotals {
                        counter: by,
                        ..CrdtTotals::default()
                    },
                )
            }
            7 => (
                vec![op("stock", Update::BoundedAdd(3))],
                CrdtTotals {
                    bounded: 3,
                    ..CrdtTotals::default()
                },
            ),
            8 => (
                vec![op("stock", Update::BoundedAdd(-1))],
                CrdtTotals {
                    bounded: -1,
                    ..CrdtTotals::default()
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
                match word {
                    Some(WordEdit::Inserted(w)) => expected.words.insert(w),
                    Some(WordEdit::Deleted(w)) => expected.words.remove(&w),
                    None => false,
                };
                let event = self.committed(i);
                self.handle(i, event);
            }
            Err(
                chorus_node::WriteError::NotCrdt { .. }
                | chorus_node::WriteError::Busy(_)
                | chorus_node::WriteError::Refused(
                    OpError::InsufficientRights { .. } | OpError::SelfTransfer { .. },
                ),
            ) => {}
            Err(e) => panic!("CRDT write failed: {e}"),
        }
    }

    /// An edit of the text `/t` of `key` as node `i` shows it: a new word inserted
    /// between two words (or at an end), or a word it shows deleted, whole.
    fn word_edit(&mut self, i: usize, key: &str) -> (Update, WordEdit) {
        let doc = self.node(i).crdt_document("c", key).expect("reads work");
        let text = match doc.as_ref().and_then(|d| d.get(&["t".into()], Kind::Text)) {
            Some(Field::Text(t)) if t.is_shown() => t.items().content(),
            _ => String::new(),
        };
        // Where words start, in characters (every word ends with its space).
        let mut starts = vec![0u64];
        for (at, c) in text.chars().enumerate() {
            if c == ' ' {
                starts.push(at as u64 + 1);
            }
        }
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        if !words.is_empty() && self.rng.chance(30) {
            let w = self.rng.below(words.len() as u64) as usize;
            let update = Update::TextDelete {
                pos: starts[w],
                len: words[w].chars().count() as u64,
            };
            return (update, WordEdit::Deleted(words[w].trim_end().to_owned()));
        }
        self.words_typed += 1;
        let word = format!("w{}", self.words_typed);
        let pos = starts[self.rng.below(starts.len() as u64) as usize];
        let update = Update::TextInsert {
            pos,
            text: format!("{word} "),
        };
        (update, WordEdit::Inserted(word))
    }

    fn client_op(&mut self) {
        let Some(entry) = self.client_node() else {
            return;
        };
        let collection = match self.rng.below(5) {
            0 | 1 => "s",
            2 | 3 => "l",
            _ => "h",
        };
        let key = self.rng.pick(&KEYS).to_string();
        let i = if collection == "h" {
            match self.home_target(entry, &key) {
                Some(target) => target,
                None => return,
            }
        } else {
            entry
        };
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
        let n = self.nodes.len() as u64;
        match self.rng.below(8) {
            0 => {
                let Some(i) = self.client_node() else { return };
                self.crash(i);
                self.fault("crash");
                let back = now + 50 + self.rng.below(8_000);
                self.scheduled.push((back, Scheduled::Restart(i)));
            }
            1 | 2 => {
                let (a, b) = (self.rng.below(n) as usize, self.rng.below(n) as usize);
                if a != b {
                    self.partitioned.insert(network::pair(a, b));
                    self.fault("partition");
                    let heal = now + 100 + self.rng.below(10_000);
                    self.scheduled.push((heal, Scheduled::Heal(a, b)));
                }
            }
            3 => {
                if let Some(id) = self.any_session() {
                    self.close_session(id);
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
            6 => {
                let i = self.rng.below(n) as usize;
                let offset = self.rng.below(120_001) as i64 - 60_000;
                self.nodes[i]
                    .clock
                    .offset_ms
                    .fetch_add(offset, Ordering::Relaxed);
                self.fault("clock jump");
            }
            _ => {
                // A stopped process (SIGSTOP, a long pause): it neither answers nor
                // acts until it resumes.
                let Some(i) = self.client_node() else { return };
                self.frozen.insert(i);
                self.fault("freeze");
                let thaw = now + 100 + self.rng.below(6_000);
                self.scheduled.push((thaw, Scheduled::Thaw(i)));
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
        if self.nodes[i].running.is_none() || self.frozen.contains(&i) {
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

    /// The faults stop: partitions heal, frozen nodes resume, every member runs and
    /// has reloaded the cluster file.
    fn heal_all(&mut self) {
        self.partitioned.clear();
        self.frozen.clear();
        self.scheduled.clear();
        for i in self.members() {
            if self.nodes[i].running.is_none() {
                self.start(i);
            }
        }
        self.reload_all();
    }

    /// Runs until every member is back on its planned links, nothing lags and all
    /// digests agree.
    fn settle(&mut self) -> Result<(), String> {
        let deadline = self.now() + SETTLE_MS_MAX;
        while self.now() < deadline {
            self.advance(TICK_MS);
            if self.quiet() && self.links_restored().is_ok() && checks::digests_agree(self) {
                return Ok(());
            }
        }
        self.links_restored()?;
        let lags: Vec<String> = self
            .members()
            .into_iter()
            .map(|i| {
                format!(
                    "{}: {:?}",
                    self.nodes[i].name,
                    self.running(i).engine.peers()
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

    /// Every member's engine has its peers connected, and nothing lags.
    fn quiet(&self) -> bool {
        self.members().into_iter().all(|i| {
            let peers = self.running(i).engine.peers();
            peers.iter().all(|p| p.connected && p.lag_ops == 0)
        })
    }

    /// Every member links to exactly its planned neighbours again, and counts no
    /// one unreachable (the links healing made are closed).
    fn links_restored(&self) -> Result<(), String> {
        for i in self.members() {
            let status = self.running(i).keeper.status(self.now());
            if status.connected != status.planned || !status.unreachable.is_empty() {
                return Err(format!(
                    "{} did not return to its planned links: {status:?}",
                    self.nodes[i].name
                ));
            }
        }
        Ok(())
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
