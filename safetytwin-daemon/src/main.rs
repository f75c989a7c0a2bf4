//! `safetytwin-daemon`: command-line glue over the library.

use std::{fs, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use safetytwin_daemon::{
    metrics,
    observe::{DEFAULT_MAX_CONTENT, FingerprintKey, ObserveConfig},
    poll::{self, PollOptions},
    run::{self, Mode, RunOptions, Sink},
    sink::ReplayerOptions,
    tracer::{DEFAULT_RING_BYTES, DEFAULT_WATCHED, TracerConfig},
};
use safetytwin_proto::{
    convert::DEFAULT_PART_BYTES,
    sender::{ClientTls, SenderConfig},
};

// `pub(crate)`: `fuzz/` compiles this file in, to check config files against these flags.
/// Keeps a live model of this host from eBPF probes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: safetytwin_cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every event (the /proc snapshot first) until SIGINT/SIGTERM.
    Trace {
        /// One JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        probes: ProbeArgs,
    },
    /// Print one batch of net changes every interval (the first holds the whole initial
    /// state) until SIGINT/SIGTERM.
    Deltas {
        /// One JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        batches: BatchArgs,
        #[command(flatten)]
        probes: ProbeArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// The polling baseline (no probes): a full scan of /proc, cgroupfs and the watched trees
    /// every interval, printed as the net changes since the previous scan, with each scan's
    /// CPU time. What lives and dies between two scans is never seen; the benchmarks compare it
    /// with the tracer.
    Poll {
        /// One JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        batches: BatchArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Production mode: stream the batches to a replayer, exactly once (spooled on disk until
    /// acknowledged), until SIGINT/SIGTERM.
    Run {
        /// The replayer's gRPC endpoint, e.g. http://127.0.0.1:50051. Repeat it for replayers
        /// that share one history (PostgreSQL): the daemon stays with the one that answers and
        /// moves to the next when it fails.
        #[arg(long, value_name = "URL", required = true)]
        replayer: Vec<String>,
        /// Plaintext gRPC without a client certificate (the replayer must be on loopback).
        #[arg(long)]
        insecure: bool,
        /// The CA that signed the replayer's certificate (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        tls_ca: Option<PathBuf>,
        /// This daemon's client certificate (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        tls_cert: Option<PathBuf>,
        /// This daemon's private key (PEM).
        #[arg(long, value_name = "PEM", required_unless_present = "insecure")]
        tls_key: Option<PathBuf>,
        /// Spool directory: batches wait here until the replayer acknowledges them. It also
        /// keeps fingerprint.key (mode 0600), the key of the hash sent for redacted files.
        #[arg(long, default_value = "/var/lib/safetytwin/spool", value_name = "DIR")]
        spool: PathBuf,
        /// Bound on the spool; when full, pending batches are dropped and the next batch
        /// restates the whole model (a resync) rather than losing changes silently.
        #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
        spool_max_bytes: u64,
        /// Largest message sent to the replayer. A larger batch (the first one, which restates
        /// a large host's whole state, or a package upgrade) is sent as consecutive parts of
        /// at most this size (a single larger file goes alone), which the twin applies once
        /// the last has arrived. Keep it well below the replayer's --max-message-bytes.
        #[arg(
            long,
            default_value_t = DEFAULT_PART_BYTES,
            value_name = "BYTES",
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(4096..=(1 << 30)),
        )]
        max_batch_bytes: usize,
        /// This host's id (default: /etc/machine-id, else the hostname).
        #[arg(long, value_name = "ID")]
        host_id: Option<String>,
        #[command(flatten)]
        batches: BatchArgs,
        #[command(flatten)]
        probes: ProbeArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
}

#[derive(Debug, clap::Args)]
struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; off by default).
    /// The endpoint has no authentication and no TLS, so ADDR must be a loopback address
    /// unless --metrics-allow-remote is given.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Let --metrics listen on a non-loopback address. Anyone who can reach it can read the
    /// metrics; restrict it with a firewall.
    #[arg(long, requires = "metrics")]
    metrics_allow_remote: bool,
}

impl MetricsArgs {
    fn endpoint(self) -> Option<metrics::Endpoint> {
        Some(metrics::Endpoint {
            addr: self.metrics?,
            allow_remote: self.metrics_allow_remote,
        })
    }
}

#[derive(Debug, clap::Args)]
struct BatchArgs {
    /// Seconds between batches.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// Never send the content of files matching this glob, nor of their copies by backup,
    /// editor and package-manager names (shadow-, .shadow.swp, x.key.bak …), in any letter
    /// case (repeatable; adds to the defaults: /etc/shadow, /etc/gshadow,
    /// /etc/ssh/ssh_host_*_key, *.key, /etc/ssl/private/**). Files holding a private key, a
    /// password hash or a VPN key, and files with several hard links, are never sent either.
    #[arg(long = "secret", value_name = "GLOB")]
    secrets: Vec<String>,
    /// Largest file whose content is sent; larger files send their hash only.
    #[arg(long, default_value_t = DEFAULT_MAX_CONTENT, value_name = "BYTES")]
    max_content: u64,
}

