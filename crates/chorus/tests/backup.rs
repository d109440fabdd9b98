//! Backup and restore with real processes: a backup of a running node, restored after
//! the node died, rejoins its cluster as a new replica and ends with everything the
//! cluster acknowledged since the backup, without bringing back what was deleted, even
//! once every other member has collected the deletion's tombstone.

mod support;

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn chorus(args: &[&str]) -> std::process::Output {
    Command::new(CHORUS).args(args).output().unwrap()
}

#[test]
fn a_node_restored_from_an_older_backup_rejoins_without_loss() {
    // Tombstones are collected quickly, so the deletion below is gone from every
    // member (no tombstone left to replicate) before the restore.
    let mut cluster = Cluster::start_with(
        3,
        "topology = \"mesh\"",
        &["--tombstone-collection-ms", "200"],
    );
    let (a, c) = (cluster.url(0), cluster.url(2));
    for key in ["before", "doomed"] {
        assert_eq!(
            put(&format!("{a}/v1/docs/b/{key}"), r#"{"v":0}"#).status,
            200
        );
    }
    cluster.wait_converged(CONVERGE);
    let backup = cluster.dir.path().join("n2.backup");
    let taken = chorus(&["backup", "--url", &c, "--out", backup.to_str().unwrap()]);
    assert!(taken.status.success(), "{taken:?}");
    // A second backup to the same file is refused.
    assert!(
        !chorus(&["backup", "--url", &c, "--out", backup.to_str().unwrap()])
            .status
            .success()
    );

    // After the backup: writes on another node and on n2 itself, and a delete.
    put(&format!("{a}/v1/docs/b/after_a"), r#"{"v":1}"#);
    put(&format!("{c}/v1/docs/b/after_c"), r#"{"v":2}"#);
    let doomed = get(&format!("{a}/v1/docs/b/doomed")).body["context"].clone();
    let deleted = call(
        "DELETE",
        &format!("{a}/v1/docs/b/doomed"),
        None,
        &[("Chorus-Context", doomed.as_str().unwrap())],
    );
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    cluster.wait_converged(CONVERGE);
    for i in 0..3 {
        let url = cluster.url(i);
        wait_until("the deletion's tombstone to be collected", CONVERGE, || {
            get(&format!("{url}/metrics"))
                .text
                .lines()
                .any(|l| l.starts_with("chorus_tombstones_collected_total ") && !l.ends_with(" 0"))
        });
    }

    // n2 dies; its data folder is replaced by the older backup.
    cluster.nodes[2].kill();
    let data = cluster.nodes[2].data.clone();
    std::fs::remove_dir_all(&data).unwrap();
    let restored = chorus(&[
        "restore",
        "--data",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(restored.status.success(), "{restored:?}");
    // A file that is no backup is refused, and leaves nothing behind.
    let elsewhere = cluster.dir.path().join("not-restored");
    let file = cluster.file.to_str().unwrap().to_owned();
    let refused = chorus(&["restore", "--data", elsewhere.to_str().unwrap(), &file]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a Chorus store"));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // Restoring over a store is refused.
    let again = chorus(&[
        "restore",
        "--data",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    cluster.restart(2);
    cluster.wait_converged(CONVERGE);
    let c = cluster.url(2);
    assert_eq!(versions(&c, "b", "before"), [json!({"v": 0})]);
    assert_eq!(versions(&c, "b", "after_a"), [json!({"v": 1})]);
    assert_eq!(
        versions(&c, "b", "after_c"),
        [json!({"v": 2})],
        "its own write after the backup"
    );
    assert_eq!(
        get(&format!("{c}/v1/docs/b/doomed")).status,
        404,
        "deleted stays deleted"
    );
    // The restored node writes under a new identity, and its writes replicate.
    put(&format!("{c}/v1/docs/b/fresh"), r#"{"v":3}"#);
    cluster.wait_converged(CONVERGE);
    assert_eq!(versions(&a, "b", "fresh"), [json!({"v": 3})]);
}
