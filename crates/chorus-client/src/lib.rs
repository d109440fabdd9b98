//! A client for the Chorus HTTP API that fails over between nodes.
//!
//! ```no_run
//! use chorus_client::Client;
//! let client = Client::new(["http://127.0.0.1:7001", "http://127.0.0.1:7002"])?;
//! let context = client.put("notes", "n1", &serde_json::json!({"text": "hi"}), None)?;
//! let note = client.get("notes", "n1")?; // from whichever node answers
//! # Ok::<(), chorus_client::Error>(())
//! ```
//!
//! The client talks to one node at a time and moves to the next in its list when
//! that node is down. Every node is a leader, so moving never needs a failover of
//! the cluster; what a client may see after it moves is in `docs/clients.md`: its
//! own latest writes may not have reached the new node yet, and a write carrying a
//! context token from the old node still replaces exactly what it read.
//!
//! **Invariant:** a request is sent to the next node only when it cannot have taken
//! effect on the one before: that node could not be reached (no connection), or
//! answered 503 (it refused before writing). A write whose connection broke after it
//! was sent fails with [`Error::Uncertain`] instead of being sent twice; reads move
//! on either way.

use serde_json::Value;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The header carrying a context token with a write.
pub const CONTEXT_HEADER: &str = "Chorus-Context";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no node URL given")]
    NoNodes,
    #[error("cannot use the CA certificate: {0}")]
    BadCa(String),
    #[error("no node could be reached: {}", tried.iter().map(|(url, why)| format!("{url}: {why}")).collect::<Vec<_>>().join("; "))]
    Unreachable { tried: Vec<(String, String)> },
    /// The node answered with an error (`{"error", "message"}`, and `body`: the
    /// whole answer, which may say more).
    #[error("HTTP {status} ({code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    /// The connection broke after a write was sent: it may or may not have been
    /// applied. Read the document back before writing again.
    #[error(
        "the write to {url} may or may not have been applied ({reason}); read it back before retrying"
    )]
    Uncertain { url: String, reason: String },
    #[error("{url} answered something that is not JSON (HTTP {status}): {text}")]
    NotJson {
        url: String,
        status: u16,
        text: String,
    },
}

/// A client of a Chorus cluster, given the URLs of some of its nodes.
pub struct Client {
    urls: Vec<String>,
    /// The node in use: requests start there.
    current: AtomicUsize,
    agent: ureq::Agent,
    /// Headers sent with every request.
    headers: Vec<(String, String)>,
}

fn agent(roots: ureq::tls::RootCerts) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(60)))
        .tls_config(tls)
        .build()
        .into()
}

/// What one attempt at one node came to.
enum Attempt {
    Done(Result<Value, Error>),
    /// The request cannot have taken effect there: try the next node.
    NextNode(String),
}

