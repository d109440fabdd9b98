//! The replication runtime: sockets, tasks and timers around `chorus_repl::Engine`.
//!
//! ```text
//!  listener ─┐                       ┌─▶ writer task (link emulation) ──▶ TCP
//!  dialers ──┼─ handshake ─▶ actor ──┤
//!  readers ──┘   (Hello)     (engine)└─▶ node: read_log / apply_remote / replicate(step)
//!  ticker, commit watcher ─────▶ actor ─▶ LinkPlan: which peers to dial now
//! ```
//!
//! One actor task owns the engine: every event goes through its channel, and it
//! executes the commands. A link is one TCP connection per pair of nodes; both
//! directions share it. Dialers retry with backoff, so a node serves its API at once
//! and links come up as peers do.
//!
//! Self-healing: the link decisions (which peers to dial, which of two connections to
//! keep, when a peer is unreachable, which links to close) are made without I/O by a
//! [`LinkKeeper`] (`chorus-repl`), which the simulator drives too; the actor carries
//! them out: a dialer task per peer the keeper dials, a reader and a writer task per
//! link. See `chorus_repl::keeper` for the invariants (one link per pair, only the
//! dialer closes a link it no longer wants).
//!
//! Framing: frames travel in pieces (`chorus_repl::frame`); a piece above
//! `PIECE_BYTES_MAX`, or a frame above `FRAME_BYTES_MAX` (`HELLO_BYTES_MAX` before the
//! handshake), ends the connection (corrupt or hostile stream). A frame that does not
//! decode ends the connection too; the peer resends from the acknowledged cursor on
//! the next session, so nothing is lost. Every frame a node sends is bounded by bytes
//! (`LOG_READ_BYTES_MAX`, `STATE_READ_BYTES_MAX`) except for one entry, key state or
//! conflict record that alone exceeds the bound: it travels whole, in pieces.
//!
//! Connections that have not completed a handshake are cheap: at most
//! `HANDSHAKES_MAX` at once, each holding at most `HELLO_BYTES_MAX` for at most
//! `HANDSHAKE_TIMEOUT`.

