//! `safetytwin-replayer`: command-line glue over the library.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use safetytwin_replayer::{
    server::{Security, Server},
    store::Store,
};

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
        /// The replayer's TLS certificate chain (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        tls_cert: Option<PathBuf>,
        /// The replayer's TLS private key (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        tls_key: Option<PathBuf>,
        /// The CA whose client certificates daemons must present (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        client_ca: Option<PathBuf>,
        /// File holding the bearer token consumers must send.
        #[arg(long, value_name = "FILE", required_unless_present = "insecure")]
        token_file: Option<PathBuf>,
    },
    /// Make a local CA, a replayer certificate, a daemon client certificate and a consumer
    /// token for tests and demos.
    GenCerts {
        /// Where to write them.
        #[arg(long, default_value = "certs", value_name = "DIR")]
        dir: PathBuf,
        /// More names the replayer certificate is valid for (localhost and loopback always).
        #[arg(long = "name", value_name = "DNS_OR_IP")]
        names: Vec<String>,
    },
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
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
        Command::GenCerts { dir, names } => {
            let files = safetytwin_replayer::certs::generate(&dir, &names)?;
            println!("CA            {}", files.ca.display());
            println!(
                "replayer      {} {}",
                files.server_cert.display(),
                files.server_key.display()
            );
            println!(
                "daemon client {} {}",
                files.client_cert.display(),
                files.client_key.display()
            );
            println!("token         {}", files.token.display());
        }
        Command::Serve {
            listen,
            data,
            insecure,
            tls_cert,
            tls_key,
            client_ca,
            token_file,
        } => {
            let security = if insecure {
                if !listen.ip().is_loopback() {
                    bail!(
                        "--insecure serves plaintext without authentication: only on a loopback \
                         address, not {listen}"
                    );
                }
                Security::Insecure
            } else {
                let (Some(cert), Some(key), Some(ca), Some(token)) =
                    (tls_cert, tls_key, client_ca, token_file)
                else {
                    bail!("TLS needs --tls-cert, --tls-key, --client-ca and --token-file");
                };
                let token = String::from_utf8(read(&token)?)
                    .context("the token file is not text")?
                    .trim()
                    .to_owned();
                if token.len() < 16 {
                    bail!("the token in the token file is shorter than 16 characters");
                }
                Security::Tls {
                    cert: read(&cert)?,
                    key: read(&key)?,
                    client_ca: read(&ca)?,
                    token,
                }
            };
            let mode = if insecure { "plaintext" } else { "TLS" };
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create data directory {}", data.display()))?;
            let path = data.join("history.redb");
            let store = Store::open(&path)
                .with_context(|| format!("cannot open history store {}", path.display()))?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let server = Server::bind(listen, Arc::new(store))
                    .await?
                    .security(security);
                eprintln!(
                    "safetytwin-replayer: listening on {} ({mode}), history in {}",
                    server.local_addr(),
                    path.display()
                );
                server.run(shutdown()).await
            })?;
        }
    }
    Ok(())
}
