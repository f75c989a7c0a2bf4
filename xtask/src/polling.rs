//! The polling baseline side by side with the tracer: what a full scan every interval (the
//! original design's collector, `safetytwin-daemon poll`) costs per interval, and which
//! short-lived processes each approach sees.
//!
//! One workload of processes living 1 ms to 5 s (log-uniform, started at random moments over
//! 40 s) runs once while three collectors watch it at the same time: the poller (every 10 s),
//! the tracer printing every event (`trace`, to tell which processes it saw) and the tracer as
//! deployed (`deltas` every 10 s, for its CPU per interval).

use std::{
    collections::BTreeSet,
    os::unix::process::CommandExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bench_daemon::Daemon;

const PROCESSES: usize = 400;
const WINDOW: Duration = Duration::from_secs(40);
const INTERVAL_SECS: f64 = 10.0;
const SEED: u64 = 0x5afe_7731;
const MARK: &str = "st-short-";

/// Lifetime buckets (seconds): lower bound inclusive.
const BUCKETS: &[(f64, f64, &str)] = &[
    (0.001, 0.01, "1–10 ms"),
    (0.01, 0.1, "10–100 ms"),
    (0.1, 1.0, "0.1–1 s"),
    (1.0, 5.0, "1–5 s"),
];

/// splitmix64: a fixed, dependency-free sequence so every run spawns the same workload.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// (start offset, lifetime) of each process, in seconds, sorted by start.
fn plan() -> Vec<(f64, f64)> {
    let mut rng = Rng(SEED);
    let mut plan: Vec<(f64, f64)> = (0..PROCESSES)
        .map(|_| {
            let start = rng.next_f64() * WINDOW.as_secs_f64();
            let life = 0.001 * 5000f64.powf(rng.next_f64());
            (start, life)
        })
        .collect();
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    plan
}

/// Runs the plan: each process is `sleep LIFETIME` with argv[0] = `st-short-<i>`.
fn spawn_all(plan: &[(f64, f64)]) -> Result<()> {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, &(start, life)) in plan.iter().enumerate() {
            let at = Duration::from_secs_f64(start);
            if let Some(wait) = at.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            handles.push(s.spawn(move || {
                Command::new("/bin/sleep")
                    .arg0(format!("{MARK}{i}"))
                    .arg(format!("{life:.4}"))
                    .status()
            }));
        }
        for h in handles {
            h.join().expect("spawner thread")?;
        }
        Ok(())
    })
}

/// The marked process index in an argv array, if it is one of ours.
fn marked(argv: Option<&Value>) -> Option<usize> {
    argv?.get(0)?.as_str()?.strip_prefix(MARK)?.parse().ok()
}

fn lines(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines().filter_map(|l| serde_json::from_str(l).ok())
}

