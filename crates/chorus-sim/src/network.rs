//! The simulated network: connections dialled and accepted as the runtime does it
//! (one [`LinkKeeper`] per node decides what to dial, which of two connections to
//! keep, when a peer is unreachable and which links to close), frames carried with
//! delays in order per connection, partitions and frozen nodes that hold frames back.
//!
//! Each node's engine commands run here through the executor shared with the runtime
//! ([`effect_of`]); reads that scan the store answer inline, since simulated time
//! does not pass while reading.

use crate::{Running, Sim, TICK_MS, brief_command, brief_event};
use chorus_node::{NodeId, ReplicationStep};
use chorus_peer::replication::{Effect, applied_event, effect_of, hello};
use chorus_repl::{Command, Event, Frame};
use std::collections::VecDeque;

/// The runtime's dial backoff: from the first failure to the longest wait.
const DIAL_BACKOFF_MIN_MS: u64 = 100;
const DIAL_BACKOFF_MAX_MS: u64 = 2_000;

/// One connection: who dialled whom, and when the last frame each way arrives.
pub(crate) struct Session {
    dialer: usize,
    acceptor: usize,
    /// Time of the last frame scheduled from the dialer, and from the acceptor, so
    /// frames of one connection arrive in order.
    last_at: [u64; 2],
}

pub(crate) struct InFlight {
    session: u64,
    from: usize,
    to: usize,
    frame: Frame,
}

/// A node's dialer of one peer: when it may try next, and the wait after a failure.
pub(crate) struct Dialer {
    next_at: u64,
    backoff_ms: u64,
}

impl Dialer {
    pub(crate) fn now(now: u64) -> Dialer {
        Dialer {
            next_at: now,
            backoff_ms: DIAL_BACKOFF_MIN_MS,
        }
    }
}

