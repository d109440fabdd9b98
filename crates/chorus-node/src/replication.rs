//! The replication runtime: sockets, tasks and timers around `chorus_repl::Engine`.
//!
//! ```text
//!  listener ─┐                       ┌─▶ writer task ──▶ TCP (length-prefixed frames)
//!  dialers ──┼─ handshake ─▶ actor ──┤
//!  readers ──┘   (Hello)     (engine)└─▶ node: read_log / apply_remote / replicate(step)
//!  ticker, commit watcher ─────▶ actor
//! ```
//!
//! One actor task owns the engine: every event goes through its channel, and it
//! executes the commands. A link is one TCP connection per pair of neighbours,
//! dialled by the node whose name sorts first; both directions share it. Dialers
//! retry with backoff, so a node serves its API at once and links come up as peers
//! do.
//!
//! Framing: `[length: u32 big-endian] [frame bytes]`, a length above
//! `FRAME_BYTES_MAX` ends the connection (corrupt or hostile stream). A frame that
//! does not decode ends the connection too; the peer resends from the acknowledged
//! cursor on the next session, so nothing is lost.

use crate::cluster::ClusterConfig;
use crate::{Node, NodeId, ReadError, ReplicationStep};
use chorus_core::PhysicalClock;
pub use chorus_repl::EngineLimits;
use chorus_repl::frame::FRAME_BYTES_MAX;
use chorus_repl::{Command, Engine, Event, Frame, Hello, Membership, PROTOCOL_VERSION};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes of entries read from the log for one frame (at least one entry is sent).
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Frames queued for one connection's writer; the engine's window keeps this small.
const WRITER_QUEUE_MAX: usize = 256;
/// Events queued for the actor; readers wait when it is full.
const ACTOR_QUEUE_MAX: usize = 1024;
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Engine timer period.
const TICK_PERIOD: Duration = Duration::from_millis(200);
/// How often the op log is measured against the byte and age bounds (a scan of the
/// entries within them).
const RETENTION_CHECK_PERIOD: Duration = Duration::from_secs(10);
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);

