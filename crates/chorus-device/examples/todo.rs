//! A to-do list that works offline and syncs with a Chorus cluster: the smallest
//! app on a device replica (`docs/devices.md`).
//!
//! ```text
//! cargo run -p chorus-device --example todo -- todo.db add "buy milk"
//! cargo run -p chorus-device --example todo -- todo.db list
//! cargo run -p chorus-device --example todo -- todo.db done KEY
//! cargo run -p chorus-device --example todo -- todo.db sync http://127.0.0.1:7070,http://127.0.0.1:7071
//! ```

use chorus_device::{Device, Subscription};
use serde_json::json;
use std::process::ExitCode;

const TODOS: &str = "todos";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("todo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [file, command, rest @ ..] = args else {
        return Err("usage: todo FILE (add TITLE | list | done KEY | sync URLS)".into());
    };
    let device = Device::open(file)?;
    match (command.as_str(), rest) {
        ("add", [title]) => {
            // A key no other device makes: this device's id and the time.
            let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            let key = format!("{:016x}-{}", micros.as_micros(), &device.id()[..8]);
            device.put(TODOS, &key, &json!({"title": title, "done": false}))?;
            println!("{key}");
        }
        ("list", []) => {
            for key in device.list(TODOS, "")? {
                let Some(todo) = device.get(TODOS, &key)? else {
                    continue;
                };
                let shown = todo.value.unwrap_or_else(|| todo.versions[0].clone());
                let mark = if shown["done"] == true { "x" } else { " " };
                let note = match (todo.pending, todo.conflict) {
                    (_, true) => "  (edited elsewhere too: both kept)",
                    (true, false) => "  (not synced yet)",
                    _ => "",
                };
                println!(
                    "[{mark}] {key}  {}{note}",
                    shown["title"].as_str().unwrap_or("")
                );
            }
        }
        ("done", [key]) => {
            let todo = device.get(TODOS, key)?.ok_or("no such to-do")?;
            let mut value = todo.value.unwrap_or_else(|| todo.versions[0].clone());
            value["done"] = json!(true);
            device.put(TODOS, key, &value)?;
        }
        ("sync", [urls]) => {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            let report = device.sync(&urls, &Subscription::collections([TODOS]), &mut |_| {})?;
            println!(
                "synced with {}: {} sent, {} received, {} still to send",
                report.progress.node,
                report.taken + report.taken_before,
                report.progress.downloaded,
                device.pending()?
            );
        }
        _ => return Err(format!("unknown command {command:?}").into()),
    }
    Ok(())
}
