//! The simulated cluster file and its changes: nodes join and leave, links are added,
//! and each running node reloads the new file at its own moment (so for a while the
//! nodes disagree about the cluster, as they do in production). A node that starts
//! reads the file as it is then.

use crate::{Scheduled, Sim};
use chorus_repl::{Event, LinkPlan, Membership, Topology};

/// What the cluster file says: the members (in file order), the planned links and
/// the heal timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterFile {
    pub members: Vec<String>,
    pub topology: Topology,
    pub heal_after_ms: u64,
}

impl ClusterFile {
    pub fn plan(&self) -> LinkPlan {
        LinkPlan::new(&self.topology, &self.members, None).expect("the simulator keeps it valid")
    }

    pub fn membership(&self, me: &str) -> Membership {
        Membership {
            me: me.into(),
            neighbours: self
                .plan()
                .planned(me)
                .into_iter()
                .map(Into::into)
                .collect(),
            members: self.members.iter().map(Into::into).collect(),
        }
    }

    /// The planned links, as a custom graph (to add or remove links from).
    fn links(&self) -> Vec<(String, String)> {
        let links = self.topology.links(&self.members).expect("valid");
        links.into_iter().collect()
    }
}

/// The longest a running node takes to reload a changed cluster file.
const RELOAD_SPREAD_MS: u64 = 3_000;

impl Sim {
    /// Indices of the nodes the cluster file names, in file order.
    pub fn members(&self) -> Vec<usize> {
        let file = &self.cluster;
        file.members.iter().map(|m| self.peer_index(m)).collect()
    }

    /// Writes a new cluster file; every running member reloads it at its own moment.
    fn publish(&mut self, file: ClusterFile) {
        self.cluster = file;
        let now = self.now();
        for i in self.members() {
            let at = now + self.membership_rng.below(RELOAD_SPREAD_MS);
            self.scheduled.push((at, Scheduled::Reload(i)));
        }
    }

    /// Node `i` loads the cluster file (`chorus reload`), unless it runs it already;
    /// a node the file no longer names is left alone (it is being stopped).
    pub(crate) fn reload(&mut self, i: usize) {
        let file = self.cluster.clone();
        let name = self.nodes[i].name.clone();
        let Some(r) = self.nodes[i].running.as_mut() else {
            return;
        };
        if r.cluster == file || !file.members.contains(&name) {
            return;
        }
        for peer in r.keeper.reconfigure(file.plan(), file.heal_after_ms) {
            r.dialers.remove(&peer);
        }
        let membership = file.membership(&name);
        r.cluster = file;
        self.handle(i, Event::Reconfigured { membership });
        self.follow(i);
    }

    /// Sometimes the cluster changes: the spare node joins, a drained member leaves,
    /// or a link is added. Drawn from streams of their own.
    pub(crate) fn maybe_change_cluster(&mut self) {
        if self.topology_rng.chance(1) {
            self.add_link();
        }
        if self.membership_rng.chance(1) {
            match self.spare.take() {
                Some(spare) if self.membership_rng.chance(50) => self.join(spare),
                spare => {
                    self.spare = spare;
                    self.leave();
                }
            }
        }
    }

    /// A planned link between two members not linked yet (the topology becomes a
    /// custom graph).
    fn add_link(&mut self) {
        let members = self.cluster.members.clone();
        let n = members.len() as u64;
        let (a, b) = (
            members[self.topology_rng.below(n) as usize].clone(),
            members[self.topology_rng.below(n) as usize].clone(),
        );
        let mut links = self.cluster.links();
        let link = (a.clone().min(b.clone()), a.clone().max(b.clone()));
        if a == b || links.contains(&link) {
            return;
        }
        links.push(link);
        let file = ClusterFile {
            topology: Topology::Custom { links },
            ..self.cluster.clone()
        };
        self.publish(file);
        self.fault("link added");
    }

    /// The spare node joins with an empty store: it starts under the new file, and
    /// the others take it in as they reload.
    fn join(&mut self, spare: usize) {
        let mut file = self.cluster.clone();
        let name = self.nodes[spare].name.clone();
        if let Topology::Custom { links } = &mut file.topology {
            let to = self.membership_rng.pick(&file.members).clone();
            links.push((to, name.clone()));
        }
        file.members.push(name);
        self.publish(file);
        self.start(spare);
        self.fault("node joined");
    }

    /// A member leaves: one that is running, not a star's hub, and drained (another
    /// running member has applied everything it wrote). It stops, and the others
    /// drop it as they reload. At least three members stay.
    fn leave(&mut self) {
        if self.cluster.members.len() <= 3 {
            return;
        }
        let candidates: Vec<usize> = self
            .members()
            .into_iter()
            .filter(|&i| {
                let hub = matches!(&self.cluster.topology, Topology::Star { hub } if *hub == self.nodes[i].name);
                !hub && !self.frozen.contains(&i) && self.drained(i)
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let leaving = *self.membership_rng.pick(&candidates);
        let name = self.nodes[leaving].name.clone();
        let mut file = self.cluster.clone();
        file.members.retain(|m| *m != name);
        if let Topology::Custom { links } = &mut file.topology {
            let neighbours: Vec<String> = self.cluster.plan().planned(&name).into_iter().collect();
            links.retain(|(a, b)| *a != name && *b != name);
            // Keep the graph connected through the leaver's neighbours.
            let remaining = Topology::Custom {
                links: links.clone(),
            };
            if remaining.links(&file.members).is_err() {
                links.extend(neighbours.windows(2).map(|w| (w[0].clone(), w[1].clone())));
            }
        }
        self.nodes[leaving].running = None;
        self.close_all(leaving);
        self.publish(file);
        self.fault("node left");
    }

    /// Whether another running member has applied everything node `i` has: its own
    /// writes, and those of others it holds (perhaps of a member that left before
    /// it, drained into it alone).
    fn drained(&self, i: usize) -> bool {
        let Some(r) = self.nodes[i].running.as_ref() else {
            return false;
        };
        let held = r.node.replica().position().expect("reads work").applied;
        self.members().into_iter().any(|j| {
            j != i
                && self.nodes[j].running.as_ref().is_some_and(|o| {
                    let applied = o.node.replica().position().expect("reads work").applied;
                    applied.dominates(&held)
                })
        })
    }

    /// Starts every member's dialers anew under the current file (at the end of a
    /// run: every scheduled reload happens now).
    pub(crate) fn reload_all(&mut self) {
        for i in self.members() {
            self.reload(i);
        }
    }
}
