//! The client subcommands: one request each (through `chorus-client`, which fails
//! over between the nodes given), the JSON answer on stdout.

use anyhow::{Context as _, anyhow};
use chorus_client::{Client, Error, doc_path, segment};
use serde_json::Value;
use std::io::Read;

#[derive(clap::Args)]
pub struct Target {
    /// The node's HTTP address; a comma-separated list moves to the next node when
    /// one is down.
    #[arg(
        long,
        env = "CHORUS_URL",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ','
    )]
    pub url: Vec<String>,
    /// The access token (`NAME.SECRET`, from `chorus token create`), for nodes that
    /// require one.
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) to trust for `https://` nodes, e.g. the cluster's
    /// `ca.pem` from `chorus cluster certs` (default: the public roots).
    #[arg(long, env = "CHORUS_CA")]
    pub ca: Option<std::path::PathBuf>,
}

impl Target {
    fn client(&self) -> anyhow::Result<Client> {
        self.client_of(self.url.iter().cloned())
    }

    /// A client of `urls` carrying this target's token.
    fn client_of(&self, urls: impl IntoIterator<Item = String>) -> anyhow::Result<Client> {
        let mut client = Client::new(urls)?;
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            client = client.with_ca(&pem)?;
        }
        Ok(match &self.token {
            Some(token) => client.with_header("authorization", &format!("Bearer {token}")),
            None => client,
        })
    }

    /// Sends one request (`path` after the node's URL) and returns the JSON answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        context: Option<&str>,
    ) -> anyhow::Result<Value> {
        call(&self.client()?, method, path, body, context)
    }
}

/// Sends one request through `client`; errors say what to do next.
pub fn call(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    context: Option<&str>,
) -> anyhow::Result<Value> {
    client
        .call(method, path, body, context)
        .map_err(|error| match error {
            Error::Unreachable { .. } => {
                anyhow!("{error}; is the node running? (set --url or CHORUS_URL)")
            }
            other => anyhow!(other),
        })
}

fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn get(target: &Target, collection: &str, key: &str) -> anyhow::Result<()> {
    print(&target.call("GET", &doc_path(collection, key), None, None)?)
}

/// `document`, or stdin when it is `-`.
fn document_or_stdin(document: &str) -> anyhow::Result<Vec<u8>> {
    if document != "-" {
        return Ok(document.as_bytes().to_vec());
    }
    let mut buffer = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buffer)
        .context("reading the document from stdin")?;
    Ok(buffer)
}

/// How a write relates to what is there.
pub enum Against<'a> {
    /// The versions this context token covers.
    Context(&'a str),
    /// What the node shows now: read first, then write with that read's context.
    Current,
    /// Nothing: concurrent with every version (the API's write without context).
    Blind,
}

impl Against<'_> {
    /// The context token to send, reading the document first for `Current`.
    fn context(
        &self,
        target: &Target,
        collection: &str,
        key: &str,
    ) -> anyhow::Result<Option<String>> {
        match self {
            Against::Context(token) => Ok(Some((*token).to_owned())),
            Against::Blind => Ok(None),
            Against::Current => {
                let read = target
                    .client()?
                    .call("GET", &doc_path(collection, key), None, None);
                match read {
                    Ok(doc) => Ok(doc["context"].as_str().map(str::to_owned)),
                    // Absent or deleted: the 404 carries the context to write against.
                    Err(Error::Api {
                        status: 404, body, ..
                    }) => Ok(body["context"].as_str().map(str::to_owned)),
                    Err(error) => Err(anyhow!(error).context("reading the document first")),
                }
            }
        }
    }
}

pub fn put(
    target: &Target,
    collection: &str,
    key: &str,
    document: &str,
    against: Against<'_>,
) -> anyhow::Result<()> {
    let body = document_or_stdin(document)?;
    let context = against.context(target, collection, key)?;
    let path = doc_path(collection, key);
    print(&target.call("PUT", &path, Some(&body), context.as_deref())?)
}

pub fn delete(
    target: &Target,
    collection: &str,
    key: &str,
    against: Against<'_>,
) -> anyhow::Result<()> {
    let context = against.context(target, collection, key)?;
    let path = doc_path(collection, key);
    print(&target.call("DELETE", &path, None, context.as_deref())?)
}

/// What `chorus list` prints, one line per document.
pub enum Listing {
    Keys,
    KeysAsJson,
    Documents,
}

