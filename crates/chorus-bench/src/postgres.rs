//! The PostgreSQL contender: a throwaway server (Debian's package) in a temporary
//! folder, `synchronous_commit = on`, and pgbench running the same upsert of the same
//! document with the same number of clients over loopback TCP. Per-transaction logs
//! give the latency percentiles.

use crate::load::Stats;
use crate::{Args, document};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pgbench").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL version with pgbench under /usr/lib/postgresql")
}

/// Runs `program` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn check(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

struct Server {
    bin: PathBuf,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap_or(&self.data));
    }
}

pub fn run(args: &Args, duration: Duration) -> anyhow::Result<Stats> {
    let bin = bin_dir()?;
    // A port free right now; PostgreSQL binds it a moment later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let port = port.as_str();
    let root = std::env::temp_dir().join(format!("chorus-bench-pg-{}", std::process::id()));
    let data = root.join("data");
    std::fs::create_dir_all(&root)?;
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&root)
        .output();
    check(
        as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data),
        "initdb",
    )?;
    let server = Server {
        bin: bin.clone(),
        data: data.clone(),
    };
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections={}",
        root.display(),
        args.clients + 10
    );
    check(
        as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-w", "-l"])
            .arg(root.join("log"))
            .arg("start"),
        "pg_ctl start",
    )?;
    let connection = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"];
    let psql = |sql: &str| {
        check(
            Command::new(bin.join("psql"))
                .args(connection)
                .args(["-qc", sql]),
            "psql",
        )
    };
    psql("CREATE TABLE docs (k text PRIMARY KEY, v jsonb NOT NULL)")?;

    let script = root.join("upsert.sql");
    std::fs::write(
        &script,
        format!(
            "\\set k random(0, {})\nINSERT INTO docs VALUES ('key-' || :k, '{}') ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n",
            args.keys - 1,
            document(0, 0)
        ),
    )?;
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&root)
        .output();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(args.clients);
    check(
        as_postgres(&bin.join("pgbench"))
            .current_dir(&root)
            .args(connection)
            .args(["-n", "-l", "--log-prefix"])
            .arg(root.join("pgbench_log"))
            .args(["-c", &args.clients.to_string(), "-j", &threads.to_string()])
            .args(["-T", &duration.as_secs().to_string(), "-f"])
            .arg(&script)
            .arg("postgres"),
        "pgbench",
    )?;
    // Each log line: client_id transaction_no time_us script_no time_epoch time_us_part.
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pgbench_log"))
        {
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|f| f.parse().ok()) {
                    latencies.push(us);
                }
            }
        }
    }
    drop(server);
    Ok(Stats::from_latencies_us(latencies, duration))
}
