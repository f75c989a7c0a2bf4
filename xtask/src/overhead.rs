//! `cargo xtask bench-overhead`: what tracing costs the traced workload.
//!
//! Each workload runs alternately without and with the daemon attached (A B A B …), and the
//! ratio traced/untraced of each pair is reported as a median with its spread. A separate
//! traced run per workload, with `kernel.bpf_stats_enabled`, gives each probe's kernel time per
//! run and the daemon's CPU time per event. Results go to `benches/RESULTS.md`.

use std::{
    fs,
    io::Write,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::bench_daemon::Daemon;

/// A workload: a name, what it does, and how to run it once.
struct Workload {
    name: &'static str,
    what: &'static str,
    run: fn() -> Result<u64>,
}

const EXECS: usize = 2000;
const FILE_OPS: usize = 200_000;
const WATCHED_OPS: usize = 20_000;

fn exec_serial() -> Result<u64> {
    for _ in 0..EXECS {
        Command::new("/bin/true").status()?;
    }
    Ok(EXECS as u64)
}

fn exec_parallel() -> Result<u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..EXECS / 2).try_for_each(|_| Command::new("/bin/true").status().map(drop))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("worker thread"))
    })?;
    Ok(EXECS as u64)
}

/// `n` × open(O_WRONLY) + write 64 bytes at offset 0 + close over 100 existing files: page
/// cache only, so the syscalls (and their probes) dominate rather than block allocation.
fn file_storm(dir: &Path, n: usize) -> Result<u64> {
    fs::create_dir_all(dir)?;
    for i in 0..100 {
        fs::write(dir.join(format!("f{i}")), [b'x'; 64])?;
    }
    let data = [b'y'; 64];
    for i in 0..n {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("f{}", i % 100)))?;
        f.write_all(&data)?;
    }
    Ok(n as u64)
}

fn files_unwatched() -> Result<u64> {
    file_storm(Path::new("/dev/shm/st-bench"), FILE_OPS)
}

fn files_watched() -> Result<u64> {
    file_storm(Path::new("/etc/st-bench"), WATCHED_OPS)
}

/// A configuration-management-like run: copy, edit in place, template, archive, clean up.
fn mixed() -> Result<u64> {
    let script = r#"
        set -e
        d=/etc/st-bench-mixed; t=/tmp/st-bench-mixed
        mkdir -p $d $t
        for i in $(seq 100); do
            cp /etc/hosts $d/hosts.$i
            sed -i "s/localhost/host$i/" $d/hosts.$i
            printf 'port=%s\nworkers=4\n' $i > $d/app.$i.conf
            chmod 640 $d/app.$i.conf
        done
        tar cf $t/conf.tar -C $d .
        gzip -f $t/conf.tar
        rm -rf $d $t
    "#;
    let status = Command::new("/bin/sh").args(["-c", script]).status()?;
    if !status.success() {
        bail!("mixed workload failed: {status}");
    }
    Ok(1)
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "exec storm, serial",
        what: "2,000 posix_spawn of /bin/true, one after another",
        run: exec_serial,
    },
    Workload {
        name: "exec storm, parallel",
        what: "2,000 posix_spawn of /bin/true from 2 threads",
        run: exec_parallel,
    },
    Workload {
        name: "file storm, not watched",
        what: "200,000 open(O_WRONLY)+write+close on tmpfs (/dev/shm)",
        run: files_unwatched,
    },
    Workload {
        name: "file storm, watched",
        what: "20,000 open(O_WRONLY)+write+close in /etc/st-bench",
        run: files_watched,
    },
    Workload {
        name: "mixed job",
        what: "100× cp, sed -i, printf >, chmod under /etc, then tar+gzip and rm",
        run: mixed,
    },
];

