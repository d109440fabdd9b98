//! Shared helpers of the multi-process tests: start real `chorus serve` processes,
//! talk HTTP to them, and wait on conditions with deadlines (never fixed sleeps).

#![allow(dead_code)] // Each test binary uses a different subset.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHORUS: &str = env!("CARGO_BIN_EXE_chorus");

/// A running `chorus serve` process. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl NodeProcess {
    /// Starts a node on a free port with its store in `data`, and waits until it
    /// has printed the address it serves.
    pub fn start(data: &Path, extra_args: &[&str]) -> NodeProcess {
        NodeProcess::start_at(data, "127.0.0.1:0", extra_args)
    }

    /// Starts a node serving HTTP on `http`.
    pub fn start_at(data: &Path, http: &str, extra_args: &[&str]) -> NodeProcess {
        let mut child = Command::new(CHORUS)
            .args(["serve", "--http", http, "--data"])
            .arg(data)
            .args(extra_args)
            .env("CHORUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning chorus serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the serve banner");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in banner {line:?}"))
            .to_owned();
        NodeProcess {
            child,
            url,
            data: data.to_owned(),
        }
    }

    /// Kills the process with SIGKILL: no clean shutdown, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Sends one request; `headers` are extra `(name, value)` pairs.
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Reply, ureq::Error> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body.unwrap_or_default().to_vec()).unwrap();
    let mut response = agent().run(request)?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Reply { status, body, text })
}

