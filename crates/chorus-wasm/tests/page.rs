//! A page's replica against a node's copy of the text (`chorus_text` as the node
//! uses it: positions in the version its context names, plus the write's own
//! earlier edits): what the page sends lands where the page showed it, with others
//! writing meanwhile and the page typing while a batch is in flight.

use chorus_text::{Text, encode_ops};
use chorus_wasm::Replica;
use serde_json::Value;

const NODE: u64 = 7;

/// A node's copy: the text, and how many writes it took.
struct Node {
    text: Text,
    writes: u64,
}

impl Node {
    fn new(text: &str) -> Node {
        let mut node = Node {
            text: Text::new(),
            writes: 0,
        };
        node.insert(0, text);
        node
    }

    /// Takes a batch (JSON operations) made against the page's context (`seen`
    /// writes) as its next write; answers the operations the page receives.
    fn take(&mut self, batch: &str, seen: u64) -> Vec<u8> {
        self.writes += 1;
        encoded(&take_batch(
            &mut self.text,
            batch,
            |_| seen,
            NODE,
            self.writes,
        ))
    }

    /// Another client's insert, as the node's next write.
    fn insert(&mut self, pos: u64, text: &str) -> Vec<u8> {
        self.writes += 1;
        let op = self.text.insert(NODE, pos, text);
        self.text.stamp(NODE, self.writes);
        encoded(&[op])
    }
}

/// A leader takes a page's batch (JSON operations) as `agent`'s write `counter`, made
/// against the context `seen` names (as `Node::update` does); its operations.
fn take_batch(
    text: &mut Text,
    batch: &str,
    seen: impl Fn(u64) -> u64,
    agent: u64,
    counter: u64,
) -> Vec<chorus_text::Op> {
    let mut ops = Vec::new();
    for op in serde_json::from_str::<Vec<Value>>(batch).unwrap() {
        let version = text.version_at(&seen, Some((agent, counter)));
        let pos = op["pos"].as_u64().unwrap();
        match op["op"].as_str().unwrap() {
            "text.insert" => {
                let inserted = op["text"].as_str().unwrap();
                ops.push(text.insert_at(agent, &version, pos, inserted).unwrap());
            }
            _ => {
                let len = op["len"].as_u64().unwrap();
                ops.extend(text.delete_at(agent, &version, pos, len).unwrap());
            }
        }
        text.stamp(agent, counter);
    }
    ops
}

fn encoded(ops: &[chorus_text::Op]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_ops(ops, &mut bytes);
    bytes
}

/// Goal: the page's edits land where the page showed them. Method: the page types
/// and its batch goes up; another client types at the start meanwhile, and the page
/// types and deletes while the batch is in flight; the node takes each batch against
/// the read the page had; after each, page and node show the same text.
#[test]
fn what_a_page_types_lands_where_it_showed_it() {
    let mut node = Node::new("hello world");
    let mut page = Replica::load(&node.text.encode(), NODE).unwrap();
    page.insert(5, "X");
    let batch = page.take_batch("/text").unwrap();
    let sent_at = node.writes;
    assert_eq!(page.take_batch("/text"), None, "one batch in flight");
    page.apply(&node.insert(0, "A")).unwrap();
    assert_eq!(page.content(), "AhelloX world");
    page.insert(13, "Y");
    page.delete(8, 3);
    assert_eq!(page.content(), "AhelloX ldY");
    page.apply(&node.take(&batch, sent_at)).unwrap();
    page.settle();
    assert_eq!(node.text.to_string(), "AhelloX world");
    assert_eq!(page.content(), "AhelloX ldY");
    let batch = page.take_batch("/text").unwrap();
    let seen = node.writes;
    page.apply(&node.take(&batch, seen)).unwrap();
    page.settle();
    assert_eq!(node.text.to_string(), "AhelloX ldY");
    assert_eq!(page.content(), node.text.to_string());
    assert_eq!(page.take_batch("/text"), None);
}

/// A cursor anchored to the character before it stays there when text comes in
/// before it.
#[test]
fn a_cursor_stays_on_its_character() {
    let mut node = Node::new("abcdef");
    let mut page = Replica::load(&node.text.encode(), NODE).unwrap();
    let anchor = page.anchor(3); // After "c".
    page.apply(&node.insert(0, "123")).unwrap();
    assert_eq!(page.anchored(anchor), 6);
    assert_eq!(page.anchored(page.anchor(0)), 0);
}

/// The agent (node id) of leader `n`: far apart, as random node ids are (a page's
/// tentative items take the id just below its node's).
fn agent(n: usize) -> u64 {
    (n as u64 + 1) << 40
}

fn node_of(agent: u64) -> usize {
    (agent >> 40) as usize - 1
}

/// Two leaders and a page on each; every message in flight until the test (or a
/// seed) delivers it.
struct Cluster {
    leaders: [Leader; 2],
    pages: [Page; 2],
    /// Writes each leader took and has not yet sent to the other.
    links: [Vec<Write>; 2],
}

/// A write a leader took: its node (0 or 1, agent [`agent`]), number, operations.
#[derive(Clone)]
struct Write {
    node: usize,
    counter: u64,
    ops: Vec<chorus_text::Op>,
}

struct Leader {
    text: Text,
    /// Writes applied, per node: the key's context.
    seen: [u64; 2],
}