use crate::cluster::{ClusterConfig, ClusterError};
use crate::emulation::{LinkEmulation, SplitMix};
use crate::tls::PeerTls;
use chorus_core::PhysicalClock;
use chorus_node::{Entry, Node, NodeId, ReadError, RemoteOutcome, ReplicationStep};
pub use chorus_repl::EngineLimits;
pub use chorus_repl::LinkStatus;
pub use chorus_repl::Stability;
use chorus_repl::frame::{
    FRAME_BYTES_MAX, HELLO_BYTES_MAX, HELLO_NAMES_MAX, NODE_NAME_BYTES_MAX, PIECE_BYTES_MAX,
};
use chorus_repl::{
    Command, Engine, Event, Frame, Hello, LinkKeeper, Membership, PROTOCOL_VERSION, PeerName,
    PeerStatus,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Bytes of documents read from the log for one `Entries` frame (at least one entry
/// is sent, however large).
const LOG_READ_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of documents read for one `State` frame of a transfer (at least one key
/// state or conflict record is sent, however large).
const STATE_READ_BYTES_MAX: usize = 4 * 1024 * 1024;
// A read stops once past its budget, so a frame holds the budget plus one item, and
// the largest item (a key state grown by the concurrent writes of up to four nodes)
// must fit with it.
const _: () = assert!(
    LOG_READ_BYTES_MAX + 4 * chorus_node::limits::KEY_STATE_BYTES_MAX < FRAME_BYTES_MAX
        && STATE_READ_BYTES_MAX + 4 * chorus_node::limits::KEY_STATE_BYTES_MAX < FRAME_BYTES_MAX
);

/// Peer connections accepted but not yet through their handshake; more are closed
/// at once.
const HANDSHAKES_MAX: usize = 64;
/// Frames queued for one connection's writer; the engine's window keeps this small.
const WRITER_QUEUE_FRAMES_MAX: usize = 256;
/// Events queued for the actor; readers wait when it is full.
const ACTOR_QUEUE_MESSAGES_MAX: usize = 1024;
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Engine timer period.
const TICK_PERIOD: Duration = Duration::from_millis(200);
/// How often the op log is measured against the byte and age bounds (a scan of the
/// entries within them).
const RETENTION_CHECK_PERIOD: Duration = Duration::from_secs(10);
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Settings of the replication runtime beyond the cluster file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub limits: EngineLimits,
    /// Link emulation set on the command line, per peer: this node's frames to it.
    /// It takes precedence over the cluster file's `[[emulate]]`.
    pub emulate: BTreeMap<String, LinkEmulation>,
    /// The folder of the cluster's certificates (`chorus cluster certs`): peers then
    /// speak mutual TLS, and a peer must prove the name it claims (`crate::tls`).
    pub certs: Option<PathBuf>,
}

/// A peer connection's byte stream: plain TCP, or TLS over it.
trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> PeerStream for T {}

enum Msg {
    Event(Event),
    Up {
        peer: String,
        hello: Hello,
        writer: mpsc::Sender<Frame>,
        conn: u64,
        dialled_by_me: bool,
        tasks: Vec<JoinHandle<()>>,
    },
    Down {
        peer: String,
        conn: u64,
    },
    /// Drop the link to `peer`, whichever connection it is on.
    Drop {
        peer: String,
        reason: String,
    },
    /// A dial to `peer` failed (refused, timed out, partitioned).
    DialFailed {
        peer: String,
    },
    Reconfigure {
        config: ClusterConfig,
        reply: oneshot::Sender<Result<(), ClusterError>>,
    },
}

struct Link {
    conn: u64,
    /// The peer's node id in this session (its cursor is stored under it).
    node_id: NodeId,
    writer: mpsc::Sender<Frame>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the actor publishes for readers of the runtime's state.
#[derive(Default)]
struct Published {
    peers: Vec<PeerStatus>,
    links: LinkStatus,
    stability: Stability,
}

/// A running replication runtime; dropping it stops every task.
pub struct Replication {
    tasks: Vec<JoinHandle<()>>,
    actor: mpsc::Sender<Msg>,
    shared: Shared,
}

impl Drop for Replication {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Replication {
    /// This node's name in the cluster.
    pub fn me(&self) -> &str {
        &self.shared.me
    }

    /// The cluster file in force (the last one reloaded).
    pub fn cluster(&self) -> Arc<ClusterConfig> {
        self.shared.cluster()
    }

    /// The replication state of each peer, as the engine last reported it.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.published().peers.clone()
    }

    /// The links as last planned and followed.
    pub fn link_status(&self) -> LinkStatus {
        self.published().links.clone()
    }

    /// How far the members' histories agree, as the engine last reported it.
    pub fn stability(&self) -> Stability {
        self.published().stability.clone()
    }

    fn published(&self) -> std::sync::RwLockReadGuard<'_, Published> {
        self.shared.status.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the cluster while running: nodes join or leave, links and link
    /// emulation change. This node's own name, peer address and the cluster name
    /// cannot change without a restart.
    pub async fn reconfigure(&self, config: ClusterConfig) -> Result<(), ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.actor
            .send(Msg::Reconfigure { config, reply })
            .await
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)?
    }
}

#[derive(Clone)]
struct Shared {
    node: Node,
    cluster: Arc<RwLock<Arc<ClusterConfig>>>,
    emulate: Arc<BTreeMap<String, LinkEmulation>>,
    me: String,
    actor: mpsc::Sender<Msg>,
    /// The peers linked now: a dialer waits while its peer is linked.
    linked: watch::Receiver<BTreeSet<String>>,
    /// What the actor last published of its peers and links (for `/v1/status`);
    /// only the actor writes it.
    status: Arc<RwLock<Published>>,
    started: Instant,
    /// The certificates folder, and the TLS settings last loaded from it (a reload
    /// loads them again).
    certs: Option<PathBuf>,
    tls: Arc<RwLock<Option<Arc<PeerTls>>>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn cluster(&self) -> Arc<ClusterConfig> {
        self.cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The conditions emulated on this node's frames to `peer`.
    fn emulation(&self, peer: &str) -> LinkEmulation {
        match self.emulate.get(peer) {
            Some(set) => set.clone(),
            None => self.cluster().emulation(&self.me, peer),
        }
    }

    fn tls(&self) -> Option<Arc<PeerTls>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the certificates again (at start and on reload), if TLS is on.
    fn load_tls(&self) -> Result<(), ClusterError> {
        let Some(dir) = &self.certs else {
            return Ok(());
        };
        let tls = PeerTls::load(dir, &self.me)?;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(tls));
        Ok(())
    }

    fn hello(&self) -> Result<Hello, String> {
        hello(&self.node, &self.cluster().name, &self.me).map_err(|e| e.to_string())
    }

    /// Why a peer's hello is refused, if it is.
    fn check(&self, hello: &Hello) -> Result<(), String> {
        let cluster = self.cluster();
        if hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "speaks protocol {}, this node speaks {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        if hello.cluster != cluster.name {
            return Err(format!(
                "belongs to cluster {:?}, this node to {:?}",
                hello.cluster, cluster.name
            ));
        }
        if hello.names.len() > HELLO_NAMES_MAX
            || hello
                .names
                .iter()
                .any(|(_, n)| n.len() > NODE_NAME_BYTES_MAX)
        {
            return Err(format!(
                "teaches more than {HELLO_NAMES_MAX} replica names, or one longer than {NODE_NAME_BYTES_MAX} bytes"
            ));
        }
        if hello.name == self.me || cluster.node(&hello.name).is_none() {
            return Err(format!(
                "{:?} is not another node of cluster {:?} (if it joined, reload the cluster file here)",
                hello.name, cluster.name
            ));
        }
        if self.emulation(&hello.name).partitioned {
            return Err("the link is partitioned (link emulation)".into());
        }
        Ok(())
    }

    fn learn(&self, hello: &Hello) {
        self.node.replica().learn_name(hello.node_id, &hello.name);
        for (id, name) in &hello.names {
            self.node.replica().learn_name(*id, name);
        }
    }
}

/// The handshake `node` introduces itself with, as member `me` of `cluster`.
pub fn hello(node: &Node, cluster: &str, me: &str) -> Result<Hello, ReadError> {
    let applied = node.replica().position()?.applied;
    Ok(Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        name: me.to_owned(),
        node_id: node.node_id(),
        applied,
        names: node.replica().known_names(),
    })
}

fn membership(cluster: &ClusterConfig, me: &str) -> Membership {
    Membership {
        me: me.into(),
        neighbours: cluster.neighbours(me).into_iter().map(Into::into).collect(),
        members: cluster.names().into_iter().map(Into::into).collect(),
    }
}

