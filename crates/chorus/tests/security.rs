//! Security as an attacker tries it: the peer port of a cluster with certificates
//! admits only the cluster's nodes, each as itself; a node refuses to expose
//! unprotected ports beyond this machine unless told `--insecure`.

mod support;

use chorus_core::{NodeId, VersionVector};
use chorus_repl::{Frame, Hello, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;

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

/// A TLS connection to `address` as whoever holds `cert`/`key`, trusting `ca`.
fn tls_as(
    address: &str,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = chorus_peer::tls::client_config(ca, cert, key).unwrap();
    let name = ServerName::try_from(format!("{server}.node.chorus")).unwrap();
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
    let target = cluster.peer_address(0);

    // Plain TCP: the Hello of `n1` is not even a TLS handshake.
    let mut plain = TcpStream::connect(&target).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = plain.write_all(&hello_as("n1").to_wire());
    assert!(
        receive_frame(&mut plain).is_none(),
        "plain TCP got an answer"
    );

    // A certificate for `n1` from another CA (the attacker ran `cluster certs` too).
    let rogue = tempfile::tempdir().unwrap();
    let n1 = chorus_peer::tls::NodeCertificate {
        name: "n1".into(),
        hosts: vec!["127.0.0.1".into()],
    };
    chorus_peer::tls::generate(&[n1], rogue.path()).unwrap();
    let mut forged = tls_as(
        &target,
        "n0",
        &certs.join("ca.pem"),
        &rogue.path().join("n1.pem"),
        &rogue.path().join("n1.key"),
    );
    let _ = forged.write_all(&hello_as("n1").to_wire());
    assert!(
        receive_frame(&mut forged).is_none(),
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
    match receive_frame(&mut impostor) {
        Some(Frame::Refused { reason }) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("the impostor got {other:?}"),
    }
    assert!(
        receive_frame(&mut impostor).is_none(),
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
    let file = one_node_cluster_file(dir.path(), "0.0.0.0:0");
    let file = file.to_str().unwrap();
    let error = serve_fails(&["--cluster", file, "--node", "a"]);
    assert!(error.contains("--certs"), "{error}");
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_at(data.path(), "0.0.0.0:0", &["--insecure"]);
    let status = get(&format!(
        "{}/v1/status",
        node.url.replace("0.0.0.0", "127.0.0.1")
    ));
    assert_eq!(status.body["security"]["insecure"], true, "{}", status.text);
    assert_eq!(status.body["security"]["tokens_required"], false);
}

fn with_token(token: &str) -> String {
    format!("Bearer {token}")
}

fn call_as(token: Option<&str>, method: &str, url: &str, body: Option<&str>) -> Reply {
    let bearer = token.map(with_token);
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    call(method, url, body.map(str::as_bytes), &headers)
}

fn create_token(base: &str, admin: Option<&str>, name: &str, rights: &str) -> String {
    let body = format!(r#"{{"name":"{name}","rights":"{rights}"}}"#);
    let reply = call_as(admin, "POST", &format!("{base}/v1/tokens"), Some(&body));
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body["token"].as_str().unwrap().to_owned()
}

fn digest_as(base: &str, token: &str) -> String {
    let reply = call_as(Some(token), "GET", &format!("{base}/v1/digest"), None);
    reply.body["digest"].as_str().unwrap().to_owned()
}

/// With `--auth`, every endpoint refuses a missing or unknown token (401) and a
/// token without the right (403), and changes nothing; the first token comes from
/// loopback while none exists; a revoked token stops working on every node.
#[test]
fn every_endpoint_needs_a_token_with_the_right() {
    let cluster = Cluster::start_with(2, "topology = \"mesh\"", &["--auth"]);
    let (a, b) = (cluster.url(0), cluster.url(1));
    let admin = create_token(&a, None, "root", "admin");
    // The localhost exception is gone once a token exists.
    let again = call_as(
        None,
        "POST",
        &format!("{a}/v1/tokens"),
        Some(r#"{"name":"x","rights":"admin"}"#),
    );
    assert_eq!(again.status, 401, "{}", again.text);
    let reader = create_token(&a, Some(&admin), "reader", "read:*");
    let orders = create_token(&a, Some(&admin), "orders", "read:orders,write:orders");
    let put = call_as(
        Some(&orders),
        "PUT",
        &format!("{a}/v1/docs/orders/o1"),
        Some(r#"{"n":1}"#),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let (name, _) = admin.split_once('.').unwrap();
    let unknown = format!("{name}.{}", "0".repeat(32));
    let upload = r#"{"device":"00112233445566778899aabbccddeeff","writes":[{"seq":1,"key":"u1","value":{}}]}"#;
    let endpoints: [(&str, &str, Option<&str>, &str); 18] = [
        ("GET", "/v1/docs/users/u1", None, "orders"),
        ("PUT", "/v1/docs/users/u1", Some(r#"{"n":1}"#), "reader"),
        ("DELETE", "/v1/docs/orders/o1", None, "reader"),
        ("POST", "/v1/docs/users", Some(r#"{"n":1}"#), "orders"),
        ("POST", "/v1/docs/c/k/ops", Some("[]"), "reader"),
        (
            "PUT",
            "/v1/collections/orders",
            Some(r#"{"policy":"lww"}"#),
            "orders",
        ),
        ("GET", "/v1/changes", None, "orders"),
        ("GET", "/v1/changes?collection=users", None, "orders"),
        ("POST", "/v1/devices/upload/users", Some(upload), "orders"),
        ("POST", "/v1/bulk/users", Some(r#"{"docs":[]}"#), "reader"),
        (
            "POST",
            "/v1/bulk/users/get",
            Some(r#"{"keys":[]}"#),
            "orders",
        ),
        ("GET", "/v1/conflicts", None, "orders"),
        ("POST", "/v1/conflicts/00/resolve", Some("{}"), "reader"),
        ("POST", "/v1/locks/orders/o1", Some("{}"), "reader"),
        ("POST", "/v1/cluster/reload", None, "reader"),
        (
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"y","rights":"admin"}"#),
            "orders",
        ),
        ("DELETE", "/v1/tokens/reader", None, "orders"),
        ("GET", "/v1/tokens", None, "reader"),
    ];
    let before = digest_as(&a, &admin);
    for (method, path, body, lacking) in endpoints {
        let url = format!("{a}{path}");
        let lacking = if lacking == "reader" {
            &reader
        } else {
            &orders
        };
        for (token, status) in [
            (None, 401),
            (Some(unknown.as_str()), 401),
            (Some(lacking.as_str()), 403),
        ] {
            let reply = call_as(token, method, &url, body);
            assert_eq!(
                reply.status, status,
                "{method} {path} with {token:?}: {}",
                reply.text
            );
            assert!(reply.body["message"].is_string(), "{}", reply.text);
        }
    }
    // A feed filtered to a collection needs only read on it.
    let own = call_as(
        Some(&orders),
        "GET",
        &format!("{a}/v1/changes?collection=orders"),
        None,
    );
    assert_eq!(own.status, 200, "{}", own.text);
    for path in ["/v1/status", "/v1/digest", "/metrics"] {
        assert_eq!(
            call_as(None, "GET", &format!("{a}{path}"), None).status,
            401
        );
        assert_eq!(
            call_as(Some(&reader), "GET", &format!("{a}{path}"), None).status,
            200
        );
    }
    assert_eq!(
        digest_as(&a, &admin),
        before,
        "a refused request changed something"
    );
    // The tokens replicate: the reader works on the other node too, and a
    // revocation made on one node reaches the other.
    let reader_on_b = || {
        let url = format!("{b}/v1/docs/orders/o1");
        call_as(Some(&reader), "GET", &url, None).status
    };
    wait_until("the reader token on b", Duration::from_secs(30), || {
        reader_on_b() == 200
    });
    let revoked = call_as(
        Some(&admin),
        "DELETE",
        &format!("{a}/v1/tokens/reader"),
        None,
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    wait_until("the revocation on b", Duration::from_secs(30), || {
        reader_on_b() == 401
    });
    let listed = call_as(Some(&admin), "GET", &format!("{b}/v1/tokens"), None);
    assert!(!listed.text.contains("sha256") && !listed.text.contains(&orders));
}

fn chorus(args: &[&str]) -> std::process::Output {
    Command::new(CHORUS).args(args).output().unwrap()
}

/// The API over TLS with tokens: the CLI trusts the cluster's CA, the first token
/// comes over TLS from loopback, plain HTTP and clients that do not trust the CA
/// get nothing, and such a node may listen beyond loopback without `--insecure`.
#[test]
fn the_api_serves_tokens_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let file = one_node_cluster_file(dir.path(), "127.0.0.1:0");
    let certs = dir.path().join("certs");
    let made = chorus(&[
        "cluster",
        "certs",
        "--cluster",
        file.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let tls_args = [
        "--auth",
        "--http-cert",
        &path("a.pem"),
        "--http-key",
        &path("a.key"),
    ];
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_at(data.path(), "127.0.0.1:0", &tls_args);
    let url = node.url.clone();
    assert!(url.starts_with("https://"), "{url}");
    let ca = path("ca.pem");
    let created = chorus(&[
        "token", "create", "--name", "root", "--rights", "admin", "--url", &url, "--ca", &ca,
    ]);
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let status = chorus(&["status", "--url", &url, "--ca", &ca, "--token", &token]);
    assert!(status.status.success(), "{status:?}");
    // Without the CA, the node's certificate is not trusted.
    let untrusted = chorus(&["status", "--url", &url, "--token", &token]);
    assert!(!untrusted.status.success(), "{untrusted:?}");
    // Plain HTTP to the TLS port gets no answer.
    let plain = url.replace("https://", "http://");
    assert!(request("GET", &format!("{plain}/v1/status"), None, &[]).is_err());
    // Tokens over TLS: the node may listen beyond loopback.
    let data = tempfile::tempdir().unwrap();
    let exposed = NodeProcess::start_at(data.path(), "0.0.0.0:0", &tls_args);
    assert!(exposed.url.starts_with("https://"));
}

/// A token that goes beyond its rate gets 429 with `Retry-After`; other tokens are
/// served meanwhile.
#[test]
fn a_token_beyond_its_rate_is_told_when_to_retry() {
    let data = tempfile::tempdir().unwrap();
    // One request per 100 s: the second within the test is always beyond it.
    let args = ["--auth", "--token-requests-per-s", "0.01"];
    let node = NodeProcess::start(data.path(), &args);
    let admin = create_token(&node.url, None, "root", "admin");
    let other = create_token(&node.url, Some(&admin), "other", "read:*");
    let status = format!("{}/v1/status", node.url);
    let limited = call_as(Some(&admin), "GET", &status, None);
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.body["error"], "rate_limited");
    assert!(
        limited.body["message"]
            .as_str()
            .unwrap()
            .contains("retry in")
    );
    assert_eq!(call_as(Some(&other), "GET", &status, None).status, 200);
}

/// `chorus reload` loads the certificates again: unreadable ones are refused with
/// the file named and change nothing; good ones are taken (a rotation).
#[test]
fn reload_loads_the_certificates_again() {
    let cluster = Cluster::start(2, "topology = \"mesh\"");
    let certs = cluster.certs.clone().unwrap();
    let key = certs.join("n0.key");
    let good = std::fs::read(&key).unwrap();
    std::fs::write(&key, b"not a key").unwrap();
    let refused = cluster.reload(0);
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("n0.key"), "{}", refused.text);
    std::fs::write(&key, good).unwrap();
    let taken = cluster.reload(0);
    assert_eq!(taken.status, 200, "{}", taken.text);
    put(&format!("{}/v1/docs/c/k", cluster.url(0)), r#"{"v":1}"#);
    cluster.wait_converged(Duration::from_secs(30));
}
