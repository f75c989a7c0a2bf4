//! The daemon's capacity: its memory with 10,000 tracked processes, and the event rate it
//! sustains without a drop (and what happens past it).
//!
//! Memory is read from /proc/PID/status (`VmHWM`, the peak RSS) twice: once when the 10,000
//! processes arrive as events, once when a fresh daemon seeds them from /proc. The rate is
//! stepped with a paced storm of opens for writing under a watched tree (one event each, the
//! cheapest event to produce in bulk), a fresh daemon per step so each step's counters are
//! exact.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::bench_daemon::Daemon;

const PROCESSES: usize = 10_000;
/// Target events/s per step; 0 = as fast as two threads can go.
const RATES: &[u64] = &[25_000, 50_000, 100_000, 0];
const RINGS: &[(u32, &str)] = &[(4 << 20, "4 MiB (default)"), (256 << 10, "256 KiB")];
const STEP: Duration = Duration::from_secs(3);
const STORM_DIR: &str = "/etc/st-bench-rate";

/// Children that are killed and reaped however the measurement ends.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn spawn_sleepers() -> Result<Sleepers> {
    let mut s = Sleepers(Vec::with_capacity(PROCESSES));
    for i in 0..PROCESSES {
        let child = Command::new("/bin/sleep")
            .arg0(format!("st-rss-{i}"))
            .arg("900")
            .spawn()
            .with_context(|| format!("spawn sleeper {i}"))?;
        s.0.push(child);
    }
    Ok(s)
}

/// The first whole line a daemon printed (its first batch; a long one takes several writes).
fn first_line(path: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(path)?;
        if let Some((line, _)) = text.split_once('\n') {
            return Ok(line.to_owned());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} has no whole line after 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Peak RSS with 10,000 processes (as events, and seeded), and one poll scan over them.
fn memory(daemon: &Path, dir: &Path) -> Result<String> {
    eprintln!("==> memory with {PROCESSES} processes");
    let out = dir.join("rss.jsonl");
    let d = Daemon::spawn(daemon, &out, &["deltas", "--json", "--interval", "5"])?;
    let idle = d.status_kib("VmHWM")?;
    let t0 = Instant::now();
    let sleepers = spawn_sleepers()?;
    let spawn_secs = t0.elapsed().as_secs_f64();
    // Two cuts: the processes are in the model and in a batch.
    std::thread::sleep(Duration::from_secs(11));
    let (events_hwm, events_rss) = (d.status_kib("VmHWM")?, d.status_kib("VmRSS")?);
    let (_, received, dropped) = d.stop()?;

    let d = Daemon::spawn(daemon, &out, &["deltas", "--json", "--interval", "3600"])?;
    let seeded_hwm = d.status_kib("VmHWM")?;
    d.finish()?;

    let poll_out = dir.join("rss-poll.jsonl");
    let p = Daemon::spawn(daemon, &poll_out, &["poll", "--json", "--interval", "3600"])?;
    let line = first_line(&poll_out)?;
    let poll_hwm = p.status_kib("VmHWM")?;
    p.finish()?;
    let scan: serde_json::Value = serde_json::from_str(&line)?;
    let scan_ms = scan["scan"]["cpu_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
    drop(sleepers);

    Ok(format!(
        "### Memory with {PROCESSES} processes\n\n\
         {PROCESSES} `sleep` processes spawned in {spawn_secs:.1} s while the daemon ran \
         (`deltas --interval 5`); peak RSS (`VmHWM`) read after two batches. Then a fresh daemon \
         seeded them from /proc and printed its first batch (the full state), and one poll scan \
         ran over them. Reproduce with `cargo xtask bench-overhead --only capacity`.\n\n\
         | daemon | peak RSS | notes |\n| --- | --- | --- |\n\
         | idle tracer, after seeding | {} | |\n\
         | tracer, 10,000 processes arrived as events | {} (RSS now {}) | {received} events, {dropped} dropped |\n\
         | tracer, 10,000 processes seeded from /proc | {} | |\n\
         | poller, one scan over them | {} | scan CPU {scan_ms:.0} ms |\n\n",
        mib(idle),
        mib(events_hwm),
        mib(events_rss),
        mib(seeded_hwm),
        mib(poll_hwm),
    ))
}

/// Opens files for writing under the watched storm directory at `rate` events/s (0 = flat
/// out) from two threads for `STEP`; returns the opens done.
fn paced_storm(rate: u64) -> Result<u64> {
    let per_thread = rate as f64 / 2.0;
    let deadline = Instant::now() + STEP;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || -> Result<u64> {
                    let start = Instant::now();
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            let path = format!("{STORM_DIR}/t{t}-{}", done % 100);
                            drop(fs::OpenOptions::new().write(true).open(path)?);
                            done += 1;
                        }
                        if rate > 0 {
                            let due = start.elapsed().as_secs_f64() * per_thread;
                            if (done as f64) > due {
                                std::thread::sleep(Duration::from_secs_f64(
                                    (done as f64 - due) / per_thread,
                                ));
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("storm thread"))
            .sum()
    })
}

/// Steps the event rate for each ring size; a fresh daemon per step.
fn throughput(daemon: &Path, dir: &Path) -> Result<String> {
    fs::create_dir_all(STORM_DIR)?;
    for t in 0..2 {
        for i in 0..100 {
            fs::write(format!("{STORM_DIR}/t{t}-{i}"), b"x")?;
        }
    }
    let mut text = format!(
        "### Event rate and drops\n\n\
         Opens for writing of existing files under a watched tree ({STORM_DIR}), one event each, \
         from two threads paced to a target rate for {} s; a fresh daemon (`deltas`) per step, so \
         each row's counters are exact after its final drain. Reproduce with `cargo xtask \
         bench-overhead --only capacity`.\n\n\
         | ring | target events/s | achieved events/s | produced | received | dropped | daemon CPU |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        STEP.as_secs()
    );
    for &(ring, ring_label) in RINGS {
        for &rate in RATES {
            let ring_arg = ring.to_string();
            let d = Daemon::spawn(
                daemon,
                &dir.join("rate.jsonl"),
                &[
                    "deltas",
                    "--json",
                    "--interval",
                    "10",
                    "--ring-bytes",
                    &ring_arg,
                ],
            )?;
            let cpu0 = d.cpu_seconds()?;
            let t0 = Instant::now();
            let ops = paced_storm(rate)?;
            let secs = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(200));
            let cpu = d.cpu_seconds()? - cpu0;
            let (produced, received, dropped) = d.stop()?;
            let target = if rate == 0 {
                "flat out".to_owned()
            } else {
                rate.to_string()
            };
            eprintln!(
                "    ring {ring_label}, {target}: {:.0}/s, dropped {dropped}",
                ops as f64 / secs
            );
            text.push_str(&format!(
                "| {ring_label} | {target} | {:.0} | {produced} | {received} | {dropped} | {:.0}% of a core |\n",
                ops as f64 / secs,
                100.0 * cpu / secs
            ));
        }
    }
    fs::remove_dir_all(STORM_DIR)?;
    Ok(text)
}

/// Runs both measurements and returns their RESULTS.md section.
pub(crate) fn run(daemon: &Path, dir: &Path) -> Result<String> {
    Ok(format!(
        "## Capacity: memory and drops\n\n{}{}",
        memory(daemon, dir)?,
        throughput(daemon, dir)?
    ))
}
