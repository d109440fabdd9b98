//! The pages every node serves (`/ui/`): the dashboard, the collaborative editor
//! (`/ui/edit/{c}/{key}`), and their assets: the pages' scripts, the JavaScript
//! client (`clients/js/chorus.js`) and the text CRDT in WebAssembly, built by this
//! crate's build script from `crates/chorus-wasm`. Built into the binary: no web
//! server, no files to deploy. The pages use only the public API.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const DASHBOARD: &str = include_str!("../ui/dashboard.html");
const EDITOR: &str = include_str!("../ui/edit.html");

/// The assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/style.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/dashboard.js"),
    ),
    (
        "editor.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/editor.js"),
    ),
    (
        "text.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/text.js"),
    ),
    (
        "chorus.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../clients/js/chorus.js"),
    ),
    (
        "chorus_wasm.wasm",
        "application/wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/chorus_wasm.wasm")),
    ),
];

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { html(DASHBOARD) }))
        .route(
            "/ui/edit/{collection}/{key}",
            get(|| async { html(EDITOR) }),
        )
        .route("/ui/assets/{name}", get(asset))
}

fn html(page: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