/// `chorus list`: every key of a collection (page by page), one a line.
pub fn list(
    target: &Target,
    collection: &str,
    prefix: &str,
    listing: Listing,
) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/docs/{}?prefix={}&limit=1000",
            segment(collection),
            segment(prefix)
        );
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", segment(after)));
        }
        if matches!(listing, Listing::Documents) {
            path.push_str("&include_docs=true");
        }
        let page = target.call("GET", &path, None, None)?;
        let field = match listing {
            Listing::Documents => "docs",
            Listing::Keys | Listing::KeysAsJson => "keys",
        };
        for item in page[field].as_array().into_iter().flatten() {
            match (&listing, item.as_str()) {
                (Listing::Keys, Some(key)) => println!("{key}"),
                _ => println!("{item}"),
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

/// `chorus changes`: the change feed as JSON lines, from `since`; with `follow`, it
/// keeps waiting for more (long polls) until interrupted.
pub fn changes(
    target: &Target,
    since: &str,
    collection: Option<&str>,
    include_docs: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let mut cursor = since.to_owned();
    loop {
        let mut path = format!("/v1/changes?since={}&limit=1000", segment(&cursor));
        if let Some(collection) = collection {
            path.push_str(&format!("&collection={}", segment(collection)));
        }
        if include_docs {
            path.push_str("&include_docs=true");
        }
        if follow {
            path.push_str("&feed=longpoll&timeout_ms=30000");
        }
        let page = target.call("GET", &path, None, None)?;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        for change in &changes {
            println!("{change}");
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        cursor = page["next"].as_str().unwrap_or(&cursor).to_owned();
        if !follow && changes.is_empty() {
            eprintln!("next: {cursor}");
            return Ok(());
        }
    }
}

/// `chorus collections`: every collection and its policy.
pub fn collections(target: &Target, json: bool) -> anyhow::Result<()> {
    let answer = target.call("GET", "/v1/collections", None, None)?;
    if json {
        return print(&answer);
    }
    println!("{:<32} {:<10} SETTINGS", "COLLECTION", "POLICY");
    for c in answer["collections"].as_array().into_iter().flatten() {
        let settings = if c["explicit"] == true {
            "set"
        } else {
            "default"
        };
        println!(
            "{:<32} {:<10} {settings}",
            c["name"].as_str().unwrap_or_default(),
            c["policy"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `chorus collections show C`.
pub fn show_collection(target: &Target, collection: &str) -> anyhow::Result<()> {
    print(&target.call(
        "GET",
        &format!("/v1/collections/{}", segment(collection)),
        None,
        None,
    )?)
}

/// `chorus collections set C --policy P`: changes the policy, keeping the other
/// settings.
pub fn set_collection(target: &Target, collection: &str, policy: &str) -> anyhow::Result<()> {
    let path = format!("/v1/collections/{}", segment(collection));
    let mut settings = target.call("GET", &path, None, None)?;
    if let Some(object) = settings.as_object_mut() {
        object.remove("name");
        object.remove("explicit");
        object.insert("policy".into(), serde_json::json!(policy));
    }
    print(&target.call("PUT", &path, Some(settings.to_string().as_bytes()), None)?)
}

pub fn ops(target: &Target, collection: &str, key: &str, operations: &str) -> anyhow::Result<()> {
    let body = document_or_stdin(operations)?;
    let path = format!("{}/ops", doc_path(collection, key));
    print(&target.call("POST", &path, Some(&body), None)?)
}

/// `chorus status`: every node given (not only the first that answers), as a table
/// of its peers (connected, lag) and links; `--json` prints the answers.
pub fn status(target: &Target, json: bool) -> anyhow::Result<()> {
    let answers: Vec<(String, anyhow::Result<Value>)> = target
        .url
        .iter()
        .map(|url| {
            let answer = target
                .client_of([url.clone()])
                .and_then(|client| call(&client, "GET", "/v1/status", None, None));
            (url.clone(), answer)
        })
        .collect();
    if json {
        let all: Vec<Value> = answers
            .iter()
            .map(|(url, answer)| match answer {
                Ok(status) => status.clone(),
                Err(error) => serde_json::json!({"url": url, "error": format!("{error:#}")}),
            })
            .collect();
        return print(&Value::Array(all));
    }
    println!(
        "{:<16} {:<8} {:<16} {:>9} {:>8} {:>8}  LINKS",
        "NODE", "LAST SEQ", "PEER", "CONNECTED", "LAG OPS", "LAG MS"
    );
    for (url, answer) in &answers {
        let status = match answer {
            Ok(status) => status,
            Err(error) => {
                println!("{url:<16} did not answer: {error:#}");
                continue;
            }
        };
        let node = status["node"].as_str().unwrap_or(url);
        let seq = status["last_seq"].to_string();
        let links = &status["links"];
        let names = |field: &str| -> String {
            let list: Vec<&str> = links[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            list.join(",")
        };
        let links = if links.is_null() {
            String::new()
        } else {
            let unreachable = names("unreachable");
            let mut text = format!("linked {}", names("actual"));
            if !unreachable.is_empty() {
                text.push_str(&format!("; unreachable {unreachable}"));
            }
            text
        };
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        if peers.is_empty() {
            println!(
                "{node:<16} {seq:<8} {:<16} {:>9} {:>8} {:>8}  {links}",
                "-", "-", "-", "-"
            );
        }
        for (i, peer) in peers.iter().enumerate() {
            let (node, seq, links) = if i == 0 {
                (node, seq.as_str(), links.as_str())
            } else {
                ("", "", "")
            };
            println!(
                "{node:<16} {seq:<8} {:<16} {:>9} {:>8} {:>8}  {links}",
                peer["name"].as_str().unwrap_or(""),
                if peer["connected"] == true {
                    "yes"
                } else {
                    "no"
                },
                peer["lag_ops"],
                peer["lag_ms"],
            );
        }
    }
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} nodes did not answer",
        answers.len()
    );
    Ok(())
}

/// Which conflict records `chorus conflicts` lists.
pub struct ConflictsFilter<'a> {
    pub collection: Option<&'a str>,
    pub key: Option<&'a str>,
    pub after: Option<&'a str>,
    pub limit: usize,
}

pub fn conflicts(target: &Target, filter: &ConflictsFilter<'_>) -> anyhow::Result<()> {
    let mut path = format!("/v1/conflicts?limit={}", filter.limit);
    for (name, value) in [
        ("collection", filter.collection),
        ("key", filter.key),
        ("after", filter.after),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{name}={}", segment(value)));
        }
    }
    print(&target.call("GET", &path, None, None)?)
}

pub fn show_conflict(target: &Target, id: &str) -> anyhow::Result<()> {
    print(&target.call("GET", &format!("/v1/conflicts/{}", segment(id)), None, None)?)
}

pub fn resolve_conflict(
    target: &Target,
    id: &str,
    value: Option<&str>,
    pick: Option<&str>,
) -> anyhow::Result<()> {
    let body = match (value, pick) {
        (Some(document), _) => {
            let document = document_or_stdin(document)?;
            let value: Value =
                serde_json::from_slice(&document).context("--value is not a JSON document")?;
            serde_json::json!({ "value": value })
        }
        (None, Some(dot)) => serde_json::json!({ "pick": dot }),
        (None, None) => anyhow::bail!("give --value or --pick"),
    };
    let path = format!("/v1/conflicts/{}/resolve", segment(id));
    print(&target.call("POST", &path, Some(body.to_string().as_bytes()), None)?)
}

/// `chorus token create`: prints the new token (shown once, never stored).
pub fn create_token(target: &Target, name: &str, rights: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"name": name, "rights": rights});
    let answer = target.call(
        "POST",
        "/v1/tokens",
        Some(body.to_string().as_bytes()),
        None,
    )?;
    let token = answer["token"].as_str().unwrap_or_default();
    eprintln!("token {name:?} with rights {rights}; it is shown only now:");
    println!("{token}");
    Ok(())
}

/// `chorus token revoke`.
pub fn revoke_token(target: &Target, name: &str) -> anyhow::Result<()> {
    let path = format!("/v1/tokens/{}", segment(name));
    print(&target.call("DELETE", &path, None, None)?)
}

/// `chorus token list`.
pub fn list_tokens(target: &Target) -> anyhow::Result<()> {
    print(&target.call("GET", "/v1/tokens", None, None)?)
}

/// Asks every node given to re-read its cluster file (not only the first that
/// answers: each node reloads its own copy).
pub fn reload(target: &Target) -> anyhow::Result<()> {
    for url in &target.url {
        let answer = call(
            &target.client_of([url.clone()])?,
            "POST",
            "/v1/cluster/reload",
            None,
            None,
        )
        .with_context(|| format!("reloading {url}"))?;
        println!("{url}: {answer}");
    }
    Ok(())
}

/// `chorus export`: every collection's settings, then every present document, as
/// JSON lines on stdout (`{"collection", "settings"}`, then `{"collection", "key",
/// "value"}` or, for a document with siblings, `{"collection", "key", "versions"}`).
/// Reserved collections are not exported.
pub fn export(target: &Target) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    let collections = target.call("GET", "/v1/collections", None, None)?;
    for c in collections["collections"].as_array().into_iter().flatten() {
        if c["explicit"] == true {
            let mut settings = c.clone();
            let name = settings["name"].take();
            if let Some(object) = settings.as_object_mut() {
                object.remove("name");
                object.remove("explicit");
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({"collection": name, "settings": settings})
            )?;
        }
    }
    let (mut cursor, mut documents) = ("0".to_owned(), 0u64);
    loop {
        let path = format!(
            "/v1/changes?since={}&limit=1000&include_docs=true",
            segment(&cursor)
        );
        let page = target.call("GET", &path, None, None)?;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        for change in changes.iter().filter(|c| c["deleted"] == false) {
            let doc = &change["doc"];
            let mut line =
                serde_json::json!({"collection": change["collection"], "key": change["key"]});
            if doc.get("value").is_some() {
                line["value"] = doc["value"].clone();
            } else {
                let versions: Vec<Value> = doc["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.get("value").cloned())
                    .collect();
                line["versions"] = Value::Array(versions);
            }
            writeln!(out, "{line}")?;
            documents += 1;
        }
        if changes.is_empty() {
            break;
        }
        cursor = page["next"].as_str().unwrap_or(&cursor).to_owned();
    }
    out.flush()?;
    eprintln!("exported {documents} documents");
    Ok(())
}

/// `chorus import`: JSON lines of `chorus export` from stdin: settings first, then
/// documents in bulk requests of 1,000 (each written blind: a version per value).
pub fn import(target: &Target) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let mut pending: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let (mut written, mut refused) = (0u64, 0u64);
    let mut flush = |collection: &str, docs: &mut Vec<Value>| -> anyhow::Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({"docs": std::mem::take(docs)}).to_string();
        let answer = target.call(
            "POST",
            &format!("/v1/bulk/{}", segment(collection)),
            Some(body.as_bytes()),
            None,
        )?;
        for result in answer["results"].as_array().into_iter().flatten() {
            if result.get("error").is_some() {
                refused += 1;
                eprintln!(
                    "{collection}/{}: {}",
                    result["key"].as_str().unwrap_or(""),
                    result["message"]
                );
            } else {
                written += 1;
            }
        }
        Ok(())
    };
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON", number + 1))?;
        let collection = item["collection"]
            .as_str()
            .with_context(|| format!("line {}: no \"collection\"", number + 1))?
            .to_owned();
        if let Some(settings) = item.get("settings") {
            let path = format!("/v1/collections/{}", segment(&collection));
            target.call("PUT", &path, Some(settings.to_string().as_bytes()), None)?;
            continue;
        }
        let values: Vec<Value> = match (item.get("value"), item.get("versions")) {
            (Some(value), _) => vec![value.clone()],
            (None, Some(Value::Array(versions))) => versions.clone(),
            _ => anyhow::bail!("line {}: neither \"value\" nor \"versions\"", number + 1),
        };
        let docs = pending.entry(collection.clone()).or_default();
        docs.extend(
            values
                .into_iter()
                .map(|value| serde_json::json!({"key": item["key"], "value": value})),
        );
        if docs.len() >= 1000 {
            flush(&collection, docs)?;
        }
    }
    for (collection, docs) in &mut pending {
        flush(collection, docs)?;
    }
    eprintln!("imported {written} versions; {refused} refused");
    anyhow::ensure!(refused == 0, "{refused} versions were refused (above)");
    Ok(())
}

/// `chorus backup`: a consistent copy of one node's store, written to `out` (made
/// durable before the command succeeds).
pub fn backup(target: &Target, out: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.exists(),
        "{} exists; give a new file (a backup never overwrites)",
        out.display()
    );
    let client = target.client_of(target.url.first().cloned())?;
    let partial = out.with_extension("partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let written = client.download("/v1/backup", &mut file);
    let finished = written.map_err(anyhow::Error::from).and_then(|bytes| {
        file.sync_all()?;
        std::fs::rename(&partial, out)?;
        Ok(bytes)
    });
    match finished {
        Ok(bytes) => {
            eprintln!(
                "backup of {} written to {} ({bytes} bytes)",
                client.url(),
                out.display()
            );
            Ok(())
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error.context("taking the backup"))
        }
    }
}
