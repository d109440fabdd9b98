//! The peer protocol at a node's replication port, spoken by hand: a node of another
//! cluster, of another protocol version, or with an unknown name is refused with a
//! reason; corrupt and oversize frames end the connection and change nothing.

mod support;

use chorus_core::{NodeId, VersionVector};
use chorus_repl::{Frame, Hello, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

fn peer_address(cluster: &Cluster, i: usize) -> String {
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    let config: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("peer = "))
        .collect();
    config[i].trim_matches('"').to_owned()
}

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn send(stream: &mut TcpStream, frame: &Frame) {
    let bytes = frame.encode();
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(&bytes).unwrap();
}

fn receive(stream: &mut TcpStream) -> Option<Frame> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut bytes = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut bytes).ok()?;
    Some(Frame::decode(&bytes).unwrap())
}

fn hello(cluster: &str, protocol: u32, name: &str) -> Frame {
    Frame::Hello(Hello {
        protocol,
        cluster: cluster.into(),
        name: name.into(),
        node_id: NodeId(42),
        applied: VersionVector::new(),
        names: vec![],
    })
}

/// Wrong cluster, wrong version, or a name not in the cluster file: `Refused`, with
/// a reason that says which.
#[test]
fn foreign_peers_are_refused_with_a_reason() {
    let cluster = Cluster::start(2, "topology = \"mesh\"");
    let address = peer_address(&cluster, 0);
    let cases = [
        (hello("other", PROTOCOL_VERSION, "n1"), "cluster"),
        (hello("chorus", PROTOCOL_VERSION + 1, "n1"), "protocol"),
        (
            hello("chorus", PROTOCOL_VERSION, "stranger"),
            "not another node",
        ),
        (hello("chorus", PROTOCOL_VERSION, "n0"), "not another node"),
    ];
    for (frame, needle) in cases {
        let mut stream = connect(&address);
        send(&mut stream, &frame);
        match receive(&mut stream) {
            Some(Frame::Refused { reason }) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
            }
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }
}

/// Garbage, an oversize length and a frame that does not decode each end their
/// connection; the node keeps serving and replicating.
#[test]
fn corrupt_frames_end_the_connection_and_change_nothing() {
    let cluster = Cluster::start(2, "topology = \"mesh\"");
    cluster.wait_converged(Duration::from_secs(30));
    let before = digest(&cluster.url(0));
    let address = peer_address(&cluster, 0);
    let attempts: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        &[0, 0, 0, 3, 9, 9, 9],
        &[0, 0, 0, 0],
    ];
    for bytes in attempts {
        let mut stream = connect(&address);
        stream.write_all(bytes).unwrap();
        let mut rest = Vec::new();
        // The node closes the connection without answering anything but a refusal.
        let _ = stream.read_to_end(&mut rest);
        assert!(
            rest.is_empty()
                || Frame::decode(&rest[4..]).is_ok_and(|f| matches!(f, Frame::Refused { .. }))
        );
    }
    // A valid hello followed by a corrupt frame: the session ends.
    let mut stream = connect(&address);
    send(&mut stream, &hello("chorus", PROTOCOL_VERSION, "n1"));
    assert!(matches!(receive(&mut stream), Some(Frame::Hello(_))));
    stream.write_all(&[0, 0, 0, 2, 1, 0xff]).unwrap();
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    assert_eq!(digest(&cluster.url(0)), before);
    put(&format!("{}/v1/docs/d/k", cluster.url(0)), "1");
    cluster.wait_converged(Duration::from_secs(30));
    assert_eq!(
        get(&format!("{}/v1/docs/d/k", cluster.url(1))).body["value"],
        1
    );
}