impl BatchArgs {
    fn mode(&self) -> (Mode, ObserveConfig) {
        let mut observe = ObserveConfig {
            max_content: self.max_content,
            ..ObserveConfig::default()
        };
        observe.secrets.extend(self.secrets.iter().cloned());
        let mode = Mode::Deltas {
            interval: Duration::from_secs(self.interval),
        };
        (mode, observe)
    }
}

fn read_id(path: &str) -> Option<String> {
    let id = std::fs::read_to_string(path).ok()?.trim().to_owned();
    (!id.is_empty()).then_some(id)
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_name = "BYTES")]
    ring_bytes: u32,
    /// Drain the ring buffer this often (milliseconds; default 100 for `trace`, 1000 for the
    /// batch modes, whose output only changes every interval). Probes wake the daemon earlier
    /// when the ring is half full, so a longer period costs no events.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    drain_ms: Option<u64>,
    /// Load this eBPF object instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Trace file changes under this directory (repeat for more, at most 8; replaces the
    /// defaults /etc, /lib/systemd/system, /usr/lib/systemd/system, /usr/local/etc).
    #[arg(long = "watch", value_name = "DIR")]
    watch: Vec<String>,
}

impl WatchArgs {
    fn trees(self) -> Vec<String> {
        if self.watch.is_empty() {
            DEFAULT_WATCHED.iter().map(|s| s.to_string()).collect()
        } else {
            self.watch
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = safetytwin_cli::parse("safetytwin-daemon");
    safetytwin_cli::init_logging(cli.global.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors quote paths, host and unit names from outside: escaped, like all text output.
            eprintln!(
                "safetytwin-daemon: error: {}",
                safetytwin_model::escape::Escaped(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (probes, mode, json, observe, sink, metrics) = match cli.command {
        Command::Trace { json, probes } => (
            probes,
            Mode::Trace,
            json,
            ObserveConfig::default(),
            Sink::Print,
            None,
        ),
        Command::Deltas {
            json,
            batches,
            probes,
            metrics,
        } => {
            let (mode, observe) = batches.mode();
            (probes, mode, json, observe, Sink::Print, metrics.endpoint())
        }
        Command::Poll {
            json,
            batches,
            watch,
        } => {
            let (_, observe) = batches.mode();
            let watched = watch.trees();
            let opts = PollOptions {
                interval: Duration::from_secs(batches.interval),
                observe: ObserveConfig {
                    roots: watched.clone(),
                    ..observe
                },
                watched,
                json,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            return Ok(runtime.block_on(poll::poll(&opts, &mut out))?);
        }
        Command::Run {
            replayer,
            insecure,
            tls_ca,
            tls_cert,
            tls_key,
            spool,
            spool_max_bytes,
            max_batch_bytes,
            host_id,
            batches,
            probes,
            metrics,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let tls = match (insecure, tls_ca, tls_cert, tls_key) {
                (true, ..) => {
                    if let Some(url) = replayer.iter().find(|u| !u.starts_with("http://")) {
                        bail!("--insecure needs http:// replayer URLs, not {url:?}");
                    }
                    None
                }
                (false, Some(ca), Some(cert), Some(key)) => {
                    if let Some(url) = replayer.iter().find(|u| !u.starts_with("https://")) {
                        bail!("TLS needs https:// replayer URLs, not {url:?}");
                    }
                    Some(ClientTls {
                        ca: read(&ca)?,
                        cert: read(&cert)?,
                        key: read(&key)?,
                    })
                }
                _ => bail!("TLS needs --tls-ca, --tls-cert and --tls-key (or --insecure)"),
            };
            let host_id = host_id
                .or_else(safetytwin_cli::this_host_id)
                .context("no host id: pass --host-id")?;
            let boot_id =
                read_id("/proc/sys/kernel/random/boot_id").unwrap_or_else(|| "unknown".into());
            let (mode, mut observe) = batches.mode();
            // Kept with the spool, so a redacted file's fingerprint survives restarts.
            fs::create_dir_all(&spool)
                .with_context(|| format!("cannot create {}", spool.display()))?;
            observe.fingerprint_key =
                FingerprintKey::load_or_create(&spool.join("fingerprint.key"))?;
            let sink = Sink::Replayer(Box::new(ReplayerOptions {
                sender: SenderConfig {
                    endpoints: replayer,
                    host_id,
                    boot_id,
                    // `run` declares the trees it watches, once it has checked them.
                    watched: Vec::new(),
                    tls,
                },
                spool_dir: spool,
                spool_max_bytes,
                max_batch_bytes,
            }));
            (probes, mode, false, observe, sink, metrics.endpoint())
        }
    };
    let watched = probes.watch.trees();
    let observe = ObserveConfig {
        roots: watched.clone(),
        ..observe
    };
    let opts = RunOptions {
        tracer: TracerConfig {
            ring_bytes: probes.ring_bytes,
            object: probes.bpf_object,
            watched,
            // Only `trace` prints the kernel's time of each event.
            stamp: matches!(mode, Mode::Trace),
        },
        drain_interval: Duration::from_millis(probes.drain_ms.unwrap_or(match mode {
            Mode::Trace => 100,
            Mode::Deltas { .. } => 1000,
        })),
        observe,
        mode,
        json,
        sink,
        metrics,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    runtime.block_on(run::run(&opts, &mut out))?;
    Ok(())
}
