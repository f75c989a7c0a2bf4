//! `safetytwin-replayer`: command-line glue over the library.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use safetytwin_replayer::{server::Server, store::Store};

/// Stores every host's delta batches and serves them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug); quiet by default.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept daemons' batch streams and serve the history until SIGINT/SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
        listen: SocketAddr,
        /// Directory of the history store (created if missing).
        #[arg(long, default_value = "/var/lib/safetytwin", value_name = "DIR")]
        data: PathBuf,
        /// Plaintext gRPC without client certificates or tokens; only on a loopback address.
        #[arg(long)]
        insecure: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("safetytwin-replayer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            insecure,
        } => {
            if !insecure {
                bail!(
                    "TLS is not available yet; pass --insecure to serve plaintext on a loopback \
                     address"
                );
            }
            if !listen.ip().is_loopback() {
                bail!(
                    "--insecure serves plaintext without authentication: only on a loopback address, not {listen}"
                );
            }
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create data directory {}", data.display()))?;
            let path = data.join("history.redb");
            let store = Store::open(&path)
                .with_context(|| format!("cannot open history store {}", path.display()))?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = Server::bind(listen, Arc::new(store)).await?;
                eprintln!(
                    "safetytwin-replayer: listening on {} (plaintext), history in {}",
                    server.local_addr(),
                    path.display()
                );
                server.run(shutdown()).await
            })?;
        }
    }
    Ok(())
}
