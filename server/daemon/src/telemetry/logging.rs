//! Structured logs with `tracing`.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber: `RUST_LOG` overrides `log.level`.
pub fn init(config: &LogConfig) {
    // Off EC2 the AWS SDK's region lookup in instance metadata fails at
    // every start; that is expected, so it is quiet unless asked for.
    let level = if config.level.contains("aws_config") {
        config.level.clone()
    } else {
        format!("{},aws_config::imds=error", config.level)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests starting several daemons) keeps the first.
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
