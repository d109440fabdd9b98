//! Crash safety: a node process takes acknowledged writes from concurrent clients
//! and is killed with SIGKILL at a random point, several times; after each restart
//! every write it acknowledged, in every round so far, is there with its value.
//! Replay a failure with the seed it prints (`CHORUS_CRASH_SEED`).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const ROUNDS: u64 = 4;
const WRITERS: usize = 8;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut rng = Rng::from_env("CHORUS_CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0..ROUNDS {
        let mut node = NodeProcess::start(&data, &[]);
        check_all_present(&node.url, &acked.lock().unwrap());
        let kill_after = 50 + rng.below(400) as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().unwrap().len();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (url, acked, stop) = (node.url.clone(), Arc::clone(&acked), Arc::clone(&stop));
                std::thread::spawn(move || {
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("r{round}-w{w}-{i}");
                        let value = format!("{{\"round\":{round},\"writer\":{w},\"i\":{i}}}");
                        match request(
                            "PUT",
                            &format!("{url}/v1/docs/crash/{key}"),
                            Some(value.as_bytes()),
                            &[],
                        ) {
                            Ok(reply) if reply.status == 200 => {
                                acked.lock().unwrap().push((key, value))
                            }
                            // The node died mid-request: this write was never acknowledged.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        wait_until("writes to be acknowledged", Duration::from_secs(60), || {
            acked.lock().unwrap().len() >= before + kill_after
        });
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        eprintln!(
            "round {round}: killed after {} acknowledged writes",
            acked.lock().unwrap().len() - before
        );
    }
    let node = NodeProcess::start(&data, &[]);
    check_all_present(&node.url, &acked.lock().unwrap());
}

fn check_all_present(url: &str, acked: &[(String, String)]) {
    for (key, value) in acked {
        let reply = get(&format!("{url}/v1/docs/crash/{key}"));
        assert_eq!(reply.status, 200, "acknowledged write {key} lost");
        let expected: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(
            reply.body["value"], expected,
            "acknowledged write {key} changed"
        );
    }
}
