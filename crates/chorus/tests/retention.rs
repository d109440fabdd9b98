//! Bounded retention with real processes: a node stays down while the others write
//! and delete past the op-log retention bound, so the entries it needs are collected;
//! when it returns it is brought up to date by state transfer, with every deleted
//! document still deleted (nothing revived) and every write present; then the
//! tombstones every member has are collected.

mod support;

use std::time::Duration;
use support::*;

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn node_away_past_retention_returns_by_state_transfer() {
    let mut cluster = Cluster::start_with(
        3,
        "topology = \"mesh\"",
        &[
            "--log-retention-entries",
            "40",
            "--tombstone-collection-ms",
            "500",
        ],
    );
    let (a, b) = (cluster.url(0), cluster.url(1));
    for n in 0..30 {
        put(&format!("{a}/v1/docs/r/d{n}"), &format!("{{\"n\":{n}}}"));
    }
    cluster.wait_converged(CONVERGE);
    cluster.nodes[2].kill();

    // While n2 is away: delete the first ten documents, rewrite ten, add a hundred.
    for n in 0..10 {
        let context = get(&format!("{a}/v1/docs/r/d{n}")).body["context"]
            .as_str()
            .unwrap()
            .to_owned();
        let reply = call(
            "DELETE",
            &format!("{b}/v1/docs/r/d{n}"),
            None,
            &[("Chorus-Context", &context)],
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    for n in 10..20 {
        let context = get(&format!("{a}/v1/docs/r/d{n}")).body["context"]
            .as_str()
            .unwrap()
            .to_owned();
        put_with_context(
            &format!("{a}/v1/docs/r/d{n}"),
            &format!("{{\"n\":{n},\"v\":2}}"),
            &context,
        );
    }
    for n in 30..130 {
        put(
            &format!("{}/v1/docs/r/d{n}", if n % 2 == 0 { &a } else { &b }),
            &format!("{{\"n\":{n}}}"),
        );
    }
    // On both others: n2 may resume from either.
    wait_until(
        "the op logs to be collected past n2's cursor",
        CONVERGE,
        || {
            [&a, &b].iter().all(|url| {
                get(&format!("{url}/v1/status")).body["log_start"]
                    .as_u64()
                    .unwrap()
                    > 100
            })
        },
    );

    cluster.restart(2);
    cluster.wait_converged(CONVERGE);
    let c = cluster.url(2);
    for n in 0..10 {
        assert_eq!(
            get(&format!("{c}/v1/docs/r/d{n}")).status,
            404,
            "deleted d{n} came back on n2"
        );
    }
    for n in 10..20 {
        assert_eq!(
            get(&format!("{c}/v1/docs/r/d{n}")).body["value"]["v"],
            2,
            "d{n} on n2"
        );
    }
    let keys = get(&format!("{c}/v1/docs/r?limit=1000")).body["keys"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(keys, 120);
    let metrics = get(&format!("{c}/metrics")).text;
    assert!(
        metrics.contains("chorus_state_transfers_total"),
        "n2 caught up without a transfer?\n{metrics}"
    );
    // Once every member has applied the deletes, their tombstones are collected.
    wait_until("tombstones to be collected", CONVERGE, || {
        get(&format!("{a}/metrics"))
            .text
            .lines()
            .any(|l| l.starts_with("chorus_tombstones_collected_total ") && !l.ends_with(" 0"))
    });
    // The feed does not depend on the op log: from 0 it lists every document on the
    // node that was refilled by state transfer, with its log collected around it.
    let feed = get(&format!("{c}/v1/changes?since=0&limit=1000")).body;
    let listed = feed["changes"].as_array().unwrap().len();
    let present = get(&format!("{c}/v1/docs/r?limit=1000")).body["keys"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        listed >= present && present > 0,
        "{listed} listed, {present} present"
    );
}