/// Runs the comparison and returns its RESULTS.md section.
pub(crate) fn run(daemon: &Path, dir: &Path) -> Result<String> {
    eprintln!(
        "==> polling vs tracing: {PROCESSES} processes living 1 ms–5 s over {} s",
        WINDOW.as_secs()
    );
    let poller = Daemon::spawn(
        daemon,
        &dir.join("poll.jsonl"),
        &["poll", "--json", "--interval", "10"],
    )?;
    let tracer = Daemon::spawn(daemon, &dir.join("trace.jsonl"), &["trace", "--json"])?;
    let deltas = Daemon::spawn(
        daemon,
        &dir.join("deltas.jsonl"),
        &["deltas", "--json", "--interval", "10"],
    )?;
    let plan = plan();
    let cpu0 = (poller.cpu_seconds()?, deltas.cpu_seconds()?);
    let t0 = Instant::now();
    spawn_all(&plan)?;
    // Let the last scan after the workload happen, so the poller had its full chance.
    std::thread::sleep(Duration::from_secs(1));
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = (poller.cpu_seconds()?, deltas.cpu_seconds()?);
    let polled = poller.finish()?;
    let traced = tracer.finish()?;
    let _ = deltas.finish()?;

    let seen_by_tracer: BTreeSet<usize> = lines(&traced)
        .filter(|v| v["kind"] == "exec")
        .filter_map(|v| marked(v.get("argv")))
        .collect();
    let mut seen_by_poller = BTreeSet::new();
    let mut scans = Vec::new();
    for v in lines(&polled) {
        if let Some(scan) = v.get("scan") {
            scans.push((
                scan["cpu_us"].as_u64().unwrap_or(0),
                scan["wall_us"].as_u64().unwrap_or(0),
                scan["processes"].as_u64().unwrap_or(0),
                scan["files"].as_u64().unwrap_or(0),
            ));
        }
        for p in v["processes"].as_array().into_iter().flatten() {
            if p["op"] == "upsert"
                && let Some(i) = marked(p.get("argv"))
            {
                seen_by_poller.insert(i);
            }
        }
    }
    let first = *scans.first().context("the poller printed no scan")?;
    let later: Vec<_> = scans.iter().skip(1).collect();
    let later_cpu_ms = if later.is_empty() {
        first.0 as f64 / 1000.0
    } else {
        later.iter().map(|s| s.0 as f64).sum::<f64>() / later.len() as f64 / 1000.0
    };
    let intervals = secs / INTERVAL_SECS;

    let mut text = format!(
        "## Against a polling collector\n\n\
         The original design polled: a full scan of /proc and the config trees every interval. \
         `safetytwin-daemon poll` is that collector, built from the very scan that seeds the \
         tracer (process table, cgroup tree, every watched file read and hashed), diffed against \
         the previous scan. One workload ran once while both watched it: {PROCESSES} `sleep` \
         processes with lifetimes log-uniform in 1 ms–5 s, started at random moments over {} s \
         (seed {SEED:#x}). Reproduce with `cargo xtask bench-overhead --only polling`.\n\n\
         | collector | CPU per 10 s interval | notes |\n| --- | --- | --- |\n\
         | poll (full scan every 10 s) | {:.1} ms per scan ({} scans; the first, cold, {:.1} ms) | {} processes, {} files per scan; {:.0} ms wall per scan |\n\
         | tracer (`deltas`, 10 s batches) | {:.1} ms | {} events in the window, folded as they came; files read only when touched |\n\n\
         | process lifetime | processes | seen by the tracer | seen by the poller | poller, expected (lifetime / interval) |\n\
         | --- | --- | --- | --- | --- |\n",
        WINDOW.as_secs(),
        later_cpu_ms,
        scans.len(),
        first.0 as f64 / 1000.0,
        first.2,
        first.3,
        later.iter().map(|s| s.1 as f64).sum::<f64>() / later.len().max(1) as f64 / 1000.0,
        (cpu1.1 - cpu0.1) * 1000.0 / intervals,
        PROCESSES * 3,
    );
    let mut totals = (0, 0, 0);
    for &(lo, hi, label) in BUCKETS {
        let members: Vec<usize> = (0..plan.len())
            .filter(|&i| plan[i].1 >= lo && (plan[i].1 < hi || hi == 5.0))
            .collect();
        let t = members
            .iter()
            .filter(|i| seen_by_tracer.contains(i))
            .count();
        let p = members
            .iter()
            .filter(|i| seen_by_poller.contains(i))
            .count();
        let expected = members
            .iter()
            .map(|&i| (plan[i].1 / INTERVAL_SECS).min(1.0))
            .sum::<f64>()
            / members.len().max(1) as f64;
        let pct = |n: usize| 100.0 * n as f64 / members.len().max(1) as f64;
        text.push_str(&format!(
            "| {label} | {} | {t} ({:.1}%) | {p} ({:.1}%) | {:.1}% |\n",
            members.len(),
            pct(t),
            pct(p),
            100.0 * expected
        ));
        totals = (totals.0 + members.len(), totals.1 + t, totals.2 + p);
    }
    let pct = |n: usize| 100.0 * n as f64 / totals.0.max(1) as f64;
    text.push_str(&format!(
        "| all | {} | {} ({:.1}%) | {} ({:.1}%) | |\n\n\
         The poller's CPU is spent every interval whether anything changed or not, and grows with \
         the number of processes and files; the tracer's follows the event rate. Over the window \
         the poller used {:.0} ms of CPU in all.\n",
        totals.0,
        totals.1,
        pct(totals.1),
        totals.2,
        pct(totals.2),
        (cpu1.0 - cpu0.0) * 1000.0,
    ));
    eprintln!(
        "    tracer saw {}/{}, poller {}/{}; poll scan {:.1} ms CPU",
        totals.1, totals.0, totals.2, totals.0, later_cpu_ms
    );
    Ok(text)
}
