//! Mutual TLS between the nodes of a cluster: who may open a peer connection, and
//! who is on the other end.
//!
//! ```text
//!  chorus cluster certs ─▶ DIR/ca.pem, ca.key (the cluster CA; keep ca.key off the nodes)
//!                          DIR/NAME.pem, NAME.key (one per node: its identity
//!                          NAME.node.chorus, and the hosts of its addresses)
//!  chorus serve --certs DIR ─▶ PeerTls::load(DIR, me)
//!    dial b:   TLS as client, expects a certificate for "b"      ─┐ then Hello both ways;
//!    accept:   TLS as server, demands a certificate of the CA    ─┘ the Hello's name must be
//!                                                                   the certificate's name
//! ```
//!
//! **Invariant:** with TLS on, no frame of a peer is read before (1) its certificate
//! chains to the cluster's CA and (2) the certificate holds the identity
//! `NAME.node.chorus` of the name its `Hello` claims (checked by the dialer through
//! the server name, by the acceptor with [`PeerTls::certifies`]). A process with no
//! certificate, or with another node's, cannot speak as a member. Identities live
//! under their own suffix so that a node's host names (also in its certificate, for
//! HTTPS clients) can never pass for another node's name.
//!
//! Certificates rotate without a restart: `chorus reload` loads the files again (new
//! connections use them; established ones keep theirs).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS setup that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error} (create the files with `chorus cluster certs`)")]
    Read { path: PathBuf, error: String },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: String },
    #[error("{path} holds no usable {what}")]
    Unusable { path: PathBuf, what: &'static str },
    #[error("node name {0:?} cannot be a certificate name: use letters, digits and '-'")]
    BadName(String),
    #[error("cannot make the certificates: {0}")]
    Generate(String),
    #[error("the TLS settings are refused: {0}")]
    Config(String),
}

/// The name a node's certificate proves it by.
fn identity(node: &str) -> String {
    format!("{node}.node.chorus")
}

/// This node's TLS settings for peer connections.
pub struct PeerTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

