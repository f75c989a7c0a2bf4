//! The daemon as the benchmark harnesses run it (`overhead.rs`, `polling.rs`, `capacity.rs`): a
//! subcommand in the background, ready once its model is seeded, with its CPU time, memory and
//! final loss counters read back.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A daemon subcommand running in the background, its stdout in a file.
pub(crate) struct Daemon {
    child: Child,
    out: PathBuf,
}

impl Daemon {
    /// The tracer as the harness runs it: `deltas` every 10 s.
    pub(crate) fn start(bin: &Path, dir: &Path) -> Result<Daemon> {
        Daemon::spawn(
            bin,
            &dir.join("daemon.jsonl"),
            &["deltas", "--json", "--interval", "10"],
        )
    }

    /// Starts `bin -v ARGS` and returns once its model is seeded and its first output is out
    /// (for the tracer, the probes are attached before that).
    pub(crate) fn spawn(bin: &Path, out: &Path, args: &[&str]) -> Result<Daemon> {
        let mut child = Command::new(bin)
            .arg("-v")
            .args(args)
            .stdout(fs::File::create(out)?)
            .stderr(Stdio::piped())
            .spawn()
            .context("start the daemon")?;
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Some(line) = lines.next() else {
                bail!(
                    "the daemon exited before it was ready (run `safetytwin-daemon -v {}`)",
                    args.join(" ")
                );
            };
            if line?.contains("model seeded") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the daemon was not ready within 60 s");
            }
        }
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        // Every mode prints at once after seeding (the snapshot, or the first batch: the whole
        // state). Until then the daemon is busy and not draining, so a workload started earlier
        // would measure the start-up instead.
        while fs::metadata(out)?.len() == 0 {
            if Instant::now() > deadline {
                bail!("the daemon printed nothing within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon {
            child,
            out: out.to_owned(),
        })
    }

    /// User + system CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz)
    }

    /// A `VmHWM`/`VmRSS`-style line of /proc/PID/status, in KiB.
    pub(crate) fn status_kib(&self, key: &str) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .with_context(|| format!("no {key} in /proc/PID/status"))
    }

    /// Stops it (SIGINT) and returns everything it printed.
    pub(crate) fn finish(mut self) -> Result<String> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(fs::read_to_string(&self.out)?)
    }

    /// Stops it and returns its final loss counters (produced, received, dropped).
    pub(crate) fn stop(self) -> Result<(u64, u64, u64)> {
        let text = self.finish()?;
        let last = text
            .lines()
            .rev()
            .find(|l| l.contains("\"kind\":\"drops\""))
            .context("no final drops line")?;
        let num = |k: &str| -> u64 {
            last.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok((num("produced"), num("received"), num("dropped")))
    }
}
