//! `safetytwin-daemon`: command-line glue over the library.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use safetytwin_daemon::{
    observe::{DEFAULT_MAX_CONTENT, ObserveConfig},
    run::{self, Mode, RunOptions},
    tracer::{DEFAULT_RING_BYTES, DEFAULT_WATCHED, TracerConfig},
};

/// Keeps a live model of this host from eBPF probes.
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
        /// Seconds between batches.
        #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// Never send the content of files matching this glob (repeatable; adds to the
        /// defaults: /etc/shadow, /etc/gshadow, their backups, /etc/ssh/ssh_host_*_key, *.key,
        /// /etc/ssl/private/**).
        #[arg(long = "secret", value_name = "GLOB")]
        secrets: Vec<String>,
        /// Largest file whose content is sent; larger files send their hash only.
        #[arg(long, default_value_t = DEFAULT_MAX_CONTENT, value_name = "BYTES")]
        max_content: u64,
        #[command(flatten)]
        probes: ProbeArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_name = "BYTES")]
    ring_bytes: u32,
    /// Drain the ring buffer this often (milliseconds); probes wake the daemon earlier when
    /// the ring is half full.
    #[arg(long, default_value_t = 100, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    drain_ms: u64,
    /// Load this eBPF object instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,
    /// Trace file changes under this directory (repeat for more, at most 8; replaces the
    /// defaults /etc, /lib/systemd/system, /usr/lib/systemd/system, /usr/local/etc).
    #[arg(long = "watch", value_name = "DIR")]
    watch: Vec<String>,
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
            eprintln!("safetytwin-daemon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (probes, mode, json, observe) = match cli.command {
        Command::Trace { json, probes } => (probes, Mode::Trace, json, ObserveConfig::default()),
        Command::Deltas {
            json,
            interval,
            secrets,
            max_content,
            probes,
        } => {
            let mut observe = ObserveConfig {
                max_content,
                ..ObserveConfig::default()
            };
            observe.secrets.extend(secrets);
            let mode = Mode::Deltas {
                interval: Duration::from_secs(interval),
            };
            (probes, mode, json, observe)
        }
    };
    let opts = RunOptions {
        tracer: TracerConfig {
            ring_bytes: probes.ring_bytes,
            object: probes.bpf_object,
            watched: if probes.watch.is_empty() {
                DEFAULT_WATCHED.iter().map(|s| s.to_string()).collect()
            } else {
                probes.watch
            },
        },
        drain_interval: Duration::from_millis(probes.drain_ms),
        observe,
        mode,
        json,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    runtime.block_on(run::run(&opts, &mut out))?;
    Ok(())
}