/// Starts replicating `node` as cluster member `me`: listens on its peer address,
/// dials the peers its link plan wants, and streams entries both ways.
pub async fn start(
    node: Node,
    cluster: ClusterConfig,
    me: &str,
    options: Options,
) -> std::io::Result<Replication> {
    let address = cluster
        .node(me)
        .ok_or_else(|| std::io::Error::other(format!("{me:?} is not a node of the cluster file")))?
        .peer
        .clone();
    let plan = cluster.link_plan().map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot listen for peers on {address}: {e}")))?;
    let (actor_tx, actor_rx) = mpsc::channel(ACTOR_QUEUE_MESSAGES_MAX);
    let (linked_tx, linked_rx) = watch::channel(BTreeSet::new());
    let heal_after_ms = cluster.heal_after_ms;
    let shared = Shared {
        node,
        cluster: Arc::new(RwLock::new(Arc::new(cluster))),
        emulate: Arc::new(options.emulate),
        me: me.to_owned(),
        actor: actor_tx.clone(),
        linked: linked_rx,
        status: Arc::default(),
        started: Instant::now(),
        certs: options.certs,
        tls: Arc::default(),
    };
    shared.load_tls().map_err(std::io::Error::other)?;
    let position = shared
        .node
        .replica()
        .position()
        .map_err(std::io::Error::other)?;
    let limits = options.limits;
    let engine = Engine::new(
        membership(&shared.cluster(), me),
        position,
        shared.now_ms(),
        limits.clone(),
    );
    let mut actor = Actor {
        shared: shared.clone(),
        engine,
        keeper: LinkKeeper::new(me, plan, heal_after_ms),
        dialers: HashMap::new(),
        linked: linked_tx,
    };
    // Dial the planned neighbours at once, and publish the links before the node
    // answers its first status request.
    actor.replan();
    let tasks = vec![
        tokio::spawn(actor.run(actor_rx)),
        tokio::spawn(accept(shared.clone(), listener)),
        tokio::spawn(tick(shared.clone())),
        tokio::spawn(measure_retention(shared.clone(), limits)),
        tokio::spawn(watch_commits(shared.clone())),
    ];
    tracing::info!(node = me, peer_address = %address, "replication started");
    Ok(Replication {
        tasks,
        actor: actor_tx,
        shared,
    })
}

/// The task that owns the engine and the links.
struct Actor {
    shared: Shared,
    engine: Engine,
    /// The link decisions; it holds each link's tasks and writer.
    keeper: LinkKeeper<Link>,
    /// A dialer task per peer the keeper dials.
    dialers: HashMap<String, JoinHandle<()>>,
    linked: watch::Sender<BTreeSet<String>>,
}