fn time(w: &Workload) -> Result<f64> {
    let start = Instant::now();
    (w.run)()?;
    Ok(start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-program (run count, run time ns) from the kernel's BPF statistics.
fn bpf_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // bpftool -j prints one JSON array; pick name, run_cnt and run_time_ns of each object
    // without a JSON dependency in xtask.
    let mut progs = Vec::new();
    for obj in text.split("},{") {
        let field = |k: &str| {
            obj.split(&format!("\"{k}\":")).nth(1).map(|r| {
                r.trim_start_matches('"')
                    .split(['"', ',', '}'])
                    .next()
                    .unwrap_or("")
            })
        };
        let (Some(name), Some(cnt), Some(ns)) =
            (field("name"), field("run_cnt"), field("run_time_ns"))
        else {
            continue;
        };
        progs.push((
            name.to_owned(),
            cnt.parse().unwrap_or(0),
            ns.parse().unwrap_or(0),
        ));
    }
    Ok(progs)
}

const OUR_PROGRAMS: &[&str] = &[
    "exec_sched_process_exec",
    "exit_sched_process_exit",
    "fork_sched_process_fork",
    "file_sys_enter",
    "file_sys_exit",
    "cgroup_cgroup_mkdir",
    "cgroup_cgroup_rmdir",
    "cgroup_cgroup_attach_task",
    "cgroup_cgroup_notify_populated",
];

/// Pids of running safetytwin daemons (their probes would trace the "untraced" runs too).
fn running_daemons() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with("safetytwin-daem"))
        })
        .collect()
}

/// The parts of the harness, each writing its own sections of RESULTS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Traced/untraced A/B pairs and the kernel time per probe run.
    Ab,
    /// The polling collector side by side with the tracer.
    Polling,
    /// Memory with 10,000 processes; event rate and drops.
    Capacity,
}

/// Runs the harness (`only` one part, or all) and rewrites its sections of `results`.
pub fn run(daemon: &Path, pairs: usize, only: Option<Part>, results: &Path) -> Result<()> {
    let others = running_daemons();
    if !others.is_empty() {
        bail!(
            "safetytwin-daemon is already running (pids {others:?}); its probes would trace the \
             untraced runs too. Stop it first."
        );
    }
    let dir = std::env::temp_dir().join("st-bench-overhead");
    fs::create_dir_all(&dir)?;
    let wanted = |p: Part| only.is_none_or(|o| o == p);
    let mut sections = Vec::new();
    if wanted(Part::Ab) {
        sections.extend(ab(daemon, pairs, &dir)?);
    }
    if wanted(Part::Polling) {
        sections.push(crate::polling::run(daemon, &dir)?);
    }
    if wanted(Part::Capacity) {
        sections.push(crate::capacity::run(daemon, &dir)?);
    }
    write_results(results, &sections)
}

