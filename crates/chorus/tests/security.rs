//! Security as an attacker tries it: the peer port of a cluster with certificates
//! admits only the cluster's nodes, each as itself; a node refuses to expose
//! unprotected ports beyond this machine unless told `--insecure`.

mod support;

use chorus_core::{NodeId, VersionVector};
use chorus_repl::{Frame, Hello, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn peer_address(cluster: &Cluster, i: usize) -> String {
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    let peers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("peer = "))
        .collect();
    peers[i].trim_matches('"').to_owned()
}

fn hello_as(name: &str) -> Frame {
    Frame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        cluster: "chorus".into(),
        name: name.into(),
        node_id: NodeId(666),
        applied: VersionVector::new(),
        names: vec![(NodeId(666), "mallory".into())],
    })
}

/// Reads one frame (`[length: u32] [more: u8] [bytes]` pieces), or `None` once the
/// other side closed the connection or broke off the TLS session.
fn receive(stream: &mut impl Read) -> Option<Frame> {
    let mut bytes = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).ok()?;
        let length = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let mut piece = vec![0u8; length];
        stream.read_exact(&mut piece).ok()?;
        bytes.extend(piece);
        if header[4] == 0 {
            return Frame::decode(&bytes).ok();
        }
    }
}

/// A TLS connection to `address` as whoever holds `cert`/`key`, trusting `ca`.
fn tls_as(
    address: &str,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = chorus_peer::tls::client_config(ca, cert, key).unwrap();
    let name = ServerName::try_from(server.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

fn digests(cluster: &Cluster) -> Vec<String> {
    (0..cluster.nodes.len())
        .map(|i| digest(&cluster.url(i)))
        .collect()
}

/// Plain TCP, a certificate of another CA, and a member's certificate claiming
/// another member's name: each is refused before a single frame is read, and no
/// node's data changes. The cluster itself replicates over TLS.
#[test]
fn only_members_speak_on_the_peer_port_and_each_only_as_itself() {
    let cluster = Cluster::start(3, "topology = \"mesh\"");
    let certs = cluster.certs.clone().expect("TLS is on");
    put(&format!("{}/v1/docs/c/k", cluster.url(0)), r#"{"v":1}"#);
    cluster.wait_converged(Duration::from_secs(30));
    let before = digests(&cluster);
    let target = peer_address(&cluster, 0);

    // Plain TCP: the Hello of `n1` is not even a TLS handshake.
    let mut plain = TcpStream::connect(&target).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = plain.write_all(&hello_as("n1").to_wire());
    assert!(receive(&mut plain).is_none(), "plain TCP got an answer");

    // A certificate for `n1` from another CA (the attacker ran `cluster certs` too).
    let rogue = tempfile::tempdir().unwrap();
    chorus_peer::tls::generate(&["n1".to_owned()], rogue.path()).unwrap();
    let mut forged = tls_as(
        &target,
        "n0",
        &certs.join("ca.pem"),
        &rogue.path().join("n1.pem"),
        &rogue.path().join("n1.key"),
    );
    let _ = forged.write_all(&hello_as("n1").to_wire());
    assert!(
        receive(&mut forged).is_none(),
        "a foreign CA's certificate was answered"
    );

    // `n2`'s own certificate, claiming to be `n1`: refused with the reason.
    let mut impostor = tls_as(
        &target,
        "n0",
        &certs.join("ca.pem"),
        &certs.join("n2.pem"),
        &certs.join("n2.key"),
    );
    impostor.write_all(&hello_as("n1").to_wire()).unwrap();
    match receive(&mut impostor) {
        Some(Frame::Refused { reason }) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("the impostor got {other:?}"),
    }
    assert!(
        receive(&mut impostor).is_none(),
        "the connection stays open"
    );

    // Nothing changed anywhere, and the cluster still replicates.
    assert_eq!(digests(&cluster), before);
    put(&format!("{}/v1/docs/c/k2", cluster.url(1)), r#"{"v":2}"#);
    cluster.wait_converged(Duration::from_secs(30));
}

fn serve_fails(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(CHORUS)
        .args(["serve", "--data"])
        .arg(data.path())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "chorus serve {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Beyond loopback, a node needs certificates for its peer port and `--insecure`
/// for its HTTP API (which has no authentication yet); with `--insecure` it starts.
#[test]
fn exposed_ports_need_protection_or_insecure() {
    let error = serve_fails(&["--http", "0.0.0.0:0"]);
    assert!(error.contains("--insecure"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        "topology = \"mesh\"\n[[nodes]]\nname = \"a\"\nhttp = \"127.0.0.1:0\"\npeer = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let error = serve_fails(&["--cluster", file, "--node", "a"]);
    assert!(error.contains("--certs"), "{error}");
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_at(data.path(), "0.0.0.0:0", &["--insecure"]);
    assert!(node.url.starts_with("http://"));
}
