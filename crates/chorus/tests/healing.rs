//! Topologies that heal, clients that fail over, and nodes that join and leave, with
//! real `chorus serve` processes: a ring and a star keep relaying while a node in the
//! middle is stopped (SIGSTOP) or killed, and go back to their planned links when it
//! returns; a client moves to the next node and its writes land; a node joins a
//! running cluster and catches up by state transfer, and leaves it again.

mod support;

use chorus_client::Client;
use serde_json::json;
use std::time::Duration;
use support::*;

const DEADLINE: Duration = Duration::from_secs(60);
/// Fast failure detection, so the tests heal in seconds.
const FAST: &[&str] = &["--peer-timeout-ms", "1500"];

fn doc(cluster: &Cluster, i: usize, key: &str) -> String {
    format!("{}/v1/docs/heal/{key}", cluster.url(i))
}

/// Writes `key` on node `from` and waits until every node of `to` reads it.
fn write_and_wait(cluster: &Cluster, from: usize, key: &str, to: &[usize]) {
    let reply = put(&doc(cluster, from, key), &json!({"from": from}).to_string());
    assert_eq!(reply.status, 200, "{}", reply.text);
    for &i in to {
        wait_until(
            &format!("{key} written on n{from} to reach n{i}"),
            DEADLINE,
            || get(&doc(cluster, i, key)).status == 200,
        );
    }
}

/// Waits until every node in `nodes` is linked exactly to its planned neighbours.
fn wait_planned_links(cluster: &Cluster, nodes: &[usize]) {
    for &i in nodes {
        wait_until(&format!("n{i} back on its planned links"), DEADLINE, || {
            let (planned, wanted, actual) = cluster.links(i);
            planned == wanted && planned == actual
        });
    }
}

/// A ring of five with two nodes out (one stopped, one killed) is cut in two arcs;
/// the nodes around each gap link to each other, writes flow between all live nodes,
/// and when both return the ring goes back to its planned links and converges.
#[test]
fn a_ring_links_around_stopped_and_killed_nodes() {
    let mut cluster = Cluster::start_with(5, "topology = \"ring\"\nheal_after_ms = 500", FAST);
    wait_planned_links(&cluster, &[0, 1, 2, 3, 4]);
    write_and_wait(&cluster, 0, "before", &[1, 2, 3, 4]);

    signal(&cluster.nodes[1].child, "STOP");
    cluster.nodes[3].kill();
    // n2 is cut off from n0 and n4 unless links go around n1 and n3.
    wait_until("n2 to link around n1 and n3", DEADLINE, || {
        cluster.links(2).2 == ["n0", "n4"]
    });
    write_and_wait(&cluster, 2, "during-from-n2", &[0, 4]);
    write_and_wait(&cluster, 4, "during-from-n4", &[2]);

    signal(&cluster.nodes[1].child, "CONT");
    cluster.restart(3);
    wait_planned_links(&cluster, &[0, 1, 2, 3, 4]);
    write_and_wait(&cluster, 3, "after", &[0, 1, 2, 4]);
    cluster.wait_converged(DEADLINE);
    for key in ["before", "during-from-n2", "during-from-n4", "after"] {
        assert_eq!(get(&doc(&cluster, 1, key)).status, 200, "{key} on n1");
    }
}

/// A star whose hub is stopped, then killed, falls back to a mesh of its spokes that
/// keeps relaying, and returns to the star when the hub does.
#[test]
fn a_star_meshes_its_spokes_while_the_hub_is_out() {
    let mut cluster = Cluster::start_with(
        4,
        "topology = \"star\"\nhub = \"n0\"\nheal_after_ms = 500",
        FAST,
    );
    wait_planned_links(&cluster, &[0, 1, 2, 3]);

    signal(&cluster.nodes[0].child, "STOP");
    write_and_wait(&cluster, 1, "hub-stopped", &[2, 3]);
    assert_eq!(cluster.links(1).2, ["n2", "n3"]);
    signal(&cluster.nodes[0].child, "CONT");
    wait_planned_links(&cluster, &[0, 1, 2, 3]);

    cluster.nodes[0].kill();
    write_and_wait(&cluster, 2, "hub-killed", &[1, 3]);
    cluster.restart(0);
    wait_planned_links(&cluster, &[0, 1, 2, 3]);
    cluster.wait_converged(DEADLINE);
    for key in ["hub-stopped", "hub-killed"] {
        assert_eq!(get(&doc(&cluster, 0, key)).status, 200, "{key} on the hub");
    }
}

/// With a standby hub named, the spokes link to it while the hub is out.
#[test]
fn a_standby_hub_takes_over() {
    let cluster = Cluster::start_with(
        4,
        "topology = \"star\"\nhub = \"n0\"\nstandby_hub = \"n1\"\nheal_after_ms = 500",
        FAST,
    );
    wait_planned_links(&cluster, &[0, 1, 2, 3]);
    signal(&cluster.nodes[0].child, "STOP");
    wait_until("the spokes to link to the standby hub", DEADLINE, || {
        cluster.links(2).2 == ["n1"] && cluster.links(3).2 == ["n1"]
    });
    write_and_wait(&cluster, 2, "via-standby", &[1, 3]);
    signal(&cluster.nodes[0].child, "CONT");
    wait_planned_links(&cluster, &[0, 1, 2, 3]);
}