struct Page {
    replica: Replica,
    node: usize,
    /// The context of the last change applied.
    context: [u64; 2],
    /// The batch in flight and the context it names; the write it became.
    inflight: Option<(String, [u64; 2])>,
    taken: Option<u64>,
    /// Changes from its leader not yet received.
    inbox: Vec<Write>,
    /// Where its cursor is (kept on its character as changes come, as the page does).
    cursor: u64,
}

impl Cluster {
    fn new(start: &str) -> Cluster {
        let mut text = Text::new();
        text.insert(agent(0), 0, start);
        text.stamp(agent(0), 1);
        let leader = || Leader {
            text: text.clone(),
            seen: [1, 0],
        };
        let page = |node: usize| Page {
            replica: Replica::load(&text.encode(), agent(node)).unwrap(),
            node,
            context: [1, 0],
            inflight: None,
            taken: None,
            inbox: Vec::new(),
            cursor: 0,
        };
        Cluster {
            leaders: [leader(), leader()],
            pages: [page(0), page(1)],
            links: [Vec::new(), Vec::new()],
        }
    }

    /// Page `p` types `c` at its cursor, and sends a batch if none is in flight.
    fn type_char(&mut self, p: usize, c: char) {
        let page = &mut self.pages[p];
        page.replica.insert(page.cursor, &c.to_string());
        page.cursor += 1;
        self.send(p);
    }

    fn send(&mut self, p: usize) {
        let page = &mut self.pages[p];
        if page.inflight.is_none()
            && let Some(batch) = page.replica.take_batch("/text")
        {
            page.inflight = Some((batch, page.context));
        }
    }

    /// Page `p`'s leader takes its batch in flight (as `Node::update` would).
    fn take(&mut self, p: usize) {
        let (node, agent) = (self.pages[p].node, agent(self.pages[p].node));
        let Some((batch, context)) = self.pages[p].inflight.clone() else {
            return;
        };
        if self.pages[p].taken.is_some() {
            return;
        }
        let leader = &mut self.leaders[node];
        let counter = leader.seen[node] + 1;
        let ops = take_batch(
            &mut leader.text,
            &batch,
            |a| context[node_of(a)],
            agent,
            counter,
        );
        leader.seen[node] = counter;
        let write = Write { node, counter, ops };
        self.links[node].push(write.clone());
        self.pages[p].inbox.push(write);
        self.pages[p].taken = Some(counter);
    }

    /// Leader `n` sends its oldest write not yet sent to the other, whose page hears
    /// of it.
    fn replicate(&mut self, n: usize) {
        if self.links[n].is_empty() {
            return;
        }
        let write = self.links[n].remove(0);
        let other = &mut self.leaders[1 - n];
        for op in &write.ops {
            other.text.apply(op).unwrap();
        }
        other.text.stamp(agent(n), write.counter);
        other.seen[n] = write.counter;
        self.pages[1 - n].inbox.push(write);
    }

    /// Page `p` receives the next change from its leader (its own batch's settles
    /// it), its cursor kept on its character.
    fn receive(&mut self, p: usize) {
        let page = &mut self.pages[p];
        if page.inbox.is_empty() {
            return;
        }
        let write = page.inbox.remove(0);
        let anchor = page.replica.anchor(page.cursor);
        page.replica.apply(&encoded(&write.ops)).unwrap();
        page.context[write.node] = write.counter;
        if write.node == page.node && page.taken == Some(write.counter) {
            page.replica.settle();
            page.inflight = None;
            page.taken = None;
        }
        page.cursor = page.replica.anchored(anchor);
        self.send(p);
    }

    /// Delivers everything, in turn, until nothing is in flight.
    fn settle_all(&mut self) {
        for _ in 0..1000 {
            for p in 0..2 {
                self.take(p);
                self.receive(p);
            }
            for n in 0..2 {
                self.replicate(n);
            }
        }
    }
}

/// Goal: words typed at one place on two leaders at once stay whole, whatever the
/// order messages arrive in. Method: both pages type a word, a character at a time,
/// at the same place; between keystrokes, a seed picks which messages go (a leader
/// takes a batch, a change reaches a page, a write reaches the other leader);
/// in the end every page and leader shows the same text, each word in it once.
#[test]
fn words_typed_at_one_place_on_two_leaders_stay_whole() {
    for seed in 0..300u64 {
        let mut cluster = Cluster::new("Start. End.");
        let words = [" alpha beta", " one two"];
        for page in &mut cluster.pages {
            page.cursor = 6;
        }
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut typed = [0usize, 0];
        while typed[0] < words[0].len() || typed[1] < words[1].len() {
            let p = (next() % 2) as usize;
            if let Some(c) = words[p].chars().nth(typed[p]) {
                cluster.type_char(p, c);
                typed[p] += 1;
            }
            for _ in 0..(next() % 4) {
                match next() % 3 {
                    0 => cluster.take((next() % 2) as usize),
                    1 => cluster.receive((next() % 2) as usize),
                    _ => cluster.replicate((next() % 2) as usize),
                }
            }
        }
        cluster.settle_all();
        let text = cluster.leaders[0].text.to_string();
        assert_eq!(cluster.leaders[1].text.to_string(), text, "seed {seed}");
        for page in &cluster.pages {
            assert_eq!(page.replica.content(), text, "seed {seed}");
        }
        for word in words {
            assert_eq!(
                text.matches(word).count(),
                1,
                "seed {seed}: {word:?} in {text:?}"
            );
        }
    }
}
