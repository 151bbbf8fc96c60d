//! `sluice`: the command-line client of the sluice daemon.
//!
//! This file only declares the command line and dispatches; the commands
//! live in `commands.rs`, `bench.rs`, `generate.rs`, `oplog.rs` and
//! `tfrecord.rs`, on top of the `sluice_client` library.

mod bench;
mod commands;
mod generate;
mod oplog;
mod progress;
mod tfrecord;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_client::{Client, ConnectOptions, DEFAULT_ADDRESS, Token};

const AFTER_HELP: &str = "\
URIs name objects as the daemon does: file:///abs/path, s3://bucket/key.

An https:// daemon is shown the token of --token-file, $SLUICE_TOKEN_FILE
or $SLUICE_TOKEN, and, where it requires one, a client certificate.

Exit status: 0 on success; 1 when a command fails, a missing object or
refused credentials (UNAUTHENTICATED) included (the message, after `error:`
on stderr, names the URI or the reason); 2 on a usage error.";

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Command-line client of the sluice data-loading daemon"
)]
#[command(after_help = AFTER_HELP)]
struct Cli {
    /// Daemon address: unix:///path/to.sock, a socket path, https://host:port,
    /// or http://host:port (a daemon with server.tcp_insecure).
    #[arg(long, global = true, env = "SLUICE_ADDRESS", default_value = DEFAULT_ADDRESS)]
    address: String,

    /// https:// only: CA certificates (PEM) the daemon's certificate must
    /// chain to [else $SLUICE_CA_FILE, else the system's roots].
    #[arg(long, global = true, value_name = "PEM")]
    ca_file: Option<PathBuf>,

    /// https:// only: file holding the bearer token [else $SLUICE_TOKEN_FILE,
    /// or the token itself in $SLUICE_TOKEN].
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// https:// only: client certificate (PEM) for a daemon that requires
    /// mutual TLS [else $SLUICE_CLIENT_CERT].
    #[arg(long, global = true, value_name = "PEM", requires = "client_key")]
    client_cert: Option<PathBuf>,

