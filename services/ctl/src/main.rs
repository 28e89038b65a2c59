//! `cesctl`: the CES operator command line.
//!
//! - `cesctl topics create`: create the input and DLQ topics.
//! - `cesctl produce`: send test events to the input topic.
//! - `cesctl session create`: register a session at an edge and print its token.
//! - `cesctl session revoke`: close a session without its token (its socket gets 4003, every edge refuses it).
//! - `cesctl session show`, `cesctl session list`, `cesctl nodes`: sessions and edge nodes through an edge's admin
//!   API.
//! - `cesctl watch`: register (or reuse a token) and print the session's events as they arrive, resuming across
//!   reconnects (the Rust client, `ces-client`).
//! - `cesctl dlq list`: list dead letters (filter by reason, age; table or JSONL).
//! - `cesctl dlq show P:O`: every header, the key and the full value of one dead letter.
//! - `cesctl dlq stats`: dead letters by reason and by age.
//! - `cesctl dlq replay`: re-produce selected dead letters to their source topic, at most `--max-replays` times.
//! - `cesctl dlq dismiss`: mark selected dead letters handled without replaying them (the DLQ backlog).
//!
//! docs/cesctl.md describes every command, flag and output.
//!
//! Exit codes: 0 success, 1 failure (the message says why), 2 bad usage: an argument or `CES_*` variable that does
//! not parse, or a secret on the command line ([`secrets`]).

mod admin;
mod commands;
mod dlq;
mod kafka;
mod secrets;
mod session;
mod table;
mod usage;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cesctl",
    version,
    about = "Operate a CES (Customer Event Stream) deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage Kafka topics.
    Topics {
        #[command(subcommand)]
        command: commands::TopicsCommand,
    },
    /// Produce test events to the input topic.
    Produce(commands::ProduceArgs),
    /// Manage sessions.
    Session {
        #[command(subcommand)]
        command: session::SessionCommand,
    },
    /// List the edge nodes and their heartbeats through an edge's admin API.
    Nodes {
        #[command(flatten)]
        admin: admin::AdminArgs,
        /// The API's JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Connect a WebSocket client and print every frame.
    Watch(watch::WatchArgs),
    /// Inspect, replay and dismiss the dead letters.
    Dlq(dlq::DlqArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topics { command } => commands::topics(command).await,
        Command::Produce(args) => commands::produce(args).await,
        Command::Session { command } => session::run(command).await,
        Command::Nodes { admin, json } => match admin::AdminApi::from_args(&admin) {
            Ok(api) => admin::nodes(&api, json).await,
            Err(e) => Err(e),
        },
        Command::Watch(args) => watch::watch(args).await,
        Command::Dlq(args) => dlq::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cesctl: {e:#}");
            ExitCode::from(usage::exit_code(&e))
        }
    }
}
