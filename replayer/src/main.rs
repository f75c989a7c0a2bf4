//! `safetytwin-replayer`: the controller's binary, command-line glue over its crates (the
//! store, the twin, the services, the client).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use safetytwin_client::{Client, ClientError};
use safetytwin_services::{
    listener::Limits,
    server::{Security, Server},
};
use safetytwin_store::{Store, StoreUrl};
use safetytwin_twin::{
    applier::{Applier, ApplierConfig, OnFailure, PackageMode},
    pool::{AptDownload, Pool},
    vm::TwinBackend,
};

/// Stores every host's delta batches and serves them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    global: safetytwin_cli::Global,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `Serve` costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Accept daemons' batch streams and serve the history until SIGINT/SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
        listen: SocketAddr,
        /// Data directory: the embedded history store, the package pool, the twins' overlays
        /// (created if missing).
        #[arg(long, default_value = "/var/lib/safetytwin", value_name = "DIR")]
        data: PathBuf,
        /// Where the history lives: `redb:PATH` (default: DIR/history.redb), or
        /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, which several replayers may share
        /// (its tables are created on first use; the password is never printed).
        #[arg(long, value_name = "URL")]
        store: Option<StoreUrl>,
        /// Plaintext gRPC without client certificates or tokens; only on a loopback address.
        #[arg(long)]
        insecure: bool,
        /// Also serve the web dashboard (/), the JSON API (/api/v1/…) and Prometheus metrics
        /// (/metrics) here, e.g. 127.0.0.1:8080; with TLS, over TLS with the same certificate
        /// and bearer token.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// One more name the HTTP API answers to (repeatable), e.g. a reverse proxy's. Without
        /// it only requests addressed to localhost and the loopback addresses (--insecure) or
        /// to the certificate's names (TLS), on the --http port, are answered: the defence
        /// against DNS rebinding.
        #[arg(long = "http-host", value_name = "NAME", requires = "http")]
        http_hosts: Vec<String>,
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
        #[command(flatten)]
        limits: Box<LimitArgs>,
        #[command(flatten)]
        twin: TwinArgs,
    },
    /// Show the replayer and its twins (domain state, applied seq, last apply and failure).
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the hosts and their last seq.
    Hosts {
        #[command(flatten)]
        conn: ConnArgs,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the twins' snapshots, oldest first.
    Snapshots {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this host's.
        #[arg(long)]
        host: Option<String>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revert a twin to one of its snapshots; it holds there until `resume`.
    Revert {
        #[command(flatten)]
        conn: ConnArgs,
        /// The snapshot's name (see `snapshots`).
        snapshot: String,
        /// The host (default: whichever has the snapshot).
        #[arg(long)]
        host: Option<String>,
    },
    /// Prove the twin: read what it holds through its guest agent (packages, accounts, tracked
    /// files, unit activity) and compare it with the host's model at the seq it holds. Prints
    /// each difference and what is left out by design; exits 0 only when there is no
    /// difference, 5 when there are.
    Verify {
        #[command(flatten)]
        conn: ConnArgs,
        /// The host (default: the only one).
        #[arg(long)]
        host: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Let a reverted twin follow its host again.
    Resume {
        #[command(flatten)]
        conn: ConnArgs,
        /// The host (default: the only one).
        #[arg(long)]
        host: Option<String>,
    },
    /// The net changes between two seqs of a host's history.
    Diff {
        #[command(flatten)]
        conn: ConnArgs,
        /// From this seq (0: the empty state).
        from: u64,
        /// To this seq.
        to: u64,
        /// The host (default: the only one).
        #[arg(long)]
        host: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A host's state: latest, at a seq, or as of a time.
    State {
        #[command(flatten)]
        conn: ConnArgs,
        /// A seq (e.g. 42) or an RFC 3339 time (e.g. 2026-11-22T06:00:00Z); default: latest.
        #[arg(long, value_name = "SEQ|TIME")]
        at: Option<String>,
        /// The host (default: the only one).
        #[arg(long)]
        host: Option<String>,
        /// One JSON object (every file with its content) instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print changes as they are stored, until Ctrl-C.
    Watch {
        #[command(flatten)]
        conn: ConnArgs,
        /// Only this host's (default: every host).
        #[arg(long)]
        host: Option<String>,
        /// One JSON object per batch instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a host's tracked files and units at a seq into DIR (files/ and manifest.json).
    Export {
        #[command(flatten)]
        conn: ConnArgs,
        /// The seq (see `hosts`, `snapshots`).
        seq: u64,
        /// An empty or new directory.
        dir: PathBuf,
        /// The host (default: the only one).
        #[arg(long)]
        host: Option<String>,
    },
    /// Make a local CA, a replayer certificate, one daemon client certificate per host id
    /// (DIR/<host>/daemon.pem, .key) and a consumer token for tests and demos.
    GenCerts {
        /// Where to write them.
        #[arg(long, default_value = "certs", value_name = "DIR")]
        dir: PathBuf,
        /// More names the replayer certificate is valid for (localhost and loopback always).
        #[arg(long = "name", value_name = "DNS_OR_IP")]
        names: Vec<String>,
        /// A host id to issue a daemon certificate for; repeatable (default: this machine's,
        /// as the daemon derives it: /etc/machine-id, else the hostname).
        #[arg(long = "host", value_name = "ID")]
        hosts: Vec<String>,
    },
}

/// How to reach a running replayer.
#[derive(Debug, clap::Args)]
struct ConnArgs {
    /// The replayer: http://127.0.0.1:50051 for one serving --insecure, https://… with --ca.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    replayer: String,
    /// The CA that signed the replayer's certificate (PEM; for https).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// File holding the consumer bearer token (for a replayer with TLS).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ConnArgs {
    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(
            &self.replayer,
            self.ca.as_deref(),
            self.token_file.as_deref(),
        )
        .await
    }
}

/// What each listener allows (`listener.rs`).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Connections each listener (gRPC, HTTP) holds at once; past it new ones are reset.
    #[arg(long, default_value_t = safetytwin_services::listener::MAX_CONNECTIONS as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// A connection that has not finished its TLS handshake (plaintext: sent its first
    /// bytes) this long after it was accepted is closed, e.g. 10s.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = handshake_timeout)]
    handshake_timeout: Duration,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections as usize,
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Which twin keeps each host, and how.
#[derive(Debug, clap::Args)]
struct TwinArgs {
    /// The twin backend: a libvirt domain per host, or none (history only).
    #[arg(long, value_enum, default_value_t = default_twin())]
    twin: TwinKind,
    /// libvirt connection URI.
    #[arg(long, default_value = "qemu:///system", value_name = "URI")]
    libvirt_uri: String,
    /// The twin image (from `cargo xtask build-image`).
    #[arg(
        long,
        default_value = "/var/cache/safetytwin/image/latest",
        value_name = "DIR"
    )]
    image: PathBuf,
    /// Where twins' disk overlays and console logs live.
    #[arg(long, default_value = "/var/lib/safetytwin/twins", value_name = "DIR")]
    twin_dir: PathBuf,
    /// Guest memory of a new twin, MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    twin_memory: u32,
    /// Guest CPUs of a new twin.
    #[arg(long, default_value_t = 2, value_name = "N")]
    twin_vcpus: u32,
    /// Snapshots kept per twin (the oldest go first).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_snapshots: u64,
    /// What a failed apply does to the twin.
    #[arg(long, value_enum, default_value_t = OnFailure::Revert)]
    on_failure: OnFailure,
    /// Which of the host's package changes the twin follows; the `.deb`s come from the
    /// package pool in DATA/pool, filled with `apt-get download` from this machine's sources.
    #[arg(long, value_enum, default_value_t = PackageMode::Changes)]
    twin_packages: PackageMode,
    /// Never apply host files matching this glob to the twin (repeatable; adds to the
    /// defaults: /etc/fstab, /etc/hostname, /etc/passwd, /etc/apt/**, … see `vm/plan.rs`).
    #[arg(long = "twin-exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// This replayer's name among those sharing a PostgreSQL store, on the twins' leases and
    /// in `status` (default: HOSTNAME:PORT of --listen). Each host's twin is driven by one
    /// worker; a worker that stops renewing loses its twins to the others.
    #[arg(long, value_name = "NAME")]
    worker_id: Option<String>,
    /// How long a twin's lease lasts unless renewed (every third of it): a dead worker's twins
    /// move to another within about this much plus a third.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = lease_ttl)]
    lease: Duration,
}

/// A lease length: a humantime duration from 1s to 10min.
fn lease_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d) {
        return Err("between 1s and 10min".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TwinKind {
    /// A QEMU/KVM domain per host through libvirt.
    Libvirt,
    /// No twin: store and serve the history only.
    None,
}

/// A handshake timeout: a humantime duration from 100ms to 10min.
fn handshake_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) {
        return Err("between 100ms and 10min".into());
    }
    Ok(d)
}

fn default_twin() -> TwinKind {
    if cfg!(feature = "libvirt") {
        TwinKind::Libvirt
    } else {
        TwinKind::None
    }
}

impl TwinArgs {
    #[cfg(feature = "libvirt")]
    fn backend(&self) -> anyhow::Result<Arc<dyn TwinBackend>> {
        use safetytwin_twin::vm::libvirt::{LibvirtBackend, LibvirtConfig};
        let backend = LibvirtBackend::open(LibvirtConfig {
            uri: self.libvirt_uri.clone(),
            image: self.image.clone(),
            state_dir: self.twin_dir.clone(),
            memory_mib: self.twin_memory,
            vcpus: self.twin_vcpus,
            domain_type: None,
            user_network: false,
        })
        .context("cannot start the libvirt twin backend (or run with --twin none)")?;
        Ok(Arc::new(backend))
    }

    #[cfg(not(feature = "libvirt"))]
    fn backend(&self) -> anyhow::Result<Arc<dyn TwinBackend>> {
        bail!("this replayer was built without the libvirt feature: use --twin none")
    }

    fn applier(
        self,
        store: &Arc<Store>,
        data: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<Option<Arc<Applier>>> {
        if self.twin == TwinKind::None {
            return Ok(None);
        }
        let backend = self.backend()?;
        let mut exclude = safetytwin_twin::vm::plan::default_exclude();
        exclude.extend(self.exclude);
        let pool_dir = data.join("pool");
        let pool = Pool::open(&pool_dir, Box::new(AptDownload))
            .with_context(|| format!("cannot open the package pool {}", pool_dir.display()))?;
        Ok(Some(Arc::new(
            Applier::new(
                store.clone(),
                backend,
                ApplierConfig {
                    exclude,
                    max_snapshots: self.max_snapshots as usize,
                    on_failure: self.on_failure,
                    packages: self.twin_packages,
                    ..ApplierConfig::default()
                },
            )
            .with_pool(pool)
            .leased(
                self.worker_id.unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map_or_else(|_| "replayer".into(), |h| h.trim().to_owned());
                    format!("{host}:{}", listen.port())
                }),
                self.lease,
            ),
        )))
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

mod cli;

fn main() -> ExitCode {
    let cli: Cli = safetytwin_cli::parse("safetytwin-replayer");
    safetytwin_cli::init_logging(cli.global.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote paths, host and unit names from outside: escaped, like all text output.
            eprintln!(
                "safetytwin-replayer: error: {}",
                safetytwin_model::escape::Escaped(&format!("{e:#}"))
            );
            // Scripts can tell "not running" and "no such thing" from other failures.
            ExitCode::from(match e.downcast_ref::<ClientError>() {
                Some(ClientError::Unreachable { .. }) => 3,
                Some(ClientError::NotFound(_)) => 4,
                _ if e.downcast_ref::<cli::Differs>().is_some() => 5,
                _ => 1,
            })
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
        Command::GenCerts {
            dir,
            names,
            mut hosts,
        } => {
            if hosts.is_empty() {
                hosts.extend(safetytwin_cli::this_host_id());
            }
            let files = safetytwin_services::certs::generate(&dir, &names, &hosts)?;
            println!("CA            {}", files.ca.display());
            println!(
                "replayer      {} {}",
                files.server_cert.display(),
                files.server_key.display()
            );
            for c in &files.clients {
                println!(
                    "daemon client {} {} (host {})",
                    c.cert.display(),
                    c.key.display(),
                    c.hosts.join(", ")
                );
            }
            println!("token         {}", files.token.display());
        }
        Command::Serve {
            listen,
            data,
            store: store_url,
            insecure,
            http,
            http_hosts,
            tls_cert,
            tls_key,
            client_ca,
            token_file,
            limits,
            twin,
        } => {
            let security = if insecure {
                for addr in std::iter::once(listen).chain(http) {
                    if !addr.ip().is_loopback() {
                        bail!(
                            "--insecure serves plaintext without authentication: only on a \
                             loopback address, not {addr}"
                        );
                    }
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
            // 0700: the history holds every tracked file's content. 0711 when the twins'
            // overlays live beneath it: QEMU runs as its own user and must traverse to them
            // (listing and reading stay refused).
            let data_mode = if twin.twin == TwinKind::Libvirt && twin.twin_dir.starts_with(&data) {
                0o711
            } else {
                safetytwin_proto::private::DIR_MODE
            };
            let tightened = safetytwin_proto::private::dir(&data, data_mode)
                .with_context(|| format!("cannot make data directory {}", data.display()))?;
            if let Some(had) = tightened {
                eprintln!(
                    "safetytwin-replayer: data directory {} was mode {had:04o}; tightened to \
                     {:04o}",
                    data.display(),
                    had & data_mode
                );
            }
            let store_url = store_url.unwrap_or_else(|| StoreUrl::Redb(data.join("history.redb")));
            let store = Arc::new(
                Store::connect(&store_url)
                    .with_context(|| format!("cannot open history store {store_url}"))?,
            );
            let twin_kind = twin.twin;
            let applier = twin.applier(&store, &data, listen)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let mut server = Server::bind(listen, store)
                    .await?
                    .security(security)
                    .limits(limits.limits())
                    .http_names(http_hosts);
                if let Some(applier) = applier {
                    server = server.twin(applier);
                }
                if let Some(addr) = http {
                    server = server.http(addr).await?;
                }
                eprintln!(
                    "safetytwin-replayer: listening on {} ({mode}), history in {}, twin: {}",
                    server.local_addr(),
                    store_url,
                    match twin_kind {
                        TwinKind::Libvirt => "libvirt",
                        TwinKind::None => "none",
                    }
                );
                if let Some(addr) = server.http_addr() {
                    eprintln!("safetytwin-replayer: HTTP API and /metrics on {addr} ({mode})");
                }
                server.run(shutdown()).await
            })?;
        }
        client => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::run(client))?;
        }
    }
    Ok(())
}
