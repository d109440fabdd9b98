//! A node's records of devices: retries answered from the record, acknowledgements,
//! and expiry (`chorus_node::devices`).

use chorus_node::devices::{Change, DeviceId, DeviceWrite, Upload, UploadOutcome};
use chorus_node::{Node, open};

const DEVICE: DeviceId = DeviceId(0xd);

fn temp_node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path().join("node.redb")).unwrap();
    (dir, node)
}

fn upload(node: &Node, seqs: &[u64], acked: u64) -> Vec<UploadOutcome> {
    let writes = seqs
        .iter()
        .map(|&seq| DeviceWrite {
            seq,
            key: format!("k{seq}"),
            change: Change::Document(Some(format!("{{\"seq\":{seq}}}").into_bytes())),
            context: None,
        })
        .collect();
    node.upload_blocking(Upload {
        device: DEVICE,
        collection: "notes".into(),
        writes,
        acked,
    })
    .unwrap()
}

fn far_future() -> u64 {
    u64::MAX >> 20
}

/// A record keeps answering until the device acknowledged it; then it can expire,
/// and a later upload starts a new one.
#[test]
fn a_record_expires_only_once_its_answers_were_acknowledged() {
    let (_dir, node) = temp_node();
    let taken = upload(&node, &[1, 2], 0);
    assert!(matches!(taken[1], UploadOutcome::Taken { seq: 2, .. }));

    // The answer was lost: the device has not acknowledged it, so the record stays,
    // however old, and a retry is answered from it.
    assert_eq!(node.expire_device_records(far_future()).unwrap(), 0);
    let retried = upload(&node, &[1, 2], 0);
    assert!(matches!(
        retried[0],
        UploadOutcome::TakenBefore {
            seq: 1,
            dot: Some(_)
        }
    ));
    assert_eq!(
        node.get("notes", "k1").unwrap().versions.len(),
        1,
        "not twice"
    );

    // Acknowledged (alone, with no writes): answers are kept, and the record goes
    // once old enough, not before.
    upload(&node, &[], 2);
    let record = node.device_taken(DEVICE, node.name(), "notes").unwrap();
    assert_eq!((record.through, record.acked, record.dots.len()), (2, 2, 2));
    assert_eq!(node.expire_device_records(1).unwrap(), 0, "too recent");
    assert_eq!(node.devices_seen().unwrap(), 1);
    assert_eq!(node.expire_device_records(far_future()).unwrap(), 1);
    assert_eq!(
        node.device_taken(DEVICE, node.name(), "notes").unwrap(),
        Default::default()
    );
    assert_eq!(
        node.devices_seen().unwrap(),
        0,
        "a deleted record is no device"
    );

    // The device's next writes start a new record; the documents are untouched.
    let later = upload(&node, &[3], 2);
    assert!(matches!(later[0], UploadOutcome::Taken { seq: 3, .. }));
    let record = node.device_taken(DEVICE, node.name(), "notes").unwrap();
    assert_eq!(
        (record.through, record.acked),
        (3, 2),
        "seq 3 not acknowledged yet"
    );
    assert!(node.get("notes", "k1").unwrap().value().is_some());
}

/// An acknowledgement never claims more than the record took, and an acknowledgement
/// alone does not start a record.
#[test]
fn acknowledgements_are_bounded_by_what_was_taken() {
    let (_dir, node) = temp_node();
    upload(&node, &[], 7);
    assert_eq!(
        node.device_taken(DEVICE, node.name(), "notes").unwrap(),
        Default::default()
    );
    upload(&node, &[1], 0);
    upload(&node, &[], 9);
    let record = node.device_taken(DEVICE, node.name(), "notes").unwrap();
    assert_eq!((record.through, record.acked), (1, 1));
}
