//! `chorus demo`: a local multi-leader cluster, and a walk through a conflict.
//!
//! Starts three `chorus serve` processes (this same binary) on loopback with stores
//! in a temporary folder, then shows: a write replicating to every leader; two
//! leaders writing the same document concurrently (both based on the same read);
//! the two siblings visible on every node; a resolution written on the third node;
//! and convergence (equal digests). Then it keeps the cluster running until Ctrl-C.

use crate::client;
use anyhow::{Context as _, bail};
use chorus_client::{Client, doc_path};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// How long the demo waits for the cluster to do each step.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// The node processes; killed when the demo ends, however it ends.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_node(dir: &Path, cluster: &Path, name: &str) -> anyhow::Result<(Child, String)> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--cluster")
        .arg(cluster)
        .args(["--node", name, "--data"])
        .arg(dir.join(name))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting a node")?;
    let mut banner = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut banner)?;
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| {
            format!(
                "node {name} did not start; see {}",
                dir.join(format!("{name}.log")).display()
            )
        })?
        .to_owned();
    Ok((child, url))
}

fn wait_for(what: &str, mut condition: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    while !condition()? {
        if started.elapsed() > STEP_DEADLINE {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One request to the node at `url` (the demo addresses each node on purpose).
fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    context: Option<&str>,
) -> anyhow::Result<Value> {
    client::call(&Client::new([url])?, method, path, body, context)
}

fn read(url: &str) -> anyhow::Result<Value> {
    call(url, "GET", &doc_path("docs", "greeting"), None, None)
}

fn write(url: &str, document: Value, context: &str) -> anyhow::Result<Value> {
    let body = document.to_string();
    call(
        url,
        "PUT",
        &doc_path("docs", "greeting"),
        Some(body.as_bytes()),
        Some(context),
    )
}

fn digest(url: &str) -> anyhow::Result<String> {
    let answer = call(url, "GET", "/v1/digest", None, None)?;
    Ok(answer["digest"].as_str().unwrap_or_default().to_owned())
}

fn values(doc: &Value) -> Vec<String> {
    doc["versions"].as_array().map_or(Vec::new(), |vs| {
        vs.iter()
            .map(|v| {
                format!(
                    "{} (from {})",
                    v["value"],
                    v["origin"].as_str().unwrap_or("?")
                )
            })
            .collect()
    })
}

pub fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("chorus-demo-").tempdir()?;
    let mut text = String::from("cluster = \"demo\"\ntopology = \"mesh\"\n");
    for name in NAMES {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\nhttp = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
            free_port()?,
            free_port()?
        ));
    }
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, text)?;

    println!(
        "Starting a 3-leader cluster (stores and logs in {}):",
        dir.path().display()
    );
    let mut nodes = Nodes(Vec::new());
    let mut urls = Vec::new();
    for name in NAMES {
        let (child, url) = start_node(dir.path(), &cluster, name)?;
        nodes.0.push(child);
        println!("  node {name}: {url}");
        urls.push(url);
    }
    wait_for("every node to link to its peers", || {
        urls.iter().try_fold(true, |all, url| {
            let status = call(url, "GET", "/v1/status", None, None)?;
            let linked = status["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["connected"] == true));
            Ok(all && linked)
        })
    })?;

    println!("\n1. Write docs/greeting on a; it replicates to every leader.");
    call(
        &urls[0],
        "PUT",
        &doc_path("docs", "greeting"),
        Some(br#"{"text":"hello"}"#),
        None,
    )?;
    wait_for("the write to reach b and c", || {
        Ok(urls.iter().all(|u| read(u).is_ok()))
    })?;
    let first = read(&urls[1])?;
    println!("   b reads {}", values(&first).join(", "));

    println!("\n2. a and b both change it, each based on that same read: concurrent writes.");
    let context = first["context"].as_str().context("a read has a context")?;
    write(&urls[0], json!({"text": "hello from a"}), context)?;
    write(&urls[1], json!({"text": "hello from b"}), context)?;
    wait_for("both versions to reach every node", || {
        urls.iter().try_fold(true, |all, u| {
            Ok(all && read(u)?["versions"].as_array().map_or(0, Vec::len) == 2)
        })
    })?;
    for (name, url) in NAMES.iter().zip(&urls) {
        let doc = read(url)?;
        println!(
            "   {name}: conflict={} versions: {}",
            doc["conflict"],
            values(&doc).join(" | ")
        );
    }

    println!("\n3. Resolve on c: read (its context covers both siblings) and write the merge.");
    let seen = read(&urls[2])?;
    let context = seen["context"].as_str().context("a read has a context")?;
    write(&urls[2], json!({"text": "hello from a and b"}), context)?;
    wait_for("every node to converge", || {
        let digests: Vec<String> = urls.iter().map(|u| digest(u)).collect::<Result<_, _>>()?;
        let resolved = urls.iter().try_fold(true, |all, u| {
            Ok::<_, anyhow::Error>(all && read(u)?["conflict"] == false)
        })?;
        Ok(resolved && digests.iter().all(|d| *d == digests[0]))
    })?;
    for (name, url) in NAMES.iter().zip(&urls) {
        let doc = read(url)?;
        let conflicts = call(url, "GET", "/v1/conflicts", None, None)?;
        println!(
            "   {name}: {}  digest {}…  conflict log: {} record(s)",
            values(&doc).join(" | "),
            &digest(url)?[..16],
            conflicts["conflicts"].as_array().map_or(0, Vec::len)
        );
    }

    // Listen for Ctrl-C before saying so, or an early one would kill the process
    // before the nodes are stopped.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut interrupt = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
    println!("\nThe cluster keeps running. Try, for example:");
    println!(
        "  chorus put docs greeting '{{\"text\":\"yours\"}}' --url {}",
        urls[0]
    );
    println!("  chorus get docs greeting --url {}", urls[2]);
    println!("  chorus status --url {}", urls[1]);
    println!("Press Ctrl-C to stop.");
    std::io::stdout().flush()?;
    runtime.block_on(interrupt.recv());
    // Stdout may be gone by now (a closed pipe); stopping must not fail on it.
    let _ = writeln!(std::io::stdout(), "\nStopping.");
    drop(nodes);
    Ok(())
}