enum Msg {
    Event(Event),
    Up {
        peer: String,
        hello: Hello,
        writer: mpsc::Sender<Frame>,
        conn: u64,
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

/// A running replication runtime; dropping it stops every task.
pub struct Replication {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Replication {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Shared {
    node: Node,
    cluster: Arc<ClusterConfig>,
    me: String,
    actor: mpsc::Sender<Msg>,
    started: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn hello(&self) -> Result<Hello, String> {
        hello(&self.node, &self.cluster.name, &self.me).map_err(|e| e.to_string())
    }

    /// Why a peer's hello is refused, if it is.
    fn check(&self, hello: &Hello) -> Result<(), String> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "speaks protocol {}, this node speaks {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        if hello.cluster != self.cluster.name {
            return Err(format!(
                "belongs to cluster {:?}, this node to {:?}",
                hello.cluster, self.cluster.name
            ));
        }
        if hello.name == self.me || self.cluster.node(&hello.name).is_none() {
            return Err(format!(
                "{:?} is not another node of cluster {:?}",
                hello.name, self.cluster.name
            ));
        }
        Ok(())
    }

    fn learn(&self, hello: &Hello) {
        self.node.learn_name(hello.node_id, &hello.name);
        for (id, name) in &hello.names {
            self.node.learn_name(*id, name);
        }
    }
}

/// The handshake `node` introduces itself with, as member `me` of `cluster`.
pub fn hello(node: &Node, cluster: &str, me: &str) -> Result<Hello, crate::ReadError> {
    let applied = node.position()?.applied;
    Ok(Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        name: me.to_owned(),
        node_id: node.node_id(),
        applied,
        names: node.known_names(),
    })
}

/// Starts replicating `node` as cluster member `me`: listens on its peer address,
/// dials the neighbours it should dial, and streams entries both ways.
pub async fn start(
    node: Node,
    cluster: ClusterConfig,
    me: &str,
    limits: EngineLimits,
) -> std::io::Result<Replication> {
    let address = cluster
        .node(me)
        .ok_or_else(|| std::io::Error::other(format!("{me:?} is not a node of the cluster file")))?
        .peer
        .clone();
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot listen for peers on {address}: {e}")))?;
    let (actor_tx, actor_rx) = mpsc::channel(ACTOR_QUEUE_MAX);
    let shared = Shared {
        node,
        cluster: Arc::new(cluster),
        me: me.to_owned(),
        actor: actor_tx,
        started: Instant::now(),
    };
    let neighbours = shared.cluster.neighbours(me);
    let position = shared.node.position().map_err(std::io::Error::other)?;
    let membership = Membership {
        me: me.to_owned(),
        neighbours: neighbours.clone(),
        members: shared.cluster.names(),
    };
    let limits_for_retention = limits.clone();
    let engine = Engine::new(membership, position, shared.now_ms(), limits);
    let mut tasks = vec![
        tokio::spawn(run_actor(shared.clone(), engine, actor_rx)),
        tokio::spawn(accept(shared.clone(), listener)),
        tokio::spawn(tick(shared.clone())),
        tokio::spawn(measure_retention(shared.clone(), limits_for_retention)),
        tokio::spawn(watch_commits(shared.clone())),
    ];
    for peer in neighbours.into_iter().filter(|n| n.as_str() > me) {
        tasks.push(tokio::spawn(dial(shared.clone(), peer)));
    }
    tracing::info!(node = me, peer_address = %address, "replication started");
    Ok(Replication { tasks })
}

async fn run_actor(shared: Shared, mut engine: Engine, mut inbox: mpsc::Receiver<Msg>) {
    let mut links: HashMap<String, Link> = HashMap::new();
    while let Some(msg) = inbox.recv().await {
        let mut events = VecDeque::new();
        match msg {
            Msg::Event(event) => events.push_back(event),
            Msg::Up {
                peer,
                hello,
                writer,
                conn,
                tasks,
            } => {
                let node_id = hello.node_id;
                let acked_seq = shared.node.peer_cursor(node_id).unwrap_or_else(|error| {
                    tracing::error!(%error, peer, "cannot read the peer's cursor; resending from the start");
                    0
                });
                tracing::info!(peer, acked_seq, "peer connected");
                links.insert(
                    peer.clone(),
                    Link {
                        conn,
                        node_id,
                        writer,
                        tasks,
                    },
                );
                events.push_back(Event::Connected {
                    peer,
                    hello,
                    acked_seq,
                });
            }
            Msg::Down { peer, conn } => {
                if links.get(&peer).is_some_and(|l| l.conn == conn) {
                    links.remove(&peer);
                    tracing::info!(peer, "peer disconnected");
                    events.push_back(Event::Disconnected { peer });
                }
            }
            Msg::Drop { peer, reason } => {
                events.extend(engine_disconnect(&mut links, peer, &reason));
            }
        }
        while let Some(event) = events.pop_front() {
            tracing::trace!(?event, "replication event");
            for command in engine.handle(event) {
                execute(&shared, &mut links, command, &mut events);
            }
        }
        shared.node.set_peer_status(engine.peers());
    }
}

/// What [`answer_read`] did with a command.
pub enum ReadAnswer {
    /// It only read the node: here is the event that answers it.
    Answered(Result<Event, ReadError>),
    /// It is not a read: execute it.
    NotARead(Command),
}

/// Answers a command that only reads the node (op log, bucket hashes, key states)
/// with its event; hands any other command back. Shared with the simulator.
pub fn answer_read(node: &Node, command: Command) -> ReadAnswer {
    ReadAnswer::Answered(match command {
        Command::ReadLog {
            peer,
            session,
            after_seq,
            max_entries,
        } => node
            .read_log(after_seq, max_entries, BATCH_BYTES_MAX)
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
            node.bucket_hashes().map(|b| Event::BucketsRead {
                peer,
                session,
                hashes: b.hashes,
                applied: b.applied,
                through_seq: b.through_seq,
            })
        }
        Command::CompareBuckets {
            peer,
            session,
            hashes,
        } => node
            .wanted_buckets(&hashes)
            .map(|wanted| Event::BucketsCompared {
                peer,
                session,
                wanted,
            }),
        Command::ReadState {
            peer,
            session,
            after,
            max_keys,
            buckets,
        } => node
            .read_state(after, max_keys, &buckets)
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

fn execute(
    shared: &Shared,
    links: &mut HashMap<String, Link>,
    command: Command,
    events: &mut VecDeque<Event>,
) {
    tracing::trace!(?command, "replication command");
    let command = match answer_read(&shared.node, command) {
        ReadAnswer::Answered(Ok(event)) => return events.push_back(event),
        ReadAnswer::Answered(Err(error)) => {
            return tracing::error!(%error, "cannot read for replication");
        }
        ReadAnswer::NotARead(command) => command,
    };
    match command {
        Command::Send { peer, frame } => {
            let Some(link) = links.get(&peer) else { return };
            if link.writer.try_send(frame).is_err() {
                events.extend(engine_disconnect(links, peer, "the peer is not reading"));
            }
        }
        Command::Apply {
            peer,
            session,
            entries,
        } => {
            let (node, actor) = (shared.node.clone(), shared.actor.clone());
            tokio::spawn(async move {
                match node.apply_remote(entries).await {
                    Ok(outcome) => {
                        let waiting = outcome.waiting.iter().map(|e| e.dot()).collect();
                        let event = Event::Applied {
                            peer,
                            session,
                            applied: outcome.applied,
                            waiting,
                        };
                        let _ = actor.send(Msg::Event(event)).await;
                    }
                    Err(error) => {
                        // Not acknowledged: the peer sends these again next session.
                        let reason = format!("cannot apply its entries: {error}");
                        let _ = actor.send(Msg::Drop { peer, reason }).await;
                    }
                }
            });
        }
        Command::SaveCursor { peer, seq } => {
            let Some(node_id) = links.get(&peer).map(|l| l.node_id) else {
                return;
            };
            replicate_in_background(shared, ReplicationStep::SaveCursor { peer: node_id, seq });
        }
        Command::MergeState {
            peer,
            session,
            keys,
            conflicts,
        } => {
            let step = ReplicationStep::MergeState { keys, conflicts };
            replicate_then(shared, peer.clone(), step, move |_| Event::StateMerged {
                peer,
                session,
            });
        }
        Command::AdoptState {
            peer,
            session,
            applied,
        } => {
            tracing::info!(peer, "state transfer complete");
            metrics::counter!("chorus_state_transfers_total").increment(1);
            let step = ReplicationStep::AdoptState { applied };
            replicate_then(shared, peer.clone(), step, move |node| {
                let applied = node.position().map(|p| p.applied).unwrap_or_default();
                Event::StateAdopted {
                    peer,
                    session,
                    applied,
                }
            });
        }
        Command::CollectTombstones { stable } => {
            replicate_in_background(shared, ReplicationStep::CollectTombstones { stable })
        }
        Command::TruncateLog { before_seq } => {
            replicate_in_background(shared, ReplicationStep::TruncateLog { before_seq })
        }
        Command::Disconnect { peer, reason } => {
            events.extend(engine_disconnect(links, peer, &reason))
        }
        Command::ReadLog { .. }
        | Command::ReadBuckets { .. }
        | Command::CompareBuckets { .. }
        | Command::ReadState { .. } => unreachable!("reads are answered by answer_read"),
    }
}

/// Commits `step` without holding up the actor; nothing waits for it (a failure is
/// logged, and the engine asks again later: cursors and collections are idempotent).
fn replicate_in_background(shared: &Shared, step: ReplicationStep) {
    let node = shared.node.clone();
    tokio::spawn(async move {
        if let Err(error) = node.replicate(step.clone()).await {
            tracing::warn!(%error, ?step, "cannot commit a replication step");
        }
    });
}

/// Commits `step`, then tells the engine `then(node)`; a failure drops the link (the
/// peer starts over next session).
fn replicate_then(
    shared: &Shared,
    peer: String,
    step: ReplicationStep,
    then: impl FnOnce(&Node) -> Event + Send + 'static,
) {
    let (node, actor) = (shared.node.clone(), shared.actor.clone());
    tokio::spawn(async move {
        let msg = match node.replicate(step).await {
            Ok(()) => Msg::Event(then(&node)),
            Err(error) => Msg::Drop {
                peer,
                reason: format!("cannot commit a state transfer: {error}"),
            },
        };
        let _ = actor.send(msg).await;
    });
}

/// Drops the link to `peer`; returns the event that tells the engine, if it was up.
fn engine_disconnect(
    links: &mut HashMap<String, Link>,
    peer: String,
    reason: &str,
) -> Option<Event> {
    tracing::warn!(peer, reason, "dropping the link");
    links.remove(&peer).map(|_| Event::Disconnected { peer })
}

/// Every `RETENTION_CHECK_PERIOD`, finds the op-log entries beyond the byte and age
/// bounds and tells the engine, which collects them.
async fn measure_retention(shared: Shared, limits: EngineLimits) {
    let mut interval = tokio::time::interval(RETENTION_CHECK_PERIOD);
    loop {
        interval.tick().await;
        let now_ms = chorus_core::SystemClock.now_ms();
        match shared
            .node
            .retention_limit(limits.retention_bytes, limits.retention_age_ms, now_ms)
        {
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
        let Ok(position) = shared.node.position() else {
            continue;
        };
        let event = Event::Committed { position };
        if shared.actor.send(Msg::Event(event)).await.is_err() {
            return;
        }
    }
}

async fn accept(shared: Shared, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(reason) = inbound(&shared, stream).await {
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

async fn inbound(shared: &Shared, mut stream: TcpStream) -> Result<(), String> {
    let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(other)) => return Err(format!("expected a hello, got {other:?}")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello within the handshake timeout".into()),
    };
    if let Err(reason) = shared.check(&theirs) {
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
    run_connection(shared, stream, theirs).await;
    Ok(())
}

async fn dial(shared: Shared, peer: String) {
    let address = shared
        .cluster
        .node(&peer)
        .expect("a cluster node")
        .peer
        .clone();
    let mut backoff = DIAL_BACKOFF_MIN;
    loop {
        match outbound(&shared, &address).await {
            Ok(ended) => {
                backoff = DIAL_BACKOFF_MIN;
                let _ = ended.await;
            }
            Err(reason) => tracing::debug!(peer, reason, "cannot link to peer yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
    }
}

/// Dials, shakes hands, and returns a signal that completes when the link ends.
async fn outbound(
    shared: &Shared,
    address: &str,
) -> Result<tokio::sync::oneshot::Receiver<()>, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    write_frame(&mut stream, &Frame::Hello(shared.hello()?)).await?;
    let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(Frame::Refused { reason })) => {
            tracing::warn!(address, reason, "peer refused this node");
            return Err(reason);
        }
        Ok(Ok(other)) => return Err(format!("expected a hello, got {other:?}")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello within the handshake timeout".into()),
    };
    if let Err(reason) = shared.check(&theirs) {
        tracing::warn!(address, reason, "refused the peer we dialled");
        return Err(reason);
    }
    Ok(run_connection(shared, stream, theirs).await)
}

/// Registers an established connection with the actor: spawns its reader and writer.
/// Returns a signal that completes when the connection ends.
async fn run_connection(
    shared: &Shared,
    stream: TcpStream,
    hello: Hello,
) -> tokio::sync::oneshot::Receiver<()> {
    static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.learn(&hello);
    let peer = hello.name.clone();
    let _ = stream.set_nodelay(true);
    let (mut read_half, mut write_half) = stream.into_split();
    let (writer_tx, mut writer_rx) = mpsc::channel::<Frame>(WRITER_QUEUE_MAX);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let writer_peer = peer.clone();
    let writer = tokio::spawn(async move {
        while let Some(frame) = writer_rx.recv().await {
            let bytes = framed(&frame);
            metrics::counter!("chorus_replication_bytes_sent_total", "peer" => writer_peer.clone())
                .increment(bytes.len() as u64);
            if write_half.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let (actor, reader_peer) = (shared.actor.clone(), peer.clone());
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut read_half).await {
                Ok(frame) => {
                    let event = Event::Received {
                        peer: reader_peer.clone(),
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
        tasks: vec![writer, reader],
    };
    let _ = shared.actor.send(up).await;
    ended_rx
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<Frame, String> {
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(format!(
            "frame of {length} bytes exceeds the limit of {FRAME_BYTES_MAX}"
        ));
    }
    let mut bytes = vec![0u8; length];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    metrics::counter!("chorus_replication_bytes_received_total").increment(length as u64 + 4);
    Frame::decode(&bytes).map_err(|e| e.to_string())
}

/// A frame with its length prefix.
fn framed(frame: &Frame) -> Vec<u8> {
    let bytes = frame.encode();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

async fn write_frame(stream: &mut TcpStream, frame: &Frame) -> Result<(), String> {
    stream
        .write_all(&framed(frame))
        .await
        .map_err(|e| format!("write failed: {e}"))
}
