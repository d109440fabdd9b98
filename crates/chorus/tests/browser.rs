//! The pages in a real browser: Debian's chromium driven by playwright-core (the
//! scenarios are `tests/browser/*.mjs`; `npm ci --prefix tests/browser` installs
//! playwright-core, `.ci/run` installs chromium) against real `chorus` processes.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::*;

const MESH: &str = "topology = \"mesh\"\n";

/// Runs scenario `script` with `env`; fails with what it printed unless it succeeds.
fn scenario(script: &str, env: &[(&str, String)]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the browser tests need playwright-core: run `npm ci --prefix tests/browser`, and \
         install Debian's chromium (`apt-get install chromium`)"
    );
    let output = Command::new("node")
        .arg(dir.join(script))
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .output()
        .expect("node runs (install Node.js)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed:\n{printed}");
    println!("{printed}");
    printed
}

/// Goal: two people on two leaders edit one text in the browser and end with the
/// same text, nothing typed lost, no word interleaved. Method: `editor.mjs` types on
/// both pages at one place, then at two, then with one page offline (Playwright's
/// `setOffline`) while both type, and back; both pages and the node show one text
/// with every word whole; presence names the other page.
#[test]
fn two_pages_on_two_leaders_edit_one_text() {
    let cluster = Cluster::start(2, MESH);
    let urls = format!("{},{}", cluster.url(0), cluster.url(1));
    let printed = scenario(
        "editor.mjs",
        &[("CHORUS_URLS", urls), ("CHORUS_KEYSTROKES", "20".into())],
    );
    assert!(printed.contains("editor: ok"), "{printed}");
}

/// Goal: the dashboard shows the cluster live and ends conflicts. Method:
/// `dashboard.mjs` on three leaders: every member and link drawn; a conflict made by
/// two blind writes, resolved from the page, leaves every node's open conflicts; a
/// node killed with SIGKILL shows as unreachable within the heal time.
#[test]
fn the_dashboard_shows_the_cluster_and_resolves_conflicts() {
    let heal_ms = 2000;
    let cluster = Cluster::start(3, &format!("{MESH}heal_after_ms = {heal_ms}\n"));
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let pids: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.child.id().to_string())
        .collect();
    let printed = scenario(
        "dashboard.mjs",
        &[
            ("CHORUS_URLS", urls.join(",")),
            ("CHORUS_PIDS", pids.join(",")),
            ("CHORUS_HEAL_MS", heal_ms.to_string()),
        ],
    );
    assert!(printed.contains("dashboard: ok"), "{printed}");
}

/// Goal: the JavaScript client works in Node.js as documented. Method: `client.mjs`
/// against a node, with a dead URL first: failover, contexts, a conflict, a bad
/// document refused, text against an old read, the change feed, a live subscription.
#[test]
fn the_javascript_client_works_in_node() {
    let cluster = Cluster::start(1, MESH);
    let printed = scenario("client.mjs", &[("CHORUS_URLS", cluster.url(0))]);
    assert!(printed.contains("client: ok"), "{printed}");
}
