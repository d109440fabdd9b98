//! Builds the pages' WebAssembly (`crates/chorus-wasm`, the text CRDT) so that the
//! binary serves it (`ui.rs`): a nested `cargo build --target wasm32-unknown-unknown`
//! into a target directory of its own (no lock shared with this build). Without the
//! target installed (`rustup target add wasm32-unknown-unknown`), the build goes on
//! with a warning and the editor page says what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("../..");
    for watched in [
        "crates/chorus-wasm",
        "crates/chorus-text/src",
        "crates/chorus-text/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let wasm = out.join("chorus_wasm.wasm");
    match build_wasm(&root, &out.join("wasm-target")) {
        Ok(built) => {
            std::fs::copy(&built, &wasm).expect("copying the WebAssembly");
        }
        Err(why) => {
            println!(
                "cargo:warning=the editor page's WebAssembly was not built ({why}); run `rustup target add wasm32-unknown-unknown` and build again"
            );
            std::fs::write(&wasm, b"").expect("writing OUT_DIR");
        }
    }
}

fn build_wasm(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .args(["-p", "chorus-wasm", "--target-dir"])
        .arg(target_dir)
        // This build's own settings are not the nested one's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .map_err(|e| format!("cargo did not start: {e}"))?;
    if !status.success() {
        return Err(format!("cargo exited with {status}"));
    }
    Ok(target_dir.join("wasm32-unknown-unknown/release/chorus_wasm.wasm"))
}