impl Client {
    /// A client of the nodes at `urls` (`http://host:port`), tried in this order.
    pub fn new<I, S>(urls: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.into().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(Error::NoNodes);
        }
        let agent = agent(ureq::tls::RootCerts::WebPki);
        Ok(Client {
            urls,
            current: AtomicUsize::new(0),
            agent,
            headers: Vec::new(),
        })
    }

    /// Sends `name: value` with every request (a node forwarding a write marks it).
    /// Trusts only the CA certificates in `pem` for `https://` nodes (the cluster's
    /// `ca.pem`), instead of the public roots.
    pub fn with_ca(mut self, pem: &[u8]) -> Result<Client, Error> {
        let certificates = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::BadCa(format!("the CA file is not PEM: {e}")))?;
        if certificates.is_empty() {
            return Err(Error::BadCa("the CA file holds no certificate".into()));
        }
        self.agent = agent(ureq::tls::RootCerts::Specific(std::sync::Arc::new(
            certificates,
        )));
        Ok(self)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The URL of the node in use.
    pub fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends `method path` (e.g. `GET /v1/status`) with an optional JSON body and
    /// context token, failing over as the module says; answers the JSON reply.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        context: Option<&str>,
    ) -> Result<Value, Error> {
        let start = self.current.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        for step in 0..self.urls.len() {
            let index = (start + step) % self.urls.len();
            let url = &self.urls[index];
            match self.attempt(url, method, path, body, context) {
                Attempt::Done(result) => {
                    self.current.store(index, Ordering::Relaxed);
                    return result;
                }
                Attempt::NextNode(why) => tried.push((url.clone(), why)),
            }
        }
        Err(Error::Unreachable { tried })
    }

    fn attempt(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        context: Option<&str>,
    ) -> Attempt {
        let url = format!("{base}{path}");
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = match request.body(body.unwrap_or_default().to_vec()) {
            Ok(request) => request,
            Err(e) => {
                return Attempt::Done(Err(Error::Api {
                    status: 0,
                    code: "bad_request".into(),
                    message: format!("cannot build the request: {e}"),
                    body: Value::Null,
                }));
            }
        };
        let read_only = method == "GET" || method == "HEAD";
        let mut response = match self.agent.run(request) {
            Ok(response) => response,
            Err(e) if read_only || !was_sent(&e) => return Attempt::NextNode(e.to_string()),
            Err(e) => {
                return Attempt::Done(Err(Error::Uncertain {
                    url,
                    reason: e.to_string(),
                }));
            }
        };
        let status = response.status().as_u16();
        if status == 503 {
            return Attempt::NextNode("HTTP 503: the node cannot serve now".into());
        }
        let text = match response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
        {
            Ok(text) => text,
            Err(e) if read_only => return Attempt::NextNode(e.to_string()),
            Err(e) => {
                // The node answered, so the write was decided; only its reply is lost.
                return Attempt::Done(Err(Error::Uncertain {
                    url,
                    reason: format!("the reply was cut off: {e}"),
                }));
            }
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            return Attempt::Done(Err(Error::NotJson { url, status, text }));
        };
        if !(200..300).contains(&status) {
            return Attempt::Done(Err(Error::Api {
                status,
                code: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or(&text).to_owned(),
                body: value,
            }));
        }
        Attempt::Done(Ok(value))
    }

    /// Streams the body of `GET path` from the first node (no failover: it is that
    /// node's data) into `out`, e.g. a backup; returns the bytes written.
    pub fn download(&self, path: &str, out: &mut impl std::io::Write) -> Result<u64, Error> {
        let url = format!("{}{path}", self.urls[0]);
        let mut request = ureq::http::Request::builder().method("GET").uri(&url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let unreachable = |why: String| Error::Unreachable {
            tried: vec![(url.clone(), why)],
        };
        let request = request.body(()).map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .agent
            .run(request)
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status != 200 {
            let text = body.read_to_string().unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Error::Api {
                status,
                code: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or(&text).to_owned(),
                body: value,
            });
        }
        std::io::copy(&mut body.as_reader(), out)
            .map_err(|e| unreachable(format!("the download was cut off: {e}")))
    }

    /// Reads a document: `None` when it is absent or deleted.
    pub fn get(&self, collection: &str, key: &str) -> Result<Option<Value>, Error> {
        match self.call("GET", &doc_path(collection, key), None, None) {
            Ok(doc) => Ok(Some(doc)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a document; with `context` (from a read) it replaces exactly the
    /// versions that read saw. Answers the new context.
    pub fn put(
        &self,
        collection: &str,
        key: &str,
        value: &Value,
        context: Option<&str>,
    ) -> Result<String, Error> {
        let body = value.to_string();
        let reply = self.call(
            "PUT",
            &doc_path(collection, key),
            Some(body.as_bytes()),
            context,
        )?;
        Ok(reply["context"].as_str().unwrap_or_default().to_owned())
    }

    /// Deletes a document (a tombstone that replicates). Answers the new context.
    pub fn delete(
        &self,
        collection: &str,
        key: &str,
        context: Option<&str>,
    ) -> Result<String, Error> {
        let reply = self.call("DELETE", &doc_path(collection, key), None, context)?;
        Ok(reply["context"].as_str().unwrap_or_default().to_owned())
    }

    /// `GET /v1/status` of the node in use.
    pub fn status(&self) -> Result<Value, Error> {
        self.call("GET", "/v1/status", None, None)
    }
}

/// Whether a failed request may have reached the node (it was connected).
fn was_sent(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::BadUri(_) => false,
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => false,
        ureq::Error::Io(e) => !matches!(
            e.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::NotFound
        ),
        _ => true,
    }
}

/// `/v1/docs/{collection}/{key}` with both segments percent-encoded.
pub fn doc_path(collection: &str, key: &str) -> String {
    format!("/v1/docs/{}/{}", segment(collection), segment(key))
}

/// Percent-encodes one path segment (keys may hold '/', spaces, anything).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-request HTTP server on a free port: it reads the request, then answers
    /// `status` and `body`, or closes without answering when `status` is empty.
    fn answer_once(status: &'static str, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            if status.is_empty() {
                return;
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        });
        url
    }

    /// A port nothing listens on.
    fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    /// A refused connection and a 503 move the request to the next node, which then
    /// stays in use; API errors do not move it.
    #[test]
    fn fails_over_only_when_the_request_cannot_have_taken_effect() {
        let unavailable = answer_once(
            "503 Service Unavailable",
            r#"{"error":"store_failed","message":"x"}"#,
        );
        let alive = answer_once("200 OK", r#"{"context":"abc"}"#);
        let client = Client::new([dead_url(), unavailable, alive.clone()]).unwrap();
        let context = client
            .put("c", "k", &serde_json::json!({"a": 1}), None)
            .unwrap();
        assert_eq!(context, "abc");
        assert_eq!(client.url(), alive);

        let refusing = answer_once(
            "400 Bad Request",
            r#"{"error":"bad_request","message":"no"}"#,
        );
        let second = answer_once("200 OK", "{}");
        let client = Client::new([refusing, second]).unwrap();
        match client.call("GET", "/v1/status", None, None) {
            Err(Error::Api {
                status: 400, code, ..
            }) => assert_eq!(code, "bad_request"),
            other => panic!("{other:?}"),
        }
        let client = Client::new([dead_url(), dead_url()]).unwrap();
        match client.status() {
            Err(Error::Unreachable { tried }) => assert_eq!(tried.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Client::new(Vec::<String>::new()),
            Err(Error::NoNodes)
        ));
    }

    /// A write whose connection breaks after it was sent is uncertain, not retried
    /// elsewhere (it could be applied twice).
    #[test]
    fn a_write_cut_off_after_sending_is_uncertain() {
        let url = answer_once("", "");
        let never = answer_once("200 OK", r#"{"context":"second"}"#);
        let client = Client::new([url, never]).unwrap();
        match client.put("c", "k", &serde_json::json!(1), None) {
            Err(Error::Uncertain { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