/// The paths of a node's files in a certificates folder.
fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn read_err(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |error| TlsError::Read {
        path: path.to_owned(),
        error: error.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Unusable {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The files of one identity: the CA it trusts, its certificate, its key.
struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn load(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(ca_path)? {
            roots.add(ca).map_err(|_| TlsError::Unusable {
                path: ca_path.to_owned(),
                what: "CA certificate",
            })?;
        }
        Ok(Identity {
            roots: Arc::new(roots),
            chain: certificates(cert_path)?,
            key: PrivateKeyDer::from_pem_file(key_path).map_err(read_err(key_path))?,
        })
    }

    fn client(self) -> Result<ClientConfig, TlsError> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_root_certificates(self.roots)
            .with_client_auth_cert(self.chain, self.key)
            .map_err(config_err)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The settings of a TLS client that trusts the CA in `ca_path` and presents the
/// certificate and key in `cert_path` and `key_path` (what a node dials with; tests
/// build impostors with it).
pub fn client_config(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<ClientConfig, TlsError> {
    Identity::load(ca_path, cert_path, key_path)?.client()
}

/// The settings of a TLS server presenting the certificate chain in `cert_path`
/// with the key in `key_path`, asking clients for no certificate (the HTTP API:
/// clients prove themselves with tokens).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let chain = certificates(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(read_err(key_path))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_err)
}

impl PeerTls {
    /// Loads node `me`'s certificate and key and the cluster's CA from `dir`.
    pub fn load(dir: &Path, me: &str) -> Result<PeerTls, TlsError> {
        let (ca_path, cert_path, key_path) = paths(dir, me);
        let identity = Identity::load(&ca_path, &cert_path, &key_path)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(identity.roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(config_err)?;
        let client = identity.client()?;
        Ok(PeerTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Opens TLS on a dialled connection to node `peer`: the peer must present a
    /// certificate of the cluster's CA for that name.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        peer: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(identity(peer))
            .map_err(|_| std::io::Error::other(TlsError::BadName(peer.to_owned())))?;
        self.connector.connect(name, tcp).await
    }

    /// Opens TLS on an accepted connection: the peer must present a certificate of
    /// the cluster's CA. Returns the stream and the peer's certificate.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        CertificateDer<'static>,
    )> {
        let stream = self.acceptor.accept(tcp).await?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| std::io::Error::other("the peer presented no certificate"))?;
        Ok((stream, certificate))
    }

    /// Whether `certificate` (already verified against the CA) names node `name`.
    pub fn certifies(certificate: &CertificateDer<'_>, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(identity(name)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(certificate)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Generated {
    /// The CA was created (not found in the folder).
    pub new_ca: bool,
    /// Nodes given a certificate (those that had none).
    pub nodes: Vec<String>,
}

/// The CA's settings: the same every time, so a CA read back from its key signs
/// certificates that chain to the `ca.pem` written first.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Chorus cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    Ok(params)
}

/// Valid from the start of this year for ten years.
fn validity(params: &mut CertificateParams) {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days to a civil year, near enough for a start of validity on January 1st.
    let year = 1970 + (seconds / 86_400 * 400 / 146_097) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let err = |error: std::io::Error| TlsError::Write {
        path: path.to_owned(),
        error: error.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// A node to make a certificate for: its name, and the hosts (names or IP
/// addresses) HTTPS clients reach it by.
#[derive(Clone, Debug)]
pub struct NodeCertificate {
    pub name: String,
    pub hosts: Vec<String>,
}

/// Writes into `dir` the cluster's CA (`ca.pem`, `ca.key`) unless it is there, and
/// a certificate and key for every node of `nodes` that has none, signed by it.
/// Existing files are never overwritten (delete a node's files to renew them).
pub fn generate(nodes: &[NodeCertificate], dir: &Path) -> Result<Generated, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    for node in nodes {
        let name = &node.name;
        let dns_label = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-');
        if !dns_label || ServerName::try_from(identity(name)).is_err() {
            return Err(TlsError::BadName(name.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Write {
        path: dir.to_owned(),
        error: e.to_string(),
    })?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut generated = Generated::default();
    let ca_keys = if ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key).map_err(|e| TlsError::Read {
            path: ca_key.clone(),
            error: e.to_string(),
        })?;
        KeyPair::from_pem(&pem).map_err(gen_err)?
    } else {
        let keys = KeyPair::generate().map_err(gen_err)?;
        let ca = ca_params()?.self_signed(&keys).map_err(gen_err)?;
        write(&ca_key, &keys.serialize_pem(), true)?;
        write(&ca_pem, &ca.pem(), false)?;
        generated.new_ca = true;
        keys
    };
    let ca = ca_params()?.self_signed(&ca_keys).map_err(gen_err)?;
    for node in nodes {
        let name = &node.name;
        let (_, cert_path, key_path) = paths(dir, name);
        if cert_path.exists() {
            continue;
        }
        let mut names = vec![identity(name)];
        names.extend(node.hosts.iter().filter(|h| !h.is_empty()).cloned());
        names.dedup();
        let mut params = CertificateParams::new(names).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params);
        let keys = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&keys, &ca, &ca_keys).map_err(gen_err)?;
        write(&key_path, &keys.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        generated.nodes.push(name.clone());
    }
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn nodes(n: &[&str]) -> Vec<NodeCertificate> {
        n.iter()
            .map(|name| NodeCertificate {
                name: name.to_string(),
                // Every node's host is named like another node: it must not pass
                // for that node.
                hosts: vec!["127.0.0.1".into(), "a".into()],
            })
            .collect()
    }

    #[test]
    fn generated_certificates_load_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate(&nodes(&["a", "b"]), dir.path()).unwrap();
        assert_eq!(
            made,
            Generated {
                new_ca: true,
                nodes: names(&["a", "b"])
            }
        );
        PeerTls::load(dir.path(), "a").unwrap();
        let b = certificates(&dir.path().join("b.pem")).unwrap();
        assert!(PeerTls::certifies(&b[0], "b"));
        assert!(!PeerTls::certifies(&b[0], "a"));
        // A node added later gets a certificate of the same CA; nothing is rewritten.
        let again = generate(&nodes(&["a", "b", "c"]), dir.path()).unwrap();
        assert_eq!(
            again,
            Generated {
                new_ca: false,
                nodes: names(&["c"])
            }
        );
        PeerTls::load(dir.path(), "c").unwrap();
        assert!(matches!(
            generate(&nodes(&["bad name"]), dir.path()),
            Err(TlsError::BadName(_))
        ));
        assert!(matches!(
            PeerTls::load(dir.path(), "d"),
            Err(TlsError::Read { .. })
        ));
    }
}
