//! `sluice oplog`: read the daemon's operation log.
//!
//! `stats` sums one log up (several rotated files together); `replay`
//! issues its operations again through the daemon against another prefix,
//! at the recorded times and on the recorded slots ([`replay`]). Both print
//! the same per-operation summary ([`sluice_oplog::Summary`]). Reading a log
//! needs no daemon; the format is `sluice_oplog`'s, shared with the daemon.

mod replay;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use sluice_client::Client;
use sluice_oplog::{LogRead, Record, Summary};

pub use replay::ReplayArgs;

/// `sluice oplog …`
#[derive(Debug, clap::Subcommand)]
pub enum OplogCommand {
    /// Summarize a log: per operation, count, errors, bytes, MB/s and
    /// latency percentiles; its time span and most operations at once.
    Stats {
        /// Log files (`ops.csv.zst`, rotated `ops.000001.csv.zst`, …; plain
        /// TSV too), read together.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay a log's reads (GET, STAT, LIST) through the daemon against
    /// another prefix, with the recorded timing and concurrency, and
    /// summarize what the replay saw.
    Replay(ReplayArgs),
}

impl OplogCommand {
    /// Whether the command talks to the daemon.
    pub fn needs_daemon(&self) -> bool {
        matches!(self, OplogCommand::Replay(_))
    }
}

/// Runs `command`; `client` is `None` for commands that need no daemon.
pub async fn run(command: OplogCommand, client: Option<&Client>) -> anyhow::Result<()> {
    match command {
        OplogCommand::Stats { files } => stats(&files),
        OplogCommand::Replay(args) => {
            let client = client.context("replay needs the daemon")?;
            replay::run(client, &args).await
        }
    }
}

/// Reads `files`, telling stderr about files cut short.
fn read(files: &[PathBuf]) -> anyhow::Result<LogRead> {
    let log = sluice_oplog::read_logs(files)?;
    for (path, why) in &log.cut_short {
        eprintln!(
            "warning: {} ends early ({why}): a crash, or the file being written; \
             its records up to there are included",
            path.display()
        );
    }
    Ok(log)
}

fn stats(files: &[PathBuf]) -> anyhow::Result<()> {
    let log = read(files)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} records in {} file(s){}",
        log.records.len(),
        files.len(),
        span_text(&log.records)
    )?;
    write!(out, "{}", Summary::of(&log.records))?;
    Ok(())
}

/// `, <first start> to <last end>`, or nothing for no records.
fn span_text(records: &[Record]) -> String {
    let (Some(first), Some(last)) = (
        records.iter().map(|r| r.start).min(),
        records.iter().map(|r| r.end).max(),
    ) else {
        return String::new();
    };
    let mut text = ", ".to_owned();
    sluice_oplog::time::format(first, &mut text);
    text.push_str(" to ");
    sluice_oplog::time::format(last, &mut text);
    text
}