pub(crate) fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// Whether frames between `a` and `b` are held back (and dials fail).
    pub(crate) fn cut(&self, a: usize, b: usize) -> bool {
        self.partitioned.contains(&pair(a, b))
    }

    /// Runs every dial that is due: a node dials the peers its keeper wants, unless
    /// linked; a dial succeeds when the peer runs, answers (not frozen), can be
    /// reached, and its cluster file names the dialer.
    pub(crate) fn dial_due(&mut self) {
        let now = self.now();
        for i in 0..self.nodes.len() {
            if self.frozen.contains(&i) {
                continue;
            }
            let Some(r) = self.nodes[i].running.as_ref() else {
                continue;
            };
            let due: Vec<String> = r
                .dialers
                .iter()
                .filter(|(peer, d)| d.next_at <= now && r.keeper.should_dial(peer))
                .map(|(peer, _)| peer.clone())
                .collect();
            for peer in due {
                self.dial(i, &peer);
            }
        }
    }

    fn dial(&mut self, i: usize, peer: &str) {
        let now = self.now();
        let j = self.peer_index(peer);
        let me = self.nodes[i].name.clone();
        let answers = !self.frozen.contains(&j)
            && !self.cut(i, j)
            && self.nodes[j]
                .running
                .as_ref()
                .is_some_and(|r| r.cluster.members.contains(&me));
        let Some(r) = self.nodes[i].running.as_mut() else {
            return;
        };
        let Some(dialer) = r.dialers.get_mut(peer) else {
            return;
        };
        if !answers {
            dialer.next_at = now + dialer.backoff_ms;
            dialer.backoff_ms = (dialer.backoff_ms * 2).min(DIAL_BACKOFF_MAX_MS);
            r.keeper.dial_failed(peer, now);
            self.follow(i);
            return;
        }
        // The next attempt comes once this link ends.
        *dialer = Dialer::now(now + DIAL_BACKOFF_MIN_MS);
        let id = self.next_session;
        self.next_session += 1;
        let session = Session {
            dialer: i,
            acceptor: j,
            last_at: [0, 0],
        };
        self.sessions.insert(id, session);
        self.connection_up(j, i, id, false);
        self.connection_up(i, j, id, true);
    }

    /// Node `i`'s end of connection `id` to `j` completed its handshake: its keeper
    /// decides whether it becomes the link.
    fn connection_up(&mut self, i: usize, j: usize, id: u64, dialled_by_me: bool) {
        if !self.sessions.contains_key(&id) {
            return; // The other end did not keep it.
        }
        let peer = self.nodes[j].name.clone();
        let Some(r) = self.nodes[i].running.as_mut() else {
            return;
        };
        let admission = r.keeper.up(&peer, dialled_by_me, id);
        if let Some(closing) = admission.close {
            self.close_session(closing);
        }
        if admission.linked {
            let theirs = hello(self.node(j), crate::CLUSTER, &peer).expect("reads work");
            let acked_seq = self
                .node(i)
                .replica()
                .peer_cursor(self.nodes[j].id)
                .expect("reads work");
            let connected = Event::Connected {
                peer: peer.into(),
                hello: theirs,
                acked_seq,
            };
            self.handle(i, connected);
        }
        self.follow(i);
    }

    /// Ends connection `id`; each running end whose link it was is told.
    pub(crate) fn close_session(&mut self, id: u64) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let now = self.now();
        for (me, other) in [
            (session.dialer, session.acceptor),
            (session.acceptor, session.dialer),
        ] {
            let peer = self.nodes[other].name.clone();
            let Some(r) = self.nodes[me].running.as_mut() else {
                continue;
            };
            if r.keeper.down(&peer, |h| *h == id, now).is_some() {
                self.handle(me, Event::Disconnected { peer: peer.into() });
                self.follow(me);
            }
        }
    }

    /// Ends every connection of node `i`.
    pub(crate) fn close_all(&mut self, i: usize) {
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.dialer == i || s.acceptor == i)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close_session(id);
        }
    }

    /// A random connection, to reset.
    pub(crate) fn any_session(&mut self) -> Option<u64> {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        (!ids.is_empty()).then(|| *self.rng.pick(&ids))
    }

    /// Node `i` plans its links again and follows the plan: dialers start and stop,
    /// and the links it retires close.
    pub(crate) fn follow(&mut self, i: usize) {
        let now = self.now();
        let Some(r) = self.nodes[i].running.as_mut() else {
            return;
        };
        let changes = r.keeper.follow(now, |_| false);
        for peer in changes.stop_dialing {
            r.dialers.remove(&peer);
        }
        let planned = r.keeper.status(now).planned;
        for peer in changes.dial {
            if !planned.contains(&peer) {
                self.report.healing_links += 1;
            }
            r.dialers.insert(peer, Dialer::now(now));
        }
        for (peer, id, _reason) in changes.closed {
            self.handle(i, Event::Disconnected { peer: peer.into() });
            self.close_session(id);
        }
    }

    pub(crate) fn send(&mut self, id: u64, from: usize, frame: Frame) {
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
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let (direction, to) = if from == session.dialer {
            (0, session.acceptor)
        } else {
            (1, session.dialer)
        };
        // In order per connection, unless a reorder fault lets this frame overtake.
        let at = if reorder {
            now + 1
        } else {
            (now + delay).max(session.last_at[direction])
        };
        session.last_at[direction] = session.last_at[direction].max(at);
        let copies = if duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let order = self.next_order;
            self.next_order += 1;
            let msg = InFlight {
                session: id,
                from,
                to,
                frame: frame.clone(),
            };
            self.queue.insert((at, order), msg);
        }
    }

    pub(crate) fn deliver(&mut self, key: (u64, u64), msg: InFlight) {
        if !self.sessions.contains_key(&msg.session) {
            return; // The connection it travelled on is gone.
        }
        if self.cut(msg.from, msg.to) || self.frozen.contains(&msg.to) {
            // Held back (as TCP would retransmit, or a stopped process would leave it
            // unread) until the link heals, the node thaws, or the connection ends;
            // the frames behind it on its connection wait with it, in their order.
            let retry_at = key.0 + TICK_MS;
            let behind: Vec<(u64, u64)> = self
                .queue
                .iter()
                .filter(|((at, _), m)| {
                    *at < retry_at && m.session == msg.session && m.from == msg.from
                })
                .map(|(k, _)| *k)
                .collect();
            for k in behind {
                let held = self.queue.remove(&k).expect("listed");
                self.queue.insert((retry_at, k.1), held);
            }
            self.queue.insert((retry_at, key.1), msg);
            return;
        }
        self.report.frames_delivered += 1;
        let peer = self.nodes[msg.from].name.clone();
        let received = Event::Received {
            peer: peer.into(),
            frame: msg.frame,
        };
        self.handle(msg.to, received);
    }

    /// Feeds an event to node `i`'s engine and executes the commands, including the
    /// events they produce, until none are left; follows the link plan again if the
    /// engine dropped a link.
    pub(crate) fn handle(&mut self, i: usize, event: Event) {
        let Some(linked_before) = self.nodes[i]
            .running
            .as_ref()
            .map(|r| r.keeper.linked().count())
        else {
            return;
        };
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            if self.trace {
                let (now, name) = (self.now(), &self.nodes[i].name);
                eprintln!("{now:>8} {name} <- {}", brief_event(&event));
            }
            let Some(r) = self.nodes[i].running.as_mut() else {
                return;
            };
            for command in r.engine.handle(event) {
                if self.trace {
                    let (now, name) = (self.now(), &self.nodes[i].name);
                    eprintln!("{now:>8} {name} -> {}", brief_command(&command));
                }
                self.execute(i, command, &mut events);
            }
        }
        let linked_after = self.nodes[i]
            .running
            .as_ref()
            .map(|r| r.keeper.linked().count());
        if linked_after.is_some_and(|n| n != linked_before) {
            self.follow(i);
        }
    }

    pub(crate) fn peer_index(&self, name: &str) -> usize {
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
                let link = self.running(i).keeper.link(&peer).copied();
                if let Some(id) = link {
                    self.send(id, i, frame);
                }
            }
            Effect::Disconnect { peer, .. } => {
                let now = self.now();
                let lost = self.running_mut(i).keeper.down(&peer, |_| true, now);
                if let Some(id) = lost {
                    events.push_back(Event::Disconnected { peer });
                    self.close_session(id);
                }
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

    pub(crate) fn running(&self, i: usize) -> &Running {
        self.nodes[i].running.as_ref().expect("node is running")
    }

    fn running_mut(&mut self, i: usize) -> &mut Running {
        self.nodes[i].running.as_mut().expect("node is running")
    }
}