impl Drop for Actor {
    fn drop(&mut self) {
        for dialer in self.dialers.values() {
            dialer.abort();
        }
    }
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Msg>) {
        while let Some(msg) = inbox.recv().await {
            let mut events = VecDeque::new();
            // A reconfiguration is answered once its links follow the new plan.
            let mut answer = None;
            // Anything but entries and their answers may change the links; time
            // (ticks) may make a failing peer unreachable.
            let mut links_may_change =
                !matches!(&msg, Msg::Event(e) if !matches!(e, Event::Tick { .. }));
            match msg {
                Msg::Event(event) => events.push_back(event),
                Msg::Up {
                    peer,
                    hello,
                    writer,
                    conn,
                    dialled_by_me,
                    tasks,
                } => {
                    let link = Link {
                        conn,
                        node_id: hello.node_id,
                        writer,
                        tasks,
                    };
                    events.extend(self.up(peer, hello, dialled_by_me, link));
                }
                Msg::Down { peer, conn } => {
                    let closed = "the connection closed";
                    events.extend(self.lose(peer, |l| l.conn == conn, closed));
                }
                Msg::Drop { peer, reason } => events.extend(self.lose(peer, |_| true, &reason)),
                Msg::DialFailed { peer } => self.keeper.dial_failed(&peer, self.shared.now_ms()),
                Msg::Reconfigure { config, reply } => {
                    answer = Some((reply, self.reconfigure(config, &mut events)));
                }
            }
            let linked_before = self.keeper.linked().count();
            self.handle(events);
            // The engine may have dropped a link (a silent peer, a full writer queue).
            links_may_change |= self.keeper.linked().count() != linked_before;
            if links_may_change {
                self.replan();
            }
            self.publish_peers();
            if let Some((reply, result)) = answer {
                let _ = reply.send(result);
            }
        }
    }

    /// Feeds events to the engine and executes its commands, until none are left.
    fn handle(&mut self, mut events: VecDeque<Event>) {
        while let Some(event) = events.pop_front() {
            tracing::trace!(?event, "replication event");
            for command in self.engine.handle(event) {
                self.execute(command, &mut events);
            }
        }
    }

    /// A connection to `peer` is up: it becomes the link unless a preferred one is
    /// already up (the keeper decides; the connection it does not keep is dropped).
    fn up(&mut self, peer: String, hello: Hello, dialled_by_me: bool, link: Link) -> Option<Event> {
        let node_id = hello.node_id;
        let admission = self.keeper.up(&peer, dialled_by_me, link);
        drop(admission.close);
        if !admission.linked {
            tracing::debug!(peer, "a second connection; keeping the first");
            return None;
        }
        let acked_seq = self.shared.node.replica().peer_cursor(node_id).unwrap_or_else(|error| {
            tracing::error!(%error, peer, "cannot read the peer's cursor; resending from the start");
            0
        });
        tracing::info!(peer, acked_seq, "peer connected");
        Some(Event::Connected {
            peer: peer.into(),
            hello,
            acked_seq,
        })
    }

    /// Drops the link to `peer` if `is_it`, after a fault. Returns the event that
    /// tells the engine, if it was up.
    fn lose(
        &mut self,
        peer: String,
        is_it: impl FnOnce(&Link) -> bool,
        reason: &str,
    ) -> Option<Event> {
        let link = self.keeper.down(&peer, is_it, self.shared.now_ms())?;
        drop(link);
        tracing::info!(peer, reason, "lost the link");
        Some(Event::Disconnected { peer: peer.into() })
    }

    /// Plans the links anew and follows the plan: starts and stops dialers, and
    /// closes the links the keeper retires.
    fn follow_plan(&mut self) -> VecDeque<Event> {
        let wanted_before = self.keeper.wanted().clone();
        let shared = &self.shared;
        let changes = self
            .keeper
            .follow(shared.now_ms(), |peer| shared.emulation(peer).partitioned);
        let wanted = self.keeper.wanted();
        if *wanted != wanted_before {
            tracing::info!(links = ?wanted.links, around = ?wanted.probes, "link plan");
        }
        for peer in changes.stop_dialing {
            if let Some(dialer) = self.dialers.remove(&peer) {
                dialer.abort();
            }
        }
        for peer in changes.dial {
            let task = tokio::spawn(dial_loop(self.shared.clone(), peer.clone()));
            self.dialers.insert(peer, task);
        }
        changes
            .closed
            .into_iter()
            .map(|(peer, link, reason)| {
                tracing::info!(peer, reason, "closing the link");
                drop(link);
                Event::Disconnected { peer: peer.into() }
            })
            .collect()
    }

    fn reconfigure(
        &mut self,
        config: ClusterConfig,
        events: &mut VecDeque<Event>,
    ) -> Result<(), ClusterError> {
        let current = self.shared.cluster();
        let me = &self.shared.me;
        current.check_reload(&config, me)?;
        let plan = config.link_plan()?;
        // Rotated certificates take effect for new connections.
        self.shared.load_tls()?;
        // Dial at once under the new file (a healed partition, a new node), not
        // after the backoff of earlier failures.
        for peer in self.keeper.reconfigure(plan, config.heal_after_ms) {
            if let Some(dialer) = self.dialers.remove(&peer) {
                dialer.abort();
            }
        }
        events.push_back(Event::Reconfigured {
            membership: membership(&config, me),
        });
        tracing::info!(nodes = ?config.names(), "cluster reconfigured");
        *self
            .shared
            .cluster
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Plans the links again, follows the plan, and publishes the links.
    fn replan(&mut self) {
        let events = self.follow_plan();
        self.handle(events);
        self.publish_links();
    }

    fn publish_links(&self) {
        let status = self.keeper.status(self.shared.now_ms());
        let linked: BTreeSet<String> = status.connected.iter().cloned().collect();
        self.linked.send_if_modified(|current| {
            let changed = *current != linked;
            *current = linked;
            changed
        });
        self.shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .links = status;
    }

    /// Publishes the engine's view of each peer (for status and metrics) and of how
    /// far the members agree.
    fn publish_peers(&self) {
        let peers = self.engine.peers();
        for p in &peers {
            let peer = p.name.to_string();
            metrics::gauge!("chorus_peer_connected", "peer" => peer.clone())
                .set(u8::from(p.connected));
            metrics::gauge!("chorus_peer_lag_ops", "peer" => peer.clone()).set(p.lag_ops as f64);
            metrics::gauge!("chorus_peer_lag_ms", "peer" => peer.clone()).set(p.lag_ms as f64);
            metrics::counter!("chorus_replication_entries_sent_total", "peer" => peer.clone())
                .absolute(p.entries_sent);
            metrics::counter!("chorus_replication_entries_received_total", "peer" => peer)
                .absolute(p.entries_received);
        }
        let mut published = self
            .shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner());
        published.peers = peers;
        published.stability = self.engine.stability();
    }

    fn execute(&mut self, command: Command, events: &mut VecDeque<Event>) {
        let shared = &self.shared;
        tracing::trace!(?command, "replication command");
        let peer_id = |peer: &str| self.keeper.link(peer).map(|l| l.node_id);
        let Some(effect) = effect_of(&shared.node, command, peer_id) else {
            return;
        };
        match effect {
            Effect::Answered(Ok(event)) => events.push_back(event),
            Effect::Answered(Err(error)) => tracing::error!(%error, "cannot read for replication"),
            Effect::Scan(scan) => {
                let (node, actor) = (shared.node.clone(), shared.actor.clone());
                tokio::task::spawn_blocking(move || match scan.answer(&node) {
                    // The engine matches the answer to its peer's session; a link
                    // that ended meanwhile ignores it.
                    Ok(event) => {
                        let _ = actor.blocking_send(Msg::Event(event));
                    }
                    Err(error) => tracing::error!(%error, "cannot read for replication"),
                });
            }
            Effect::Send { peer, frame } => {
                let Some(link) = self.keeper.link(&peer) else {
                    return;
                };
                if link.writer.try_send(frame).is_err() {
                    let reason = "the peer is not reading";
                    events.extend(self.lose(peer.to_string(), |_| true, reason));
                }
            }
            Effect::Disconnect { peer, reason } => {
                events.extend(self.lose(peer.to_string(), |_| true, &reason))
            }
            Effect::Apply {
                peer,
                session,
                entries,
            } => {
                let (node, actor) = (shared.node.clone(), shared.actor.clone());
                tokio::spawn(async move {
                    let msg = match node.replica().apply_remote(entries).await {
                        Ok(outcome) => Msg::Event(applied_event(peer, session, outcome)),
                        // Not acknowledged: the peer sends these again next session.
                        Err(error) => Msg::Drop {
                            peer: peer.to_string(),
                            reason: format!("cannot apply its entries: {error}"),
                        },
                    };
                    let _ = actor.send(msg).await;
                });
            }
            Effect::Commit { step, then } => {
                if let Then::StateAdopted { peer, .. } = &then {
                    tracing::info!(%peer, "state transfer complete");
                    metrics::counter!("chorus_state_transfers_total").increment(1);
                }
                match then.peer() {
                    Some(peer) => replicate_then(shared, peer.to_string(), step, then),
                    None => replicate_in_background(shared, step),
                }
            }
        }
    }
}