    /// https:// only: the client certificate's private key (PEM) [else
    /// $SLUICE_CLIENT_KEY].
    #[arg(long, global = true, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show an object's size, etag and modification time.
    Stat {
        /// The object.
        uri: String,
    },
    /// List the objects under a prefix, one URI per line.
    Ls {
        /// List everything below the prefix instead of one level.
        #[arg(short, long)]
        recursive: bool,
        /// Long form: size and modification time before each URI.
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// The prefix, e.g. s3://bucket/train/ (directories end with `/`).
        prefix: String,
    },
    /// Download an object (or a byte range of it) to a file.
    Get {
        /// The object.
        uri: String,
        /// Destination: `-` for stdout, a directory, or a file name;
        /// absent: the object's last key segment, in the current directory.
        file: Option<PathBuf>,
        /// First byte to read.
        #[arg(long)]
        offset: Option<u64>,
        /// Bytes to read (default: to the end of the object).
        #[arg(long)]
        length: Option<u64>,
    },
    /// Write an object to stdout.
    Cat {
        /// The object.
        uri: String,
    },
    /// Upload a local file, streamed (never loaded whole).
    Put {
        /// The local file.
        file: PathBuf,
        /// The destination object.
        uri: String,
    },
    /// Delete an object, or with -r a "directory": the object and everything under URI/.
    Rm {
        /// Delete the object and every object under URI/ (whole path components).
        #[arg(short, long)]
        recursive: bool,
        /// Allow -r on a whole bucket (s3://bucket/) or file root.
        #[arg(long, requires = "recursive")]
        whole_bucket: bool,
        /// The object or prefix.
        uri: String,
    },
    /// Read every object under a prefix, several passes, and report throughput.
    Bench(bench::BenchArgs),
    /// Read every object under a prefix (or listed in a file) into the daemon's cache; stops when the cache is full.
    Warm {
        /// Objects read at once (0: the daemon's default).
        #[arg(long, default_value_t = 0)]
        concurrency: u32,
        /// Read the URIs listed in this file (one per line; `-`: stdin), in order, instead of a prefix.
        #[arg(long, value_name = "FILE", conflicts_with = "prefix")]
        from: Option<PathBuf>,
        /// The prefix, e.g. s3://bucket/train/.
        #[arg(required_unless_present = "from")]
        prefix: Option<String>,
    },
    /// Drop every cached object under a prefix from the daemon's cache (admins only).
    Evict {
        /// The prefix.
        prefix: String,
    },
    /// Show the daemon's sessions (data stall, hits, epoch plans) and cache counters.
    Stats {
        /// Refresh every this many seconds until interrupted (like top).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// Summarize or replay the daemon's operation log (warp's format).
    #[command(subcommand)]
    Oplog(oplog::OplogCommand),
    /// Write a synthetic dataset (raw, npy, npz or tfrecord) under a prefix.
    Gen(generate::GenArgs),
    /// TFRecord files: build DALI-style indexes.
    #[command(subcommand)]
    Tfrecord(tfrecord::TfrecordCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", render(&error));
            let refused = error
                .downcast_ref::<sluice_client::Error>()
                .is_some_and(sluice_client::Error::is_unauthenticated);
            if refused {
                eprintln!(
                    "hint: the daemon refused this client's credentials (UNAUTHENTICATED): \
                     see --token-file, $SLUICE_TOKEN, --client-cert"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated. A gRPC status ends the chain:
/// the client error above it already shows its message. A cause that its
/// parent's message already quotes is not repeated.
fn render(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        if cause.downcast_ref::<tonic::Status>().is_some() {
            break;
        }
        let text = cause.to_string();
        if !parts.last().is_some_and(|parent| parent.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = ConnectOptions {
        ca_file: cli.ca_file,
        token: cli.token_file.map(Token::from_file).transpose()?,
        client_cert: cli.client_cert,
        client_key: cli.client_key,
    };
    if let Command::Oplog(command) = cli.command {
        // `stats` reads files only: no daemon needed.
        let client = match command.needs_daemon() {
            true => Some(Client::connect_with(&cli.address, options).await?),
            false => None,
        };
        return oplog::run(command, client.as_ref()).await;
    }
    let client = Client::connect_with(&cli.address, options).await?;
    match cli.command {
        Command::Stat { uri } => commands::stat(&client, &uri).await,
        Command::Ls {
            recursive,
            long,
            prefix,
        } => commands::ls(&client, &prefix, recursive, long).await,
        Command::Get {
            uri,
            file,
            offset,
            length,
        } => commands::get(&client, &uri, file, offset, length).await,
        Command::Cat { uri } => commands::cat(&client, &uri).await,
        Command::Put { file, uri } => commands::put(&client, &file, &uri).await,
        Command::Rm {
            recursive,
            whole_bucket,
            uri,
        } => commands::rm(&client, &uri, recursive, whole_bucket).await,
        Command::Bench(args) => bench::run(&client, &args).await,
        Command::Warm {
            concurrency,
            from: Some(file),
            ..
        } => commands::warm_from(&client, &file, concurrency).await,
        Command::Warm {
            concurrency,
            prefix,
            ..
        } => commands::warm(&client, &prefix.unwrap_or_default(), concurrency).await,
        Command::Evict { prefix } => commands::evict(&client, &prefix).await,
        Command::Stats { watch } => commands::stats(&client, watch).await,
        Command::Gen(args) => generate::run(&client, &args).await,
        Command::Tfrecord(command) => tfrecord::run(&client, &command).await,
        Command::Oplog(_) => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn render_skips_quoted_causes() {
        let io = std::io::Error::other("no such file");
        let outer = anyhow::Error::new(io).context("transport error: no such file");
        let error = outer.context("cannot connect to x");
        assert_eq!(
            render(&error),
            "cannot connect to x: transport error: no such file"
        );
    }

    #[test]
    fn bench_defaults() {
        let cli = Cli::try_parse_from(["sluice", "bench", "file:///d/"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(
            (args.concurrency, args.passes, args.read_many_batch),
            (32, 2, 0)
        );
        assert_eq!(args.delivery, None);
        let cli =
            Cli::try_parse_from(["sluice", "bench", "--delivery", "stream", "f:///d/"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench");
        };
        assert_eq!(args.delivery, Some(bench::DeliveryArg::Stream));
    }

    #[test]
    fn zero_concurrency_is_a_usage_error() {
        let error =
            Cli::try_parse_from(["sluice", "bench", "--concurrency", "0", "f:///d/"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
    }
}
