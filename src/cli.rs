//! The command line: parses arguments, loads the config, sets up logging, runs a subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "bookrec",
    version,
    about = "Recommendation analytics for a book platform, on Apache Arrow and DataFusion",
    long_about = "Recommendation analytics for a book platform, on Apache Arrow and DataFusion.\n\n\
        Configuration: compiled-in defaults (config/default.toml), then --config FILE, then \
        BOOKREC__SECTION__KEY environment variables, then command-line flags."
)]
pub struct Cli {
    /// TOML file overriding the compiled-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP event collector: validates and stamps events, spools them durably, produces to Kafka.
    Collect {
        /// Listen address (overrides collect.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Prints the effective configuration (secrets redacted) and exits.
    Config,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
        Command::Collect { listen } => {
            if let Some(addr) = listen {
                config.collect.listen = addr;
            }
            init_logging(&config)?;
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.collect.listen)
                    .await
                    .map_err(|source| crate::collect::CollectError::Bind {
                        addr: config.collect.listen,
                        source,
                    })?;
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                crate::collect::run(&config, listener, cancel).await?;
                Ok(())
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .with_context(|| format!("log.filter {:?}", config.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

/// Cancels on SIGTERM or Ctrl-C: services stop intake and drain.
async fn cancel_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: draining");
    cancel.cancel();
}