/// What one engine command asks of a node and its links, decided once for the
/// runtime and the simulator; each carries it out its own way (tasks and sockets,
/// or one thread and a simulated network).
pub enum Effect {
    /// It only read the node (the op log, a bounded read): here is the event that
    /// answers it.
    Answered(Result<Event, ReadError>),
    /// A read of the whole store: answer it with [`Scan::answer`], off the task that
    /// drives the engine (a large store would stall every link meanwhile).
    Scan(Scan),
    /// Send a frame on the link to `peer`.
    Send { peer: PeerName, frame: Frame },
    /// End the link to `peer`.
    Disconnect { peer: PeerName, reason: String },
    /// Apply a peer's entries, then tell the engine [`applied_event`].
    Apply {
        peer: PeerName,
        session: u64,
        entries: Vec<Entry>,
    },
    /// Commit a replication step, then tell the engine what [`Then::event`] says.
    Commit { step: ReplicationStep, then: Then },
}

/// A read that scans the store: bucket hashes, a comparison of them, a part of a
/// state transfer.
pub struct Scan(Command);

impl Scan {
    /// Reads the node and returns the event that answers the scan.
    pub fn answer(self, node: &Node) -> Result<Event, ReadError> {
        match answer_read(node, self.0) {
            ReadAnswer::Answered(answer) => answer,
            ReadAnswer::NotARead(_) => unreachable!("a scan is a read"),
        }
    }
}

/// What follows a committed replication step.
pub enum Then {
    /// Nothing: a failure is logged and the engine asks again later (cursors and
    /// collections are idempotent).
    Nothing,
    /// The log was truncated: the node's log position changed.
    Truncated,
    /// Part of a transfer from `peer` was merged.
    StateMerged { peer: PeerName, session: u64 },
    /// A transfer from `peer` was adopted.
    StateAdopted { peer: PeerName, session: u64 },
}

impl Then {
    /// The peer whose session the step belongs to: a failed commit ends that link
    /// (the peer starts over next session).
    pub fn peer(&self) -> Option<PeerName> {
        match self {
            Then::StateMerged { peer, .. } | Then::StateAdopted { peer, .. } => Some(peer.clone()),
            Then::Nothing | Then::Truncated => None,
        }
    }

    /// Whether the step changed the node's log position (what it has applied, where
    /// its log starts), so the engine must hear of it.
    pub fn moves_position(&self) -> bool {
        matches!(self, Then::Truncated | Then::StateAdopted { .. })
    }

    /// The event that answers the step, once committed on `node`.
    pub fn event(self, node: &Node) -> Option<Event> {
        match self {
            Then::Nothing | Then::Truncated => None,
            Then::StateMerged { peer, session } => Some(Event::StateMerged { peer, session }),
            Then::StateAdopted { peer, session } => Some(Event::StateAdopted {
                peer,
                session,
                applied: node
                    .replica()
                    .position()
                    .map(|p| p.applied)
                    .unwrap_or_default(),
            }),
        }
    }
}

/// Decides what `command` asks for. `peer_id` gives the node id behind a peer's
/// name (cursors are stored by id); a cursor for a peer it does not know is
/// dropped (`None`).
pub fn effect_of(
    node: &Node,
    command: Command,
    peer_id: impl Fn(&str) -> Option<NodeId>,
) -> Option<Effect> {
    if matches!(
        command,
        Command::ReadBuckets { .. } | Command::CompareBuckets { .. } | Command::ReadState { .. }
    ) {
        return Some(Effect::Scan(Scan(command)));
    }
    let command = match answer_read(node, command) {
        ReadAnswer::Answered(answer) => return Some(Effect::Answered(answer)),
        ReadAnswer::NotARead(command) => command,
    };
    let commit = |step, then| Some(Effect::Commit { step, then });
    match command {
        Command::Send { peer, frame } => Some(Effect::Send { peer, frame }),
        Command::Disconnect { peer, reason } => Some(Effect::Disconnect { peer, reason }),
        Command::Apply {
            peer,
            session,
            entries,
        } => Some(Effect::Apply {
            peer,
            session,
            entries,
        }),
        Command::SaveCursor { peer, seq } => {
            let step = ReplicationStep::SaveCursor {
                peer: peer_id(&peer)?,
                seq,
            };
            commit(step, Then::Nothing)
        }
        Command::MergeState {
            peer,
            session,
            keys,
            conflicts,
        } => commit(
            ReplicationStep::MergeState { keys, conflicts },
            Then::StateMerged { peer, session },
        ),
        Command::AdoptState {
            peer,
            session,
            applied,
            buckets,
            as_of,
        } => commit(
            ReplicationStep::AdoptState {
                applied,
                buckets,
                unchanged_since: as_of,
            },
            Then::StateAdopted { peer, session },
        ),
        Command::CollectTombstones { stable } => {
            commit(ReplicationStep::CollectTombstones { stable }, Then::Nothing)
        }
        Command::TruncateLog { before_seq } => {
            commit(ReplicationStep::TruncateLog { before_seq }, Then::Truncated)
        }
        Command::ReadLog { .. }
        | Command::ReadBuckets { .. }
        | Command::CompareBuckets { .. }
        | Command::ReadState { .. } => unreachable!("reads are answered by answer_read"),
    }
}