/// The A/B pairs: the preamble with the ratio table, and the kernel-time section.
fn ab(daemon: &Path, pairs: usize, dir: &Path) -> Result<[String; 2]> {
    let mut rows = Vec::new();
    let mut kernel_rows = Vec::new();
    for w in WORKLOADS {
        eprintln!("==> {} ({} pairs)", w.name, pairs);
        (w.run)()?; // warm caches
        let (mut ratios, mut untraced, mut traced) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..pairs {
            let a = time(w)?;
            let d = Daemon::start(daemon, dir)?;
            let b = time(w)?;
            let (_, _, dropped) = d.stop()?;
            eprintln!(
                "    pair {}: untraced {a:.3} s, traced {b:.3} s, dropped {dropped}",
                i + 1
            );
            ratios.push(b / a);
            untraced.push(a);
            traced.push(b);
        }
        let (lo, hi) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        let med = median(&mut ratios);

        // One more traced run with the kernel's BPF statistics and the daemon's CPU time.
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        let d = Daemon::start(daemon, dir)?;
        let before = bpf_stats()?;
        let cpu0 = d.cpu_seconds()?;
        let ops = (w.run)()?;
        // The daemon works at its drains; let the last one happen.
        std::thread::sleep(Duration::from_millis(300));
        let cpu1 = d.cpu_seconds()?;
        let after = bpf_stats()?;
        let (produced, received, dropped) = d.stop()?;
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        let mut per_prog = Vec::new();
        for name in OUR_PROGRAMS {
            let sum = |v: &[(String, u64, u64)]| {
                v.iter()
                    .filter(|(n, ..)| n == name)
                    .fold((0, 0), |(c, t), (_, cnt, ns)| (c + cnt, t + ns))
            };
            let (c0, t0) = sum(&before);
            let (c1, t1) = sum(&after);
            if c1 > c0 {
                per_prog.push(format!(
                    "{name}: {:.0} ns × {}",
                    (t1 - t0) as f64 / (c1 - c0) as f64,
                    c1 - c0
                ));
            }
        }
        let cpu_per_event_us = if received > 0 {
            (cpu1 - cpu0) * 1e6 / received as f64
        } else {
            0.0
        };
        rows.push(format!(
            "| {} | {} | {:.3} s | {:.3} s | **{:.3}** | {:.3}–{:.3} | {} | {:.2} µs ({} events) | {} |",
            w.name,
            w.what,
            median(&mut untraced),
            median(&mut traced),
            med,
            lo,
            hi,
            ops,
            cpu_per_event_us,
            received,
            dropped
        ));
        kernel_rows.push(format!(
            "| {} | {} | produced {produced} |",
            w.name,
            per_prog.join("<br>")
        ));
    }
    Ok(ab_sections(pairs, &rows, &kernel_rows))
}

/// The first line of each section of RESULTS.md, in the order the file keeps them. Sections a
/// run does not regenerate, and the hand-written analysis (the last), are kept as they were.
const ORDER: &[&str] = &[
    "# Tracing overhead",
    "## Kernel time per probe run",
    "## Against a polling collector",
    "## Capacity: memory and drops",
    "## Against the goals",
];

fn ab_sections(pairs: usize, rows: &[String], kernel: &[String]) -> [String; 2] {
    let kernel_version = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_default();
    let mut text = format!(
        "# Tracing overhead\n\n\
         Written by `cargo xtask bench-overhead` (as root; {pairs} A/B pairs per workload, the \
         daemon running `deltas --interval 10` with the release build). Machine: {} vCPU, {cpu}, \
         kernel {}. Reproduce this table with `cargo xtask bench-overhead --only ab`.\n\n\
         Ratio = traced / untraced wall time of the same workload, median of the pairs and \
         their spread. Daemon CPU per event = the daemon's user+system time during one traced \
         run divided by the events it received.\n\n\
         | workload | what | untraced (median) | traced (median) | ratio | spread | ops | daemon CPU per event | dropped |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_version.trim()
    );
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    let mut kernel_text = String::from(
        "## Kernel time per probe run\n\nFrom `kernel.bpf_stats_enabled` (run_time_ns / run_cnt) \
         during one traced run of each workload.\n\n| workload | ns per run × runs | events |\n| --- | --- | --- |\n",
    );
    for r in kernel {
        kernel_text.push_str(r);
        kernel_text.push('\n');
    }
    [text, kernel_text]
}

/// Splits RESULTS.md into its known sections (by their first line).
fn split_sections(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(k) = ORDER.iter().position(|h| line.starts_with(h)) {
            out.push((k, String::new()));
        }
        if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
        }
    }
    out
}

/// Replaces the sections in `new` and keeps every other section of the file as it was.
fn write_results(path: &Path, new: &[String]) -> Result<()> {
    let mut sections = split_sections(&fs::read_to_string(path).unwrap_or_default());
    for s in new {
        for (k, body) in split_sections(s) {
            sections.retain(|(old, _)| *old != k);
            sections.push((k, body));
        }
    }
    sections.sort_by_key(|(k, _)| *k);
    let text = sections
        .iter()
        .map(|(_, body)| body.trim_end().to_owned() + "\n")
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
