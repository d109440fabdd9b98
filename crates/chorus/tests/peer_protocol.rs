//! The peer protocol at a node's replication port, spoken by hand: a node of another
//! cluster, of another protocol version, with an unknown name or a handshake that
//! would teach too much is refused with a reason; corrupt and oversize frames end the
//! connection and change nothing.

mod support;

use chorus_core::{NodeId, VersionVector};
use chorus_repl::{Frame, Hello, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

fn connect(address: &str) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

fn send(stream: &mut TcpStream, frame: &Frame) {
    stream.write_all(&frame.to_wire()).unwrap();
}

fn hello_teaching(cluster: &str, protocol: u32, name: &str, names: usize) -> Frame {
    Frame::Hello(Hello {
        protocol,
        cluster: cluster.into(),
        name: name.into(),
        node_id: NodeId(42),
        applied: VersionVector::new(),
        names: (0..names as u64)
            .map(|i| (NodeId(1000 + i), format!("mallory{i}")))
            .collect(),
    })
}

fn hello(cluster: &str, protocol: u32, name: &str) -> Frame {
    hello_teaching(cluster, protocol, name, 0)
}

/// Wrong cluster, wrong version, or a name not in the cluster file: `Refused`, with
/// a reason that says which.
#[test]
fn foreign_peers_are_refused_with_a_reason() {
    let cluster = Cluster::start_plain(2, "topology = \"mesh\"");
    let address = cluster.peer_address(0);
    let cases = [
        (hello("other", PROTOCOL_VERSION, "n1"), "cluster"),
        (hello("chorus", PROTOCOL_VERSION + 1, "n1"), "protocol"),
        (
            hello("chorus", PROTOCOL_VERSION, "stranger"),
            "not another node",
        ),
        (hello("chorus", PROTOCOL_VERSION, "n0"), "not another node"),
        (
            hello_teaching("chorus", PROTOCOL_VERSION, "n1", 600),
            "replica names",
        ),
    ];
    for (frame, needle) in cases {
        let mut stream = connect(&address);
        send(&mut stream, &frame);
        match receive_frame(&mut stream) {
            Some(Frame::Refused { reason }) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
            }
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }
}

/// Garbage, an oversize piece, an unknown continuation byte, a frame larger than a
/// handshake may be, and a frame that does not decode each end their connection;
/// the node keeps serving and replicating.
#[test]
fn corrupt_frames_end_the_connection_and_change_nothing() {
    let cluster = Cluster::start_plain(2, "topology = \"mesh\"");
    cluster.wait_converged(Duration::from_secs(30));
    let before = digest(&cluster.url(0));
    let address = cluster.peer_address(0);
    // Pieces of 1 MiB that never end: refused once past what a handshake may take.
    let mut endless = Vec::new();
    for _ in 0..3 {
        endless.extend_from_slice(&(1u32 << 20).to_be_bytes());
        endless.push(1);
        endless.extend(std::iter::repeat_n(7u8, 1 << 20));
    }
    let attempts: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        &[0, 0, 0, 3, 9, 9, 9, 9],
        &[0, 0, 0, 0],
        &endless,
    ];
    for bytes in attempts {
        let mut stream = connect(&address);
        // The node may close before everything is written.
        let _ = stream.write_all(bytes);
        let mut rest = Vec::new();
        // The node closes the connection without answering anything but a refusal.
        let _ = stream.read_to_end(&mut rest);
        assert!(
            rest.is_empty()
                || Frame::decode(&rest[5..]).is_ok_and(|f| matches!(f, Frame::Refused { .. }))
        );
    }
    // A valid hello followed by a corrupt frame: the session ends.
    let mut stream = connect(&address);
    send(&mut stream, &hello("chorus", PROTOCOL_VERSION, "n1"));
    assert!(matches!(receive_frame(&mut stream), Some(Frame::Hello(_))));
    stream.write_all(&[0, 0, 0, 2, 0, 1, 0xff]).unwrap();
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
