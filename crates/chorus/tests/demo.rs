//! `chorus demo`, the README's main command, as a newcomer runs it: it starts three
//! leaders, shows a concurrent conflict on every node and its resolution, converges,
//! keeps running, and stops with its nodes on Ctrl-C (SIGINT).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::*;

#[test]
fn demo_walks_through_a_conflict_and_stops_on_ctrl_c() {
    let mut demo = Command::new(CHORUS)
        .arg("demo")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut output = BufReader::new(demo.stdout.take().unwrap()).lines();
    for line in output.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
    assert_eq!(text.matches("conflict=true").count(), 3, "{text}");
    assert_eq!(text.matches("hello from a and b").count(), 3, "{text}");
    let digests: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split("digest ").nth(1))
        .collect();
    assert_eq!(digests.len(), 3);
    assert!(digests.iter().all(|d| *d == digests[0]), "{text}");

    // The cluster still serves while the demo runs.
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("  node a: "))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        get(&format!("{url}/v1/docs/docs/greeting")).body["value"]["text"],
        "hello from a and b"
    );

    signal(&demo, "INT");
    assert!(demo.wait().unwrap().success());
    assert_eq!(output.next().unwrap().unwrap(), "");
    assert_eq!(output.next().unwrap().unwrap(), "Stopping.");
    assert!(
        request("GET", &format!("{url}/v1/status"), None, &[]).is_err(),
        "nodes stopped with the demo"
    );
}
