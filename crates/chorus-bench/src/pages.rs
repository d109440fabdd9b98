//! `pages`: the pages in a real browser, measured (and `docs/screenshots/` taken
//! again). Two clusters of two leaders in this process, each leader with its HTTP
//! API and pages: one on loopback, one with `wan_ms` emulated between the leaders.
//! Then `tests/browser/measure.mjs` (Debian's chromium through playwright-core: `npm
//! ci --prefix tests/browser`) measures keystroke to visible on the other leader's
//! page, the page's memory after the automerge-paper trace, and the assets' size.

use crate::replication::free_port;
use chorus_node::{Node, NodeConfig};
use chorus_peer::cluster::ClusterConfig;
use chorus_peer::replication::{self, Replication};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct PagesArgs {
    /// Keystrokes measured in each cluster.
    #[arg(long, default_value_t = 300)]
    keystrokes: u64,
    /// One-way delay between the leaders of the second cluster, in ms.
    #[arg(long, default_value_t = 40)]
    wan_ms: u64,
}

/// Two leaders serving their API and pages, replicating over loopback.
struct Pair {
    urls: Vec<String>,
    _links: Vec<Arc<Replication>>,
}

impl Pair {
    fn start(runtime: &tokio::runtime::Runtime, dir: &Path, emulate: &str) -> anyhow::Result<Pair> {
        std::fs::create_dir_all(dir)?;
        let names = ["n0", "n1"];
        let mut text = String::from("cluster = \"pages\"\ntopology = \"mesh\"\n");
        let mut http = Vec::new();
        for name in names {
            let port = free_port()?;
            http.push(port);
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nhttp = \"127.0.0.1:{port}\"\npeer = \"127.0.0.1:{}\"\n",
                free_port()?
            ));
        }
        let config =
            ClusterConfig::from_toml(&format!("{text}{emulate}")).map_err(anyhow::Error::msg)?;
        let (mut urls, mut links) = (Vec::new(), Vec::new());
        for (name, port) in names.into_iter().zip(http) {
            let node = Node::open(
                &dir.join(format!("{name}.redb")),
                NodeConfig {
                    name: name.to_owned(),
                    ..NodeConfig::default()
                },
            )?;
            let link = Arc::new(runtime.block_on(replication::start(
                node.clone(),
                config.clone(),
                name,
                replication::Options::default(),
            ))?);
            let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
            let server = chorus_server::ServerConfig {
                cluster: Some(link.clone()),
                ..Default::default()
            };
            runtime.spawn(chorus_server::serve(
                listener,
                node,
                server,
                std::future::pending(),
            ));
            urls.push(format!("http://127.0.0.1:{port}"));
            links.push(link);
        }
        Ok(Pair {
            urls,
            _links: links,
        })
    }
}

pub fn run(args: &PagesArgs) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("tests/browser/measure.mjs");
    anyhow::ensure!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "the pages are measured in chromium through playwright-core: run `npm ci --prefix \
         tests/browser`, and install Debian's chromium"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let near = Pair::start(&runtime, &dir.path().join("near"), "")?;
    let emulate = format!(
        "[[emulate]]\nlink = [\"n0\", \"n1\"]\ndelay_ms = {}\n",
        args.wan_ms
    );
    let far = Pair::start(&runtime, &dir.path().join("far"), &emulate)?;
    let status = std::process::Command::new("node")
        .arg(script)
        .env("CHORUS_URLS", near.urls.join(","))
        .env("CHORUS_WAN_URLS", far.urls.join(","))
        .env("CHORUS_WAN_MS", args.wan_ms.to_string())
        .env("CHORUS_KEYSTROKES", args.keystrokes.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "measure.mjs failed: {status}");
    Ok(())
}
