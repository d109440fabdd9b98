//! The client subcommands: one HTTP request each, the JSON answer on stdout.

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Target {
    /// The node's HTTP address.
    #[arg(long, env = "CHORUS_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
}

/// Percent-encodes one path segment (keys may hold '/', spaces, anything).
fn segment(text: &str) -> String {
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Sends one request and returns the JSON answer, or the API's error message.
pub fn call(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    context: Option<&str>,
) -> anyhow::Result<Value> {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(context) = context {
        request = request.header("Chorus-Context", context);
    }
    if body.is_some() {
        request = request.header("Content-Type", "application/json");
    }
    let request = request
        .body(body.unwrap_or_default().to_vec())
        .context("building the request")?;
    let mut response = agent().run(request).with_context(|| {
        format!("cannot reach {url}; is the node running? (set --url or CHORUS_URL)")
    })?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()?;
    let value: Value = serde_json::from_str(&text).map_err(|_| anyhow!("HTTP {status}: {text}"))?;
    if !status.is_success() {
        let message = value["message"].as_str().unwrap_or(&text);
        bail!("HTTP {}: {message}", status.as_u16());
    }
    Ok(value)
}

fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn doc_url(target: &Target, collection: &str, key: &str) -> String {
    format!(
        "{}/v1/docs/{}/{}",
        target.url.trim_end_matches('/'),
        segment(collection),
        segment(key)
    )
}

pub fn get(target: &Target, collection: &str, key: &str) -> anyhow::Result<()> {
    print(&call("GET", &doc_url(target, collection, key), None, None)?)
}

pub fn put(
    target: &Target,
    collection: &str,
    key: &str,
    document: &str,
    context: Option<&str>,
) -> anyhow::Result<()> {
    let body = if document == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .context("reading the document from stdin")?;
        buffer
    } else {
        document.as_bytes().to_vec()
    };
    print(&call(
        "PUT",
        &doc_url(target, collection, key),
        Some(&body),
        context,
    )?)
}

pub fn delete(
    target: &Target,
    collection: &str,
    key: &str,
    context: Option<&str>,
) -> anyhow::Result<()> {
    print(&call(
        "DELETE",
        &doc_url(target, collection, key),
        None,
        context,
    )?)
}

pub fn status(target: &Target) -> anyhow::Result<()> {
    print(&call(
        "GET",
        &format!("{}/v1/status", target.url.trim_end_matches('/')),
        None,
        None,
    )?)
}

pub fn conflicts(target: &Target, limit: usize) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/conflicts?limit={limit}",
        target.url.trim_end_matches('/')
    );
    print(&call("GET", &url, None, None)?)
}

#[cfg(test)]
mod tests {
    /// Path segments keep unreserved characters and escape everything else.
    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(super::segment("a-b_c.d~1"), "a-b_c.d~1");
        assert_eq!(super::segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(super::segment("é"), "%C3%A9");
    }
}