/// A client given every node's URL moves to the next node when its node is killed;
/// its writes land and replicate, and a context token read on the dead node still
/// replaces exactly what it read. The CLI takes the same list.
#[test]
fn a_client_fails_over_and_its_writes_land() {
    let mut cluster = Cluster::start(3, "topology = \"mesh\"");
    let client = Client::new((0..3).map(|i| cluster.url(i))).unwrap();
    client.put("fo", "a", &json!({"v": 1}), None).unwrap();
    assert_eq!(client.url(), cluster.url(0));
    cluster.wait_converged(DEADLINE);
    let context = client.get("fo", "a").unwrap().unwrap()["context"]
        .as_str()
        .unwrap()
        .to_owned();

    cluster.nodes[0].kill();
    client
        .put("fo", "a", &json!({"v": 2}), Some(&context))
        .unwrap();
    client.put("fo", "b", &json!({"v": 3}), None).unwrap();
    assert_eq!(client.url(), cluster.url(1), "moved to the next node");
    let cli = std::process::Command::new(CHORUS)
        .args(["put", "fo", "c", r#"{"v": 4}"#, "--url"])
        .arg(format!("{},{}", cluster.url(0), cluster.url(2)))
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    cluster.restart(0);
    cluster.wait_converged(DEADLINE);
    for i in 0..3 {
        let a = get(&doc_in(&cluster, i, "fo", "a")).body;
        assert_eq!(a["versions"].as_array().unwrap().len(), 1, "{a}");
        assert_eq!(a["versions"][0]["value"], json!({"v": 2}));
        for key in ["b", "c"] {
            assert_eq!(get(&doc_in(&cluster, i, "fo", key)).status, 200);
        }
    }
}

fn doc_in(cluster: &Cluster, i: usize, collection: &str, key: &str) -> String {
    format!("{}/v1/docs/{collection}/{key}", cluster.url(i))
}

/// A node added to the cluster file joins the running cluster when the others
/// reload it, and receives the existing data by state transfer; removed again, it is
/// refused and the others stop linking to it. A bad file changes nothing.
#[test]
fn a_node_joins_and_leaves_a_running_cluster() {
    let mut cluster = Cluster::start(2, "topology = \"mesh\"");
    for n in 0..50 {
        let reply = put(
            &doc_in(&cluster, n % 2, "join", &format!("k{n}")),
            "{\"n\":1}",
        );
        assert_eq!(reply.status, 200);
    }
    cluster.wait_converged(DEADLINE);

    let newcomer = cluster.join("n2");
    for i in 0..2 {
        let reply = cluster.reload(i);
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["nodes"], json!(["n0", "n1", "n2"]));
    }
    cluster.wait_converged(DEADLINE);
    let metrics = get_text(&format!("{}/metrics", cluster.url(newcomer)));
    assert!(
        metrics.contains("chorus_state_transfers_total"),
        "the newcomer got a state transfer:\n{metrics}"
    );
    assert_eq!(get(&doc_in(&cluster, newcomer, "join", "k49")).status, 200);

    // A broken file is refused with a reason, and the cluster keeps running.
    std::fs::write(&cluster.file, "topology = \"ring\"\n[[nodes]]\n").unwrap();
    let reply = cluster.reload(0);
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.body["error"], "bad_cluster_file");
    assert_eq!(cluster.links(0).2, ["n1", "n2"]);

    // n2 leaves: the others reload a file without it.
    cluster.entries.retain(|(name, _)| name != "n2");
    cluster.write_file();
    for i in 0..2 {
        assert_eq!(cluster.reload(i).status, 200);
    }
    for i in 0..2 {
        wait_until("the others to drop n2", DEADLINE, || {
            let (planned, _, actual) = cluster.links(i);
            planned.len() == 1 && actual.len() == 1
        });
    }
    let status = get(&format!("{}/v1/status", cluster.url(0))).body;
    let peers: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(peers, ["n1"]);
}

fn get_text(url: &str) -> String {
    get(url).text
}

/// Link emulation from the cluster file: a partitioned link is never formed (writes
/// go around it), a reload lifts the partition and puts a delay on it instead, and the
/// link comes up. A bad `--emulate` is refused at start with a reason.
#[test]
fn emulated_partition_and_delay() {
    let mut cluster = Cluster::start(
        3,
        "topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\npartitioned = true",
    );
    wait_until("n0 linked with n2 only", DEADLINE, || {
        cluster.links(0).2 == ["n2"] && cluster.links(1).2 == ["n2"]
    });
    write_and_wait(&cluster, 0, "around-the-partition", &[1]);

    cluster.reconfigure("topology = \"mesh\"\n[[emulate]]\nlink = [\"n0\", \"n1\"]\ndelay_ms = 50\njitter_ms = 10\n", &[0, 1, 2]);
    wait_until(
        "n0 and n1 linked once the partition is lifted",
        DEADLINE,
        || cluster.links(0).2 == ["n1", "n2"],
    );
    write_and_wait(&cluster, 1, "over-the-slow-link", &[0, 2]);
    cluster.wait_converged(DEADLINE);

    let refused = std::process::Command::new(CHORUS)
        .args(["serve", "--http", "127.0.0.1:0", "--cluster"])
        .arg(&cluster.file)
        .args(["--node", "n0", "--emulate", "n1:delay=soon", "--data"])
        .arg(cluster.dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("milliseconds"), "{stderr}");
}