/// The event that tells the engine what a batch of `peer`'s entries did.
pub fn applied_event(peer: PeerName, session: u64, outcome: RemoteOutcome) -> Event {
    Event::Applied {
        peer,
        session,
        applied: outcome.applied,
        waiting: outcome.waiting.iter().map(|e| e.dot()).collect(),
    }
}

/// What [`answer_read`] did with a command.
enum ReadAnswer {
    /// It only read the node: here is the event that answers it.
    Answered(Result<Event, ReadError>),
    /// It is not a read: execute it.
    NotARead(Command),
}

/// Answers a command that only reads the node (op log, bucket hashes, key states)
/// with its event; hands any other command back.
fn answer_read(node: &Node, command: Command) -> ReadAnswer {
    ReadAnswer::Answered(match command {
        Command::ReadLog {
            peer,
            session,
            after_seq,
            max_entries,
        } => node
            .replica()
            .read_log(after_seq, max_entries, LOG_READ_BYTES_MAX)
            .map(|entries| {
                let through_seq = entries.last().map_or(after_seq, |(seq, _)| *seq);
                Event::LogRead {
                    peer,
                    session,
                    entries,
                    through_seq,
                }
            }),
        Command::ReadBuckets { peer, session } => {
            node.replica().bucket_hashes().map(|b| Event::BucketsRead {
                peer,
                session,
                hashes: b.hashes,
                floor: b.floor,
                log_start: b.log_start,
            })
        }
        Command::CompareBuckets {
            peer,
            session,
            hashes,
        } => node
            .replica()
            .wanted_buckets(&hashes)
            .map(|(wanted, as_of)| Event::BucketsCompared {
                peer,
                session,
                wanted,
                as_of,
            }),
        Command::ReadState {
            peer,
            session,
            after,
            max_keys,
            buckets,
        } => node
            .replica()
            .read_state(after, max_keys, STATE_READ_BYTES_MAX, &buckets)
            .map(|chunk| Event::StateRead {
                peer,
                session,
                keys: chunk.keys,
                conflicts: chunk.conflicts,
                next: chunk.next,
            }),
        other => return ReadAnswer::NotARead(other),
    })
}

/// Commits `step` without holding up the actor; nothing waits for it (a failure is
/// logged, and the engine asks again later: cursors and collections are idempotent).
fn replicate_in_background(shared: &Shared, step: ReplicationStep) {
    let node = shared.node.clone();
    tokio::spawn(async move {
        if let Err(error) = node.replica().replicate(step.clone()).await {
            tracing::warn!(%error, ?step, "cannot commit a replication step");
        }
    });
}

/// Commits `step`, then tells the engine what `then` says; a failure drops the link
/// to `peer` (the peer starts over next session).
fn replicate_then(shared: &Shared, peer: String, step: ReplicationStep, then: Then) {
    let (node, actor) = (shared.node.clone(), shared.actor.clone());
    tokio::spawn(async move {
        let msg = match node.replica().replicate(step).await {
            Ok(()) => match then.event(&node) {
                Some(event) => Msg::Event(event),
                None => return,
            },
            Err(error) => Msg::Drop {
                peer,
                reason: format!("cannot commit a state transfer: {error}"),
            },
        };
        let _ = actor.send(msg).await;
    });
}

/// Every `RETENTION_CHECK_PERIOD`, finds the op-log entries beyond the byte and age
/// bounds and tells the engine, which collects them.
async fn measure_retention(shared: Shared, limits: EngineLimits) {
    let mut interval = tokio::time::interval(RETENTION_CHECK_PERIOD);
    loop {
        interval.tick().await;
        let now_ms = chorus_core::SystemClock.now_ms();
        match shared.node.replica().retention_limit(
            limits.retention_bytes_max,
            limits.retention_age_ms_max,
            now_ms,
        ) {
            Ok(0) => {}
            Ok(seq) => {
                if shared
                    .actor
                    .send(Msg::Event(Event::RetentionLimit { seq }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot measure the op log"),
        }
    }
}

async fn tick(shared: Shared) {
    let mut interval = tokio::time::interval(TICK_PERIOD);
    loop {
        interval.tick().await;
        if shared
            .actor
            .send(Msg::Event(Event::Tick {
                now_ms: shared.now_ms(),
            }))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn watch_commits(shared: Shared) {
    let mut committed = shared.node.committed_seq();
    while committed.changed().await.is_ok() {
        let Ok(position) = shared.node.replica().position() else {
            continue;
        };
        let event = Event::Committed { position };
        if shared.actor.send(Msg::Event(event)).await.is_err() {
            return;
        }
    }
}

async fn accept(shared: Shared, listener: TcpListener) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%from, "too many peer handshakes at once; closed a connection");
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(reason) = inbound(&shared, stream, permit).await {
                        tracing::warn!(%from, reason, "refused a peer connection");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(DIAL_BACKOFF_MIN).await;
            }
        }
    }
}

async fn inbound(
    shared: &Shared,
    tcp: TcpStream,
    handshake: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let (mut stream, certificate): (Box<dyn PeerStream>, _) = match shared.tls() {
        None => (Box::new(tcp), None),
        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok((stream, certificate))) => (Box::new(stream), Some(certificate)),
            Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
            Err(_) => return Err("no TLS handshake within the handshake timeout".into()),
        },
    };
    let hello = read_frame(&mut stream, HELLO_BYTES_MAX, |_| {});
    let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(other)) => return Err(format!("expected a hello, got {other:?}")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello within the handshake timeout".into()),
    };
    let proven = certificate.is_none_or(|c| PeerTls::certifies(&c, &theirs.name));
    let checked = if proven {
        shared.check(&theirs)
    } else {
        Err("its certificate is not the certificate of the node it claims to be".to_owned())
    };
    if let Err(reason) = checked {
        let _ = write_frame(
            &mut stream,
            &Frame::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(format!("peer {:?}: {reason}", theirs.name));
    }
    write_frame(&mut stream, &Frame::Hello(shared.hello()?)).await?;
    drop(handshake);
    run_connection(shared, stream, theirs, false).await;
    Ok(())
}

