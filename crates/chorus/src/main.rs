//! `chorus`: run a node, or talk to one.
//!
//! Every subcommand has `--help`. Exit code 0 on success; otherwise a one-line
//! reason on stderr and a non-zero code.

mod client;
mod demo;
mod device;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "Chorus: a multi-leader replicated JSON document database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: its store, its HTTP API, and replication when given a cluster file.
    Serve(serve::ServeArgs),
    /// Start a local 3-leader cluster, walk through a conflict and its resolution,
    /// and keep the cluster running until Ctrl-C.
    Demo,
    /// Read a document (prints the JSON answer, including its context token).
    Get {
        collection: String,
        key: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Write a document, replacing what the node shows (it reads first). The document
    /// is the JSON argument, or stdin when it is `-`.
    Put {
        collection: String,
        key: String,
        /// The JSON document, or `-` to read it from stdin.
        document: String,
        /// Replace exactly the versions this context token (from a read) covers.
        #[arg(long, conflicts_with = "blind")]
        context: Option<String>,
        /// Write without reading: concurrent with every version there (siblings).
        #[arg(long)]
        blind: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Delete a document, replacing what the node shows (it reads first); the
    /// tombstone replicates.
    Delete {
        collection: String,
        key: String,
        /// Delete exactly the versions this context token (from a read) covers.
        #[arg(long, conflicts_with = "blind")]
        context: Option<String>,
        /// Delete without reading: concurrent with every version there.
        #[arg(long)]
        blind: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// List a collection's keys, one a line (every page); with --docs, its documents.
    List {
        collection: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print JSON strings.
        #[arg(long, conflicts_with = "docs")]
        json: bool,
        /// Print each document as a read shows it, one JSON object a line (a range
        /// read: each page of 1,000 from one snapshot).
        #[arg(long)]
        docs: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Print the change feed as JSON lines, from a cursor (default: the start).
    Changes {
        /// The cursor to read after (`next` of an earlier read; 0: the start).
        #[arg(long, default_value = "0")]
        since: String,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Include each document as a read shows it.
        #[arg(long)]
        include_docs: bool,
        /// Keep waiting for new changes until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// List the collections and their policies; `show` or `set` one.
    Collections {
        #[command(subcommand)]
        action: Option<CollectionsAction>,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Apply CRDT operations to a document of a `crdt` collection, all or none:
    /// a JSON array such as '[{"op": "counter.add", "path": "/likes", "by": 1}]'
    /// (see docs/crdts.md), or `-` to read it from stdin.
    Ops {
        collection: String,
        key: String,
        /// The JSON array of operations, or `-` to read it from stdin.
        operations: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Show the status of every node given (`--url A,B,C`): its peers, their lag,
    /// its links, as a table.
    Status {
        /// Print the JSON answers (an array, one per node).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: client::Target,
    },
    /// Ask nodes to re-read their cluster file (a node joined or left, links or
    /// link emulation changed); each node given reloads its own copy.
    Reload {
        #[command(flatten)]
        target: client::Target,
    },
    /// Copy a running node's store, consistently, to a file (`chorus restore` puts it
    /// back).
    Backup {
        /// The file to write (must not exist).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        target: client::Target,
    },
    /// Restore a backup into an empty data folder, as a new replica of the same node
    /// name (a new node id and change feed); start the node on it afterwards.
    Restore {
        /// The data folder of the node to start (must hold no store).
        #[arg(long)]
        data: std::path::PathBuf,
        /// The backup file.
        file: std::path::PathBuf,
    },
    /// Write every collection's settings and every document as JSON lines to stdout.
    Export {
        #[command(flatten)]
        target: client::Target,
    },
    /// Read JSON lines of `chorus export` from stdin and write them (in bulk).
    Import {
        #[command(flatten)]
        target: client::Target,
    },
    /// A device replica: a local store that works offline and syncs with any node
    /// (`docs/devices.md`).
    Device(device::DeviceArgs),
    /// Access tokens for nodes started with `--auth`: create, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Set up a cluster: `certs` makes its CA and a certificate per node.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// List the conflict log; `show` one conflict, `resolve` one.
    Conflicts {
        #[command(subcommand)]
        action: Option<ConflictsAction>,
        /// Show at most this many records (1 to 1000); `next` in the answer is the
        /// `--after` of the following page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only the records of this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Only the records of this key (with --collection).
        #[arg(long, requires = "collection")]
        key: Option<String>,
        /// Start after this record id (paging).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum CollectionsAction {
    /// Show a collection's settings.
    Show {
        collection: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Set a collection's policy (siblings, lww, merge, custom, crdt), keeping its
    /// other settings.
    Set {
        collection: String,
        #[arg(long)]
        policy: String,
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token (or renew it with a new secret); prints it once.
    Create {
        /// The token's name (letters, digits, '-', '_').
        #[arg(long)]
        name: String,
        /// Comma-separated grants: admin, read:COLLECTION, write:COLLECTION
        /// (COLLECTION may be *), e.g. read:*,write:orders.
        #[arg(long)]
        rights: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Revoke a token on every node (the revocation replicates).
    Revoke {
        name: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// List the tokens' names and rights (never their secrets).
    List {
        #[command(flatten)]
        target: client::Target,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Write the cluster's CA (`ca.pem`, `ca.key`) and, for every node of the cluster
    /// file, `NAME.pem` and `NAME.key`, for mutual TLS between peers (`chorus serve
    /// --certs DIR`). Files already there are kept: run it again after adding nodes.
    /// Copy `ca.pem` and a node's two files to each machine; keep `ca.key` elsewhere.
    Certs {
        /// The cluster file naming the nodes.
        #[arg(long)]
        cluster: std::path::PathBuf,
        /// The folder to write the files into (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ConflictsAction {
    /// Show one conflict's versions side by side, and the document as it stands now.
    Show {
        /// The conflict's id (from `chorus conflicts`).
        id: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// End a conflict: a new document, or one of its versions, replaces exactly the
    /// conflict's versions (under lww, picking a loser restores it).
    Resolve {
        /// The conflict's id (from `chorus conflicts`).
        id: String,
        /// The new document (JSON), or `-` to read it from stdin.
        #[arg(long, required_unless_present = "pick", conflicts_with = "pick")]
        value: Option<String>,
        /// The dot of the version to keep (`NODE:COUNTER`, from `show`).
        #[arg(long)]
        pick: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
}

/// What a write from the command line replaces.
fn against(context: Option<&str>, blind: bool) -> client::Against<'_> {
    match (context, blind) {
        (Some(token), _) => client::Against::Context(token),
        (None, true) => client::Against::Blind,
        (None, false) => client::Against::Current,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Demo => demo::run(),
        Command::Get {
            collection,
            key,
            target,
        } => client::get(&target, &collection, &key),
        Command::Put {
            collection,
            key,
            document,
            context,
            blind,
            target,
        } => {
            let against = against(context.as_deref(), blind);
            client::put(&target, &collection, &key, &document, against)
        }
        Command::Delete {
            collection,
            key,
            context,
            blind,
            target,
        } => client::delete(
            &target,
            &collection,
            &key,
            against(context.as_deref(), blind),
        ),
        Command::List {
            collection,
            prefix,
            json,
            docs,
            target,
        } => {
            let listing = match (docs, json) {
                (true, _) => client::Listing::Documents,
                (false, true) => client::Listing::KeysAsJson,
                (false, false) => client::Listing::Keys,
            };
            client::list(&target, &collection, &prefix, listing)
        }
        Command::Changes {
            since,
            collection,
            include_docs,
            follow,
            target,
        } => client::changes(&target, &since, collection.as_deref(), include_docs, follow),
        Command::Collections {
            action: None,
            json,
            target,
        } => client::collections(&target, json),
        Command::Collections {
            action: Some(CollectionsAction::Show { collection, target }),
            ..
        } => client::show_collection(&target, &collection),
        Command::Collections {
            action:
                Some(CollectionsAction::Set {
                    collection,
                    policy,
                    target,
                }),
            ..
        } => client::set_collection(&target, &collection, &policy),
        Command::Ops {
            collection,
            key,
            operations,
            target,
        } => client::ops(&target, &collection, &key, &operations),
        Command::Status { json, target } => client::status(&target, json),
        Command::Reload { target } => client::reload(&target),
        Command::Backup { out, target } => client::backup(&target, &out),
        Command::Restore { data, file } => serve::restore(&data, &file),
        Command::Export { target } => client::export(&target),
        Command::Import { target } => client::import(&target),
        Command::Device(args) => device::run(args),
        Command::Token { action } => match action {
            TokenAction::Create {
                name,
                rights,
                target,
            } => client::create_token(&target, &name, &rights),
            TokenAction::Revoke { name, target } => client::revoke_token(&target, &name),
            TokenAction::List { target } => client::list_tokens(&target),
        },
        Command::Cluster {
            action: ClusterAction::Certs { cluster, out },
        } => serve::cluster_certs(&cluster, &out),
        Command::Conflicts {
            action: None,
            limit,
            collection,
            key,
            after,
            target,
        } => {
            let filter = client::ConflictsFilter {
                collection: collection.as_deref(),
                key: key.as_deref(),
                after: after.as_deref(),
                limit,
            };
            client::conflicts(&target, &filter)
        }
        Command::Conflicts {
            action: Some(ConflictsAction::Show { id, target }),
            ..
        } => client::show_conflict(&target, &id),
        Command::Conflicts {
            action:
                Some(ConflictsAction::Resolve {
                    id,
                    value,
                    pick,
                    target,
                }),
            ..
        } => client::resolve_conflict(&target, &id, value.as_deref(), pick.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let reason = format!("{error:#}").replace('\n', " ");
            eprintln!("chorus: {reason}");
            ExitCode::FAILURE
        }
    }
}