pub fn call(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Reply {
    request(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn get(url: &str) -> Reply {
    call("GET", url, None, &[])
}

pub fn put(url: &str, body: &str) -> Reply {
    call("PUT", url, Some(body.as_bytes()), &[])
}

pub fn put_with_context(url: &str, body: &str, context: &str) -> Reply {
    call(
        "PUT",
        url,
        Some(body.as_bytes()),
        &[("Chorus-Context", context)],
    )
}

/// The values of every version a read of `collection/key` shows.
pub fn versions(url: &str, collection: &str, key: &str) -> Vec<Value> {
    get(&format!("{url}/v1/docs/{collection}/{key}")).body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].clone())
        .collect()
}

pub fn digest(base: &str) -> String {
    get(&format!("{base}/v1/digest")).body["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until `condition` holds, checking every 20 ms, or panics after `deadline`
/// naming `what`.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `env_var` when set, else from the clock; prints the seed.
    pub fn from_env(env_var: &str) -> Rng {
        let seed = std::env::var(env_var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed: {seed} (replay with {env_var}={seed})");
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A cluster of real `chorus serve` processes on loopback, their peers speaking
/// mutual TLS with certificates from `chorus cluster certs` (plain TCP with
/// [`Cluster::start_plain`], for tests that speak the peer protocol by hand).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    /// The cluster file's lines before `[[nodes]]` (topology and settings).
    pub header: String,
    /// The `[[nodes]]` entry of each node, by name.
    pub entries: Vec<(String, String)>,
    pub names: Vec<String>,
    pub nodes: Vec<NodeProcess>,
    /// Extra `chorus serve` arguments for every node.
    pub args: Vec<String>,
    /// The certificates folder, with TLS on.
    pub certs: Option<PathBuf>,
}

/// A port that is free now, for a node to bind a moment later (and again after a
/// restart). Taken below the kernel's ephemeral range (32768 and up here), so that
/// no outgoing connection of a test can take it meanwhile; each test process starts
/// at its own offset.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 7919) % 10_000;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000 + 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

impl Cluster {
    /// Starts `count` nodes named n0, n1, … with the given topology lines
    /// (e.g. `topology = "ring"`).
    pub fn start(count: usize, topology: &str) -> Cluster {
        Cluster::start_with(count, topology, &[])
    }

    /// Like `start`, with extra `chorus serve` arguments for every node.
    pub fn start_with(count: usize, topology: &str, args: &[&str]) -> Cluster {
        Cluster::launch(count, topology, args, true)
    }

    /// Like `start`, with plain TCP between peers.
    pub fn start_plain(count: usize, topology: &str) -> Cluster {
        Cluster::launch(count, topology, &[], false)
    }

    /// Like `start`, with the nodes named `names` (as the docs' examples name them).
    pub fn start_named(names: &[&str], topology: &str) -> Cluster {
        let names = names.iter().map(|n| n.to_string()).collect();
        Cluster::launch_named(names, topology, &[], true)
    }

    fn launch(count: usize, topology: &str, args: &[&str], tls: bool) -> Cluster {
        let names = (0..count).map(|i| format!("n{i}")).collect();
        Cluster::launch_named(names, topology, args, tls)
    }

    fn launch_named(names: Vec<String>, topology: &str, args: &[&str], tls: bool) -> Cluster {
        let count = names.len();
        let dir = tempfile::tempdir().unwrap();
        let certs = tls.then(|| dir.path().join("certs"));
        let file = dir.path().join("cluster.toml");
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut cluster = Cluster {
            dir,
            file,
            header: format!("{topology}\n"),
            entries: names.iter().map(|n| (n.clone(), node_entry(n))).collect(),
            names,
            nodes: Vec::new(),
            args,
            certs,
        };
        cluster.write_file();
        for i in 0..count {
            let node = cluster.spawn(i);
            cluster.nodes.push(node);
        }
        cluster
    }

    /// Writes the cluster file from `header` and `entries`, and, with TLS on, the
    /// certificates of nodes that have none.
    pub fn write_file(&self) {
        let mut text = self.header.clone();
        for (_, entry) in &self.entries {
            text.push_str(entry);
        }
        std::fs::write(&self.file, text).unwrap();
        if let Some(certs) = &self.certs {
            let made = Command::new(CHORUS)
                .args(["cluster", "certs", "--cluster"])
                .arg(&self.file)
                .arg("--out")
                .arg(certs)
                .output()
                .unwrap();
            assert!(made.status.success(), "chorus cluster certs: {made:?}");
        }
    }

    /// Adds node `name` to the cluster file (on fresh ports) and starts it; the
    /// running nodes learn of it only when they reload. Returns its index.
    pub fn join(&mut self, name: &str) -> usize {
        self.entries.push((name.to_owned(), node_entry(name)));
        self.names.push(name.to_owned());
        self.write_file();
        let node = self.spawn(self.names.len() - 1);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Rewrites the cluster file with `header` (topology and settings) and has the
    /// nodes `running` reload it.
    pub fn reconfigure(&mut self, header: &str, running: &[usize]) {
        self.header = header.to_owned();
        self.write_file();
        for &i in running {
            let reply = self.reload(i);
            assert_eq!(reply.status, 200, "reload of n{i}: {}", reply.text);
        }
    }

    /// Asks the running node `i` to re-read the cluster file; returns the reply.
    pub fn reload(&self, i: usize) -> Reply {
        call(
            "POST",
            &format!("{}/v1/cluster/reload", self.url(i)),
            None,
            &[],
        )
    }

    /// The `links` of node `i`'s status: planned, wanted and actual peer names.
    pub fn links(&self, i: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
        let status = get(&format!("{}/v1/status", self.url(i))).body;
        let names = |field: &str| -> Vec<String> {
            status["links"][field]
                .as_array()
                .unwrap_or_else(|| panic!("no links.{field} in {status}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        (names("planned"), names("wanted"), names("actual"))
    }

    /// Starts node `i` on the HTTP address its cluster-file entry names (so that
    /// nodes can reach each other's API, as home routing does).
    fn spawn(&self, i: usize) -> NodeProcess {
        let data = self.dir.path().join(&self.names[i]);
        let file = self.file.to_str().unwrap();
        let mut args = vec!["--cluster", file, "--node", &self.names[i]];
        if let Some(certs) = &self.certs {
            args.extend(["--certs", certs.to_str().unwrap()]);
        }
        args.extend(self.args.iter().map(String::as_str));
        let (_, entry) = self
            .entries
            .iter()
            .find(|(name, _)| *name == self.names[i])
            .expect("the node's entry in the cluster file");
        let http = entry
            .split("http = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("an http address in the entry");
        NodeProcess::start_at(&data, http, &args)
    }

    /// Restarts node `i` on its data folder (after a kill).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i] = self.spawn(i);
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url.clone()
    }

    /// Node `i`'s peer address, from the cluster file.
    pub fn peer_address(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.file).unwrap();
        let peers: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("peer = "))
            .collect();
        peers[i].trim_matches('"').to_owned()
    }

    /// Waits until every node has the same digest and no node lags behind a peer.
    pub fn wait_converged(&self, deadline: Duration) {
        wait_until("the cluster to converge", deadline, || {
            let digests: Vec<String> = self.nodes.iter().map(|n| digest(&n.url)).collect();
            let caught_up = self.nodes.iter().all(|n| {
                let status = get(&format!("{}/v1/status", n.url)).body;
                status["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["lag_ops"] == 0 && p["connected"] == true)
            });
            caught_up && digests.iter().all(|d| *d == digests[0])
        });
    }
}

/// A `[[nodes]]` entry for `name` on ports free now.
fn node_entry(name: &str) -> String {
    format!(
        "[[nodes]]\nname = \"{name}\"\nhttp = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port()
    )
}

/// Sets the policy of `collection` on the node at `base`, asserting it was taken.
pub fn set_policy(base: &str, collection: &str, policy: &str) {
    let body = format!("{{\"policy\": \"{policy}\"}}");
    let url = format!("{base}/v1/collections/{collection}");
    let reply = call("PUT", &url, Some(body.as_bytes()), &[]);
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Sends a signal to a process with the `kill` command.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Reads one peer frame, piece by piece (`[length: u32] [more: u8] [bytes]`), or
/// `None` once the other side closed the connection (or broke off its TLS session)
/// or sent what is not a frame.
pub fn receive_frame(stream: &mut impl std::io::Read) -> Option<chorus_repl::Frame> {
    let mut bytes = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).ok()?;
        let length = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut piece = vec![0u8; length];
        stream.read_exact(&mut piece).ok()?;
        bytes.extend(piece);
        if header[4] == 0 {
            return chorus_repl::Frame::decode(&bytes).ok();
        }
    }
}

/// A cluster file of one node `a`, HTTP on loopback and its peer address `peer`.
pub fn one_node_cluster_file(dir: &Path, peer: &str) -> PathBuf {
    let file = dir.join("cluster.toml");
    let text = format!(
        "topology = \"mesh\"\n[[nodes]]\nname = \"a\"\nhttp = \"127.0.0.1:0\"\npeer = \"{peer}\"\n"
    );
    std::fs::write(&file, text).unwrap();
    file
}
