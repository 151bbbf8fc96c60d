//! `sluiced`: load config → bind → tell systemd → serve until SIGTERM/SIGINT → drain.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use sluiced::{Config, Daemon};

/// The sluice node-local data-loading daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Default: /etc/sluice/sluiced.toml if it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// gRPC Unix socket path (server.socket).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// gRPC TCP address, e.g. 127.0.0.1:7420 (server.tcp).
    #[arg(long, global = true)]
    tcp: Option<String>,
    /// Metrics/health HTTP address (server.http).
    #[arg(long, global = true)]
    http: Option<String>,
    /// A directory file:// URIs may read and write (storage.file.roots); repeatable.
    #[arg(long = "file-root", global = true)]
    file_roots: Vec<PathBuf>,
    /// A directory direct:// URIs may read (O_DIRECT) and write (storage.direct.roots); repeatable.
    #[arg(long = "direct-root", global = true)]
    direct_roots: Vec<PathBuf>,
    /// Payload memory budget, e.g. 8GiB (cache.memory_budget).
    #[arg(long, global = true)]
    memory_budget: Option<String>,
    /// Log filter, e.g. info or sluiced=debug (log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Print the effective configuration (secrets redacted) and exit.
    CheckConfig,
}

impl Cli {
    /// Flags as the highest-priority configuration layer.
    fn overrides(&self) -> Figment {
        let mut f = Figment::new();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                f = std::mem::take(&mut f).merge(Serialized::global(key, v));
            }
        };
        set(
            "server.socket",
            self.socket.as_ref().map(|p| p.display().to_string()),
        );
        set("server.tcp", self.tcp.clone());
        set("server.http", self.http.clone());
        set("cache.memory_budget", self.memory_budget.clone());
        set("log.level", self.log_level.clone());
        for (key, given) in [
            ("storage.file.roots", &self.file_roots),
            ("storage.direct.roots", &self.direct_roots),
        ] {
            if !given.is_empty() {
                let roots: Vec<PathBuf> = given
                    .iter()
                    .map(|r| std::path::absolute(r).unwrap_or(r.clone()))
                    .collect();
                f = f.merge(Serialized::global(key, roots));
            }
        }
        f
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref(), cli.overrides())?;
    if let Some(Command::CheckConfig) = cli.command {
        print!("{}", config.to_redacted_toml());
        // Also what only building the backends checks (roots exist, keys
        // come in pairs, CA bundle parses).
        sluice_storage::Backends::new(&config.storage)
            .await
            .context("invalid storage configuration")?;
        sluiced::tls::TcpSecurity::for_server(&config.server)?;
        sluiced::facade::check_files(&config.facade)?;
        return Ok(());
    }
    let traces = if config.traces.enabled {
        Some(
            sluiced::telemetry::traces::Exporting::start(&config.traces)
                .context("cannot set up the trace exporter (traces.endpoint)")?,
        )
    } else {
        None
    };
    let logging = Arc::new(sluiced::telemetry::logging::init(&config.log, traces));
    // SIGHUP reads the configuration again from the same layers.
    let (file, overrides) = (cli.config.clone(), cli.overrides());
    let reload = sluiced::reload::Reload {
        loader: Some(Box::new(move || {
            Ok(Config::load(file.as_deref(), overrides.clone())?)
        })),
        logging: Some(logging.clone()),
    };
    let daemon = Daemon::bind(config).await?.with_reload(reload);
    // Bound and mapped: READY=1 to systemd (Type=notify), watchdog pings
    // while serving, STOPPING=1 when the signal arrives.
    let shutdown = sluiced::systemd::supervised(&daemon.addresses(), shutdown_signal());
    let served = daemon.serve(shutdown).await.context("sluiced failed");
    // The spans of the last calls: exported before exit (this blocks
    // while the exporter's thread hands them to the runtime).
    let _ = tokio::task::spawn_blocking(move || logging.shutdown()).await;
    served
}

/// Payload bytes live in the shared-memory arena, not on the heap; what
/// the heap holds are protocol buffers: HTTP read buffers of up to ~400 KiB
/// per backend connection and gRPC encode buffers of a message (up to
/// `read.chunk_size` plus framing) per response stream, allocated, grown
/// and freed for every response or message. Under glibc's default 128 KiB
/// mmap threshold each one was a fresh mmap (or an mremap on growth): every
/// page faulted in on first write, handed back by munmap with a TLB
/// shootdown on free, all under the process's mmap lock — a quarter of the
/// daemon's CPU per cold 128 KiB object and a third of it when streaming
/// cached objects over TCP. Up to 32 MiB (glibc's largest threshold; no
/// buffer gets near it) allocations now come from the heap and are reused;
/// at most 8 MiB of free memory at the top of each of the (at most 4)
/// arenas is kept rather than trimmed, so the heap stays a small fixed
/// overhead on top of the budget.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}
