//! `docs/openapi.json` stays true: every route the router serves is described, every
//! operation described is served, and no method beyond those described is.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chorus_server::{ServerConfig, router};
use serde_json::Value;
use std::collections::BTreeSet;
use tower::ServiceExt;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The route paths the router is built with, from its source.
fn routed_paths() -> BTreeSet<String> {
    let source = include_str!("../src/routes.rs");
    source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

/// A concrete URL for a described path.
fn concrete(path: &str) -> String {
    path.replace("{collection}", "c")
        .replace("{key}", "k")
        .replace("{id}", &"0".repeat(32))
        .replace("{name}", "t")
}

#[tokio::test]
async fn the_description_matches_the_router() {
    let spec = spec();
    let described = spec["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = described.keys().cloned().collect();
    assert_eq!(
        documented,
        routed_paths(),
        "routes and docs/openapi.json differ"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = chorus_node::open(dir.path().join("node.redb")).unwrap();
    let app = router(node, ServerConfig::default());
    for (path, operations) in described {
        let methods: BTreeSet<String> = operations.as_object().unwrap().keys().cloned().collect();
        for method in ["get", "put", "post", "delete"] {
            let request = Request::builder()
                .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
                .uri(concrete(path))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            // A live stream does not end: its status says enough.
            let streams = response
                .headers()
                .get("content-type")
                .is_some_and(|t| t == "text/event-stream");
            let bytes = match streams {
                true => Default::default(),
                false => axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap(),
            };
            let text = String::from_utf8_lossy(&bytes);
            if methods.contains(method) {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("no such endpoint"),
                    "{method} {path} is described but not served: {status} {text}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not described: {text}"
                );
            }
        }
    }
}
