//! `cargo xtask up`: the whole pipeline on this machine in one command. It sets up and builds
//! what is missing (toolchain, QEMU/libvirt, the twin image, the probes, release binaries),
//! starts the replayer with its store and the libvirt twin, starts the daemon streaming to it,
//! shows progress until the twin holds the host's first full state, prints where everything is,
//! and on Ctrl-C stops both (daemon first, so its last batch is spooled) and leaves the store,
//! the twin and its snapshots for the next start.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result, bail};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Options of `up`.
pub struct Up {
    /// The replayer's listen address (loopback: plaintext).
    pub listen: String,
    /// The dashboard's (and the JSON API's) address.
    pub http: String,
    /// Store, spool and logs.
    pub data: PathBuf,
    /// `libvirt` or `none`.
    pub twin: String,
    /// The daemon's batch interval, seconds.
    pub interval: u64,
    /// Longest wait for the twin's first full state.
    pub first_sync_timeout: Duration,
}

/// A child that is interrupted (SIGINT) and reaped when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[&str], log: PathBuf) -> Result<Proc> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            // Its own process group: a Ctrl-C reaches `up` alone, which stops the children in
            // order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Proc { name, child, log })
    }

    /// Fails with the end of its log if it has exited.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `safetytwin-replayer status --json`, parsed.
fn status(replayer: &Path, url: &str) -> Option<serde_json::Value> {
    let out = Command::new(replayer)
        .args(["status", "--json", "--replayer", url])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The last seq the replayer stored for `host` (0: none, or no answer).
fn last_seq(replayer: &Path, url: &str, host: &str) -> u64 {
    let Ok(out) = Command::new(replayer)
        .args(["hosts", "--json", "--replayer", url])
        .stderr(Stdio::null())
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|h| h["host"] == host)
        .and_then(|h| h["last_seq"].as_u64())
        .unwrap_or(0)
}

fn sleep_or_stop(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if STOP.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    STOP.load(Ordering::SeqCst)
}

/// Runs the pipeline until Ctrl-C; `root` holds the release binaries.
pub fn run(root: &Path, up: &Up) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let bin = root.join("target/release");
    let (replayer_bin, daemon_bin) = (
        bin.join("safetytwin-replayer"),
        bin.join("safetytwin-daemon"),
    );
    fs::create_dir_all(&up.data).with_context(|| format!("cannot create {}", up.data.display()))?;
    let url = format!("http://{}", up.listen);
    if status(&replayer_bin, &url).is_some() {
        bail!(
            "a replayer already answers at {url}: stop it first, or pass --listen another address"
        );
    }

    eprintln!("==> starting the replayer ({url}, twin: {})", up.twin);
    let data = up.data.to_str().context("data directory is not UTF-8")?;
    let mut replayer = Proc::spawn(
        "the replayer",
        &replayer_bin,
        &[
            "-v",
            "serve",
            "--insecure",
            "--listen",
            &up.listen,
            "--http",
            &up.http,
            "--data",
            data,
            "--twin",
            &up.twin,
        ],
        up.data.join("replayer.log"),
    )?;
    let t = Instant::now();
    while status(&replayer_bin, &url).is_none() {
        replayer.check()?;
        if t.elapsed() > Duration::from_secs(30) || sleep_or_stop(Duration::from_millis(200)) {
            bail!(
                "the replayer did not answer within 30 s (see {})",
                replayer.log.display()
            );
        }
    }

    // The daemon names this host by its machine id (else its hostname); the twin is ready once
    // it holds a seq this run's daemon sent (its first batch restates everything).
    let host = safetytwin_cli::this_host_id()
        .context("no host id: /etc/machine-id and the hostname are empty")?;
    let before = last_seq(&replayer_bin, &url, &host);

    eprintln!("==> starting the daemon (batches every {} s)", up.interval);
    let spool = up.data.join("spool");
    let interval = up.interval.to_string();
    let mut daemon = Proc::spawn(
        "the daemon",
        &daemon_bin,
        &[
            "-v",
            "run",
            "--replayer",
            &url,
            "--insecure",
            "--spool",
            spool.to_str().context("spool path is not UTF-8")?,
            "--interval",
            &interval,
        ],
        up.data.join("daemon.log"),
    )?;

    // Progress until the twin holds the first state of this run.
    let started = Instant::now();
    let mut last_line = String::new();
    let mut last_print = Instant::now();
    loop {
        if sleep_or_stop(Duration::from_secs(1)) {
            eprintln!("==> interrupted");
            return Ok(());
        }
        daemon.check()?;
        replayer.check()?;
        let Some(s) = status(&replayer_bin, &url) else {
            continue;
        };
        let stored = last_seq(&replayer_bin, &url, &host);
        let twin = s["twins"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["host"] == host.as_str()));
        let line = match twin {
            _ if stored <= before => {
                "waiting for the daemon's first batch (the whole state)".into()
            }
            None if up.twin == "none" => {
                eprintln!(
                    "    the history holds the host's state: seq {stored} (no twin: --twin none)"
                );
                break;
            }
            None => "first batch stored; starting the twin".into(),
            Some(tw) => {
                let applied = tw["applied_seq"].as_u64().unwrap_or(0);
                if applied > before {
                    eprintln!(
                        "    the twin holds the host's state: seq {applied}, snapshot {} ({:.0} s \
                         after start)",
                        tw["snapshot"],
                        started.elapsed().as_secs_f64(),
                    );
                    break;
                }
                if tw["last_failure_seq"].as_u64().unwrap_or(0) > before {
                    bail!(
                        "the twin could not take the host's state: {} (see {})",
                        tw["last_failure"].as_str().unwrap_or("?"),
                        replayer.log.display()
                    );
                }
                format!(
                    "twin {}: {} the host's state",
                    tw["domain"].as_str().unwrap_or("?"),
                    if before == 0 {
                        "booting and applying"
                    } else {
                        "catching up to"
                    }
                )
            }
        };
        // A line when the phase changes, and a heartbeat while it lasts (a TCG boot and the
        // first apply take a minute or more).
        if line != last_line || last_print.elapsed() >= Duration::from_secs(15) {
            eprintln!("    {line} ({:.0} s)", started.elapsed().as_secs_f64());
            last_line = line;
            last_print = Instant::now();
        }
        if started.elapsed() > up.first_sync_timeout {
            bail!(
                "the twin did not take the host's state within {:?} (see {})",
                up.first_sync_timeout,
                replayer.log.display()
            );
        }
    }

    let cli = replayer_bin.display();
    eprintln!(
        "\n==> up. Every {} s the daemon sends what changed; the twin applies it and snapshots.\n\
         \x20   replayer  {url} (gRPC, reflection on), history {}/history.redb\n\
         \x20   dashboard http://{}/ (and the JSON API, /metrics)\n\
         \x20   logs      {}/replayer.log, {}/daemon.log\n\
         \x20   twin      virsh console safetytwin-{host}   (log in as root)\n\
         \x20   try       {cli} status | watch | snapshots | revert <snapshot> | export <seq> <dir>\n\
         \x20   Ctrl-C stops the daemon and the replayer; the store, the twin and its snapshots stay.",
        up.interval, data, up.http, data, data
    );
    while !sleep_or_stop(Duration::from_secs(1)) {
        daemon.check()?;
        replayer.check()?;
    }
    eprintln!("==> stopping the daemon, then the replayer");
    daemon.stop();
    replayer.stop();
    Ok(())
}