/// Keeps a link to `peer` up while the actor wants it: dials whenever it is not
/// linked, with backoff, and reports failed dials (they make the peer unreachable).
async fn dial_loop(shared: Shared, peer: String) {
    let mut linked = shared.linked.clone();
    let mut backoff = DIAL_BACKOFF_MIN;
    loop {
        if linked.wait_for(|l| !l.contains(&peer)).await.is_err() {
            return;
        }
        let Some(address) = shared.cluster().node(&peer).map(|n| n.peer.clone()) else {
            return;
        };
        let attempt = if shared.emulation(&peer).partitioned {
            Err("the link is partitioned (link emulation)".to_owned())
        } else {
            outbound(&shared, &peer, &address).await
        };
        match attempt {
            Ok(ended) => {
                backoff = DIAL_BACKOFF_MIN;
                let _ = ended.await;
            }
            Err(reason) => {
                tracing::debug!(peer, reason, "cannot link to peer");
                let failed = Msg::DialFailed { peer: peer.clone() };
                if shared.actor.send(failed).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

/// Dials `peer` at `address`, shakes hands, and returns a signal that completes when
/// the link ends.
async fn outbound(
    shared: &Shared,
    peer: &str,
    address: &str,
) -> Result<oneshot::Receiver<()>, String> {
    let connect = TcpStream::connect(address);
    let tcp = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no connection within the handshake timeout".into()),
    };
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn PeerStream> = match shared.tls() {
        None => Box::new(tcp),
        Some(tls) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(tcp, peer)).await {
            Ok(Ok(stream)) => Box::new(stream),
            Ok(Err(e)) => return Err(format!("TLS handshake with {peer:?} failed: {e}")),
            Err(_) => return Err("no TLS handshake within the handshake timeout".into()),
        },
    };
    write_frame(&mut stream, &Frame::Hello(shared.hello()?)).await?;
    let hello = read_frame(&mut stream, HELLO_BYTES_MAX, |_| {});
    let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(Frame::Refused { reason })) => {
            tracing::warn!(address, reason, "peer refused this node");
            return Err(reason);
        }
        Ok(Ok(other)) => return Err(format!("expected a hello, got {other:?}")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello within the handshake timeout".into()),
    };
    if theirs.name != peer {
        return Err(format!(
            "{address} is node {:?}, not {peer:?}; check the cluster file",
            theirs.name
        ));
    }
    if let Err(reason) = shared.check(&theirs) {
        tracing::warn!(address, reason, "refused the peer we dialled");
        return Err(reason);
    }
    Ok(run_connection(shared, stream, theirs, true).await)
}

/// Registers an established connection with the actor: spawns its reader and writer.
/// Returns a signal that completes when the connection ends.
async fn run_connection(
    shared: &Shared,
    stream: Box<dyn PeerStream>,
    hello: Hello,
    dialled_by_me: bool,
) -> oneshot::Receiver<()> {
    static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.learn(&hello);
    let peer = hello.name.clone();
    let (mut read_half, write_half) = tokio::io::split(stream);
    let (writer_tx, writer_rx) = mpsc::channel::<Frame>(WRITER_QUEUE_FRAMES_MAX);
    let (ended_tx, ended_rx) = oneshot::channel();
    let writer = tokio::spawn(write_frames(
        shared.clone(),
        peer.clone(),
        writer_rx,
        write_half,
    ));
    let (actor, reader_peer) = (shared.actor.clone(), peer.clone());
    let reader = tokio::spawn(async move {
        loop {
            let heard = |_: usize| {
                let peer = reader_peer.clone();
                // A full queue means the actor is busy and will not time anyone out
                // meanwhile; dropping this one is harmless.
                let _ = actor.try_send(Msg::Event(Event::Heard { peer: peer.into() }));
            };
            match read_frame(&mut read_half, FRAME_BYTES_MAX, heard).await {
                Ok(frame) => {
                    let event = Event::Received {
                        peer: reader_peer.as_str().into(),
                        frame,
                    };
                    if actor.send(Msg::Event(event)).await.is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    tracing::info!(peer = reader_peer, reason, "link closed");
                    break;
                }
            }
        }
        let _ = actor
            .send(Msg::Down {
                peer: reader_peer,
                conn,
            })
            .await;
        let _ = ended_tx.send(());
    });
    let up = Msg::Up {
        peer,
        hello,
        writer: writer_tx,
        conn,
        dialled_by_me,
        tasks: vec![writer, reader],
    };
    let _ = shared.actor.send(up).await;
    ended_rx
}

/// Writes the frames queued for `peer`, each held back as the link's emulated
/// conditions say (never reordered: a frame leaves no earlier than the one before).
async fn write_frames(
    shared: Shared,
    peer: String,
    mut queue: mpsc::Receiver<Frame>,
    mut out: impl AsyncWrite + Unpin,
) {
    let mut random =
        SplitMix::new(shared.node.node_id().0 ^ shared.started.elapsed().as_nanos() as u64);
    let mut held: VecDeque<(tokio::time::Instant, Vec<u8>)> = VecDeque::new();
    loop {
        let next_due = held.front().map(|(due, _)| *due);
        tokio::select! {
            frame = queue.recv() => {
                let Some(frame) = frame else { return };
                let now = tokio::time::Instant::now();
                let emulation = shared.emulation(&peer);
                let due = if emulation.is_active() { now + emulation.hold(&mut random) } else { now };
                let due = held.back().map_or(due, |(last, _)| due.max(*last));
                held.push_back((due, frame.to_wire()));
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {}
        }
        let now = tokio::time::Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, bytes) = held.pop_front().expect("checked");
            metrics::counter!("chorus_replication_bytes_sent_total", "peer" => peer.clone())
                .increment(bytes.len() as u64);
            if out.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

/// Reads one frame of at most `frame_bytes_max`, piece by piece, calling `heard`
/// with the bytes read so far after each piece but the last. The buffer grows only as
/// bytes arrive, so a peer that announces a large frame and stalls holds no more
/// memory than it sent.
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    frame_bytes_max: usize,
    mut heard: impl FnMut(usize),
) -> Result<Frame, String> {
    let mut bytes = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        let length = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if length > PIECE_BYTES_MAX {
            return Err(format!(
                "a piece of {length} bytes exceeds the limit of {PIECE_BYTES_MAX}"
            ));
        }
        if bytes.len() + length > frame_bytes_max {
            return Err(format!(
                "a frame of more than {} bytes exceeds the limit of {frame_bytes_max}",
                bytes.len() + length
            ));
        }
        let read = (&mut *stream)
            .take(length as u64)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if read < length {
            return Err("the connection closed inside a frame".into());
        }
        metrics::counter!("chorus_replication_bytes_received_total").increment(length as u64 + 5);
        match header[4] {
            0 => return Frame::decode(&bytes).map_err(|e| e.to_string()),
            1 => heard(bytes.len()),
            other => return Err(format!("a piece has an unknown continuation byte {other}")),
        }
    }
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> Result<(), String> {
    stream
        .write_all(&frame.to_wire())
        .await
        .map_err(|e| format!("write failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{ConflictRecord, KeyState, NodeId, Outcome, Policy, Version};

    fn record_of(bytes: usize) -> ConflictRecord {
        let version = |n, c| Version {
            dot: chorus_core::Dot::new(NodeId(n), c),
            hlc: chorus_core::Hlc(c),
            value: Some(vec![b'7'; bytes]),
        };
        ConflictRecord::new(
            "c",
            "k",
            Policy::Lww,
            vec![version(1, 1), version(2, 1)],
            Outcome::Winner(chorus_core::Dot::new(NodeId(2), 1)),
        )
    }

    /// A frame several pieces long (a conflict record holding two 1.5 MiB versions)
    /// reads back whole; a stream cut inside it, a piece over the limit, a frame over
    /// the caller's limit and an unknown continuation byte are errors, not panics.
    #[tokio::test]
    async fn frames_travel_in_pieces_within_limits() {
        let frame = Frame::State {
            keys: vec![("c".into(), "k".into(), KeyState::new())],
            conflicts: vec![record_of(1_500_000)],
        };
        let wire = frame.to_wire();
        assert!(wire.len() > 2 * PIECE_BYTES_MAX, "three pieces");
        let mut heard = Vec::new();
        let mut input = wire.as_slice();
        let read = read_frame(&mut input, FRAME_BYTES_MAX, |n| heard.push(n));
        assert_eq!(read.await.unwrap(), frame);
        assert_eq!(
            heard,
            [PIECE_BYTES_MAX, 2 * PIECE_BYTES_MAX],
            "heard after each piece"
        );
        let cut = &wire[..wire.len() - 10];
        assert!(
            read_frame(&mut &cut[..], FRAME_BYTES_MAX, |_| {})
                .await
                .is_err()
        );
        let refused = read_frame(&mut wire.as_slice(), HELLO_BYTES_MAX, |_| {}).await;
        assert!(refused.unwrap_err().contains("exceeds the limit"));

        let mut oversize_piece = ((PIECE_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
        oversize_piece.push(0);
        let refused = read_frame(&mut oversize_piece.as_slice(), FRAME_BYTES_MAX, |_| {}).await;
        assert!(refused.unwrap_err().contains("piece"));

        let mut bad_flag = Frame::Ping.to_wire();
        bad_flag[4] = 7;
        assert!(
            read_frame(&mut bad_flag.as_slice(), FRAME_BYTES_MAX, |_| {})
                .await
                .is_err()
        );
    }
}
