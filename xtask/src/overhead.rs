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

/// A workload: a name, what it does, how to run it once, and the peers that trace what it
/// exercises (run beside safetytwin in the same pairs).
struct Workload {
    name: &'static str,
    what: &'static str,
    run: fn() -> Result<u64>,
    peers: &'static [Peer],
}

/// Another tracer, run as a background process for the traced half of a pair.
struct Peer {
    name: &'static str,
    /// Each process of the peer, with the line it prints once attached ("": none; it is given
    /// two seconds).
    procs: &'static [(&'static [&'static str], &'static str)],
}

const EXECS: usize = 3000;
const RO_OPENS: usize = 200_000;
const FILE_OPS: usize = 100_000;
const WATCHED_OPS: usize = 20_000;

/// bpftrace with the same two process hooks as safetytwin's exec and exit probes.
const BPFTRACE_EXEC: Peer = Peer {
    name: "bpftrace exec+exit",
    procs: &[(
        &[
            "bpftrace",
            "-e",
            "tracepoint:sched:sched_process_exec { printf(\"exec %d %s\\n\", pid, comm); } \
             tracepoint:sched:sched_process_exit { printf(\"exit %d %s\\n\", pid, comm); }",
        ],
        "Attaching",
    )],
};
const EXECSNOOP: Peer = Peer {
    name: "libbpf-tools execsnoop+exitsnoop",
    // Their header is block-buffered into a file: no ready line to wait for.
    procs: &[(&["execsnoop"], ""), (&["exitsnoop"], "")],
};
const INOTIFYWAIT: Peer = Peer {
    name: "inotifywait -m -r /etc",
    procs: &[(
        &[
            "inotifywait",
            "-m",
            "-r",
            "-q",
            "-e",
            "modify,create,delete,move,attrib",
            "/etc",
        ],
        "",
    )],
};
/// An empty program on the openat tracepoint: what tracing opens at all costs (safetytwin does
/// not), and the floor of `kernel.bpf_stats_enabled`'s ns per run on this machine.
const EMPTY_OPENAT: Peer = Peer {
    name: "bpftrace, empty program on sys_enter_openat",
    procs: &[(
        &["bpftrace", "-e", "tracepoint:syscalls:sys_enter_openat { }"],
        "Attaching",
    )],
};
/// An empty program on a syscall the workload never makes: with any syscall tracepoint on,
/// every syscall of every process takes the kernel's slow entry path. safetytwin's syscall
/// probes (rename, unlink, chmod, …) pay this; it is the floor of any tracer that uses them.
const EMPTY_UNLINKAT: Peer = Peer {
    name: "bpftrace, empty program on sys_enter_unlinkat (the floor)",
    procs: &[(
        &[
            "bpftrace",
            "-e",
            "tracepoint:syscalls:sys_enter_unlinkat { }",
        ],
        "Attaching",
    )],
};

/// Debian packages of the peers, installed by the harness.
pub const PEER_PACKAGES: &[&str] = &["bpftrace", "libbpf-tools", "inotify-tools"];

fn exec_serial() -> Result<u64> {
    for _ in 0..EXECS {
        Command::new("/bin/true").status()?;
    }
    Ok(EXECS as u64)
}

/// `n` × open(O_RDONLY) + close of one file nobody watches: the most frequent file syscall of
/// every host.
fn read_only_opens() -> Result<u64> {
    let path = c"/usr/lib/os-release";
    for _ in 0..RO_OPENS {
        // SAFETY: a NUL-terminated path; the fd is closed at once.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            bail!(
                "open /usr/lib/os-release: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: an fd this loop owns.
        unsafe { libc::close(fd) };
    }
    Ok(RO_OPENS as u64)
}

/// `n` × open(O_WRONLY|O_TRUNC) + write 64 bytes + close over 100 existing files: page cache
/// only, so the syscalls (and their probes) dominate rather than block allocation.
fn file_storm(dir: &Path, n: usize) -> Result<u64> {
    fs::create_dir_all(dir)?;
    for i in 0..100 {
        fs::write(dir.join(format!("f{i}")), [b'x'; 64])?;
    }
    let data = [b'y'; 64];
    for i in 0..n {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
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
        name: "exec storm",
        what: "3,000 posix_spawn of /bin/true, one after another",
        run: exec_serial,
        peers: &[BPFTRACE_EXEC, EXECSNOOP],
    },
    Workload {
        name: "read-only opens, not watched",
        what: "200,000 open(O_RDONLY)+close of /usr/lib/os-release",
        run: read_only_opens,
        peers: &[INOTIFYWAIT, EMPTY_OPENAT, EMPTY_UNLINKAT],
    },
    Workload {
        name: "writes, not watched",
        what: "100,000 open(O_WRONLY|O_TRUNC)+write+close on tmpfs (/dev/shm)",
        run: files_unwatched,
        peers: &[INOTIFYWAIT],
    },
    Workload {
        name: "writes, watched",
        what: "20,000 open(O_WRONLY|O_TRUNC)+write+close of files in /etc/st-bench",
        run: files_watched,
        peers: &[INOTIFYWAIT],
    },
    Workload {
        name: "mixed job",
        what: "100× cp, sed -i, printf >, chmod under /etc, then tar+gzip and rm",
        run: mixed,
        peers: &[],
    },
];

/// A peer's processes, stopped and reaped however the measurement ends.
struct Running(Vec<std::process::Child>);

impl Running {
    /// Starts every process of `peer` and returns once each printed its ready line (on stdout
    /// or stderr, both kept in `dir`).
    fn start(peer: &Peer, dir: &Path) -> Result<Running> {
        let mut running = Running(Vec::new());
        for (i, (argv, ready)) in peer.procs.iter().enumerate() {
            let out = dir.join(format!("peer{i}.out"));
            let child = Command::new(argv[0])
                .args(&argv[1..])
                .stdout(fs::File::create(&out)?)
                .stderr(fs::File::create(dir.join(format!("peer{i}.err")))?)
                .spawn()
                .with_context(|| format!("start {}", argv[0]))?;
            running.0.push(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let seen =
                    |f: &str| fs::read_to_string(dir.join(f)).is_ok_and(|t| t.contains(ready));
                // No line to wait for (inotifywait -q prints none): give it a moment.
                if ready.is_empty() {
                    std::thread::sleep(Duration::from_secs(2));
                    break;
                }
                if seen(&format!("peer{i}.out")) || seen(&format!("peer{i}.err")) {
                    break;
                }
                if let Some(status) = running.0[i].try_wait()? {
                    bail!("{} exited before it was ready: {status}", peer.name);
                }
                if Instant::now() > deadline {
                    bail!("{} was not ready within 60 s", peer.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: plain kill(2) on our child; SIGINT lets bpftrace detach cleanly.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

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

/// A loaded program's counters from the kernel's BPF statistics.
#[derive(Debug, Clone)]
struct ProgStats {
    id: u64,
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

/// Every loaded program's counters (`bpftool -j prog show`).
fn bpf_stats() -> Result<Vec<ProgStats>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // bpftool -j prints one JSON array of flat objects; pick four fields of each without a
    // JSON dependency in xtask.
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
        let (Some(id), Some(name), Some(cnt), Some(ns)) = (
            field("id"),
            field("name"),
            field("run_cnt"),
            field("run_time_ns"),
        ) else {
            continue;
        };
        progs.push(ProgStats {
            id: id.parse().unwrap_or(0),
            name: name.to_owned(),
            run_cnt: cnt.parse().unwrap_or(0),
            run_time_ns: ns.parse().unwrap_or(0),
        });
    }
    Ok(progs)
}

/// "name: N ns × runs" of every program that ran between two snapshots.
fn per_program(before: &[ProgStats], after: &[ProgStats]) -> Vec<String> {
    after
        .iter()
        .filter_map(|p| {
            let b = before.iter().find(|b| b.id == p.id);
            let runs = p.run_cnt - b.map_or(0, |b| b.run_cnt);
            let ns = p.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            (runs > 0).then(|| format!("{}: {:.0} ns × {runs}", p.name, ns as f64 / runs as f64))
        })
        .collect()
}

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

/// What is attached for the traced half of a pair.
enum Traced<'a> {
    Us(Daemon),
    /// Held for its drop, which stops the peer.
    Peer(#[allow(dead_code)] Running, &'a str),
}

impl Traced<'_> {
    fn start<'a>(peer: Option<&'a Peer>, daemon: &Path, dir: &Path) -> Result<Traced<'a>> {
        Ok(match peer {
            None => Traced::Us(Daemon::start(daemon, dir)?),
            Some(p) => Traced::Peer(Running::start(p, dir)?, p.name),
        })
    }

    fn name(&self) -> &str {
        match self {
            Traced::Us(_) => "**safetytwin**",
            Traced::Peer(_, name) => name,
        }
    }

    /// Stops it; safetytwin's final loss counters (produced, received, dropped).
    fn stop(self) -> Result<Option<(u64, u64, u64)>> {
        match self {
            Traced::Us(d) => d.stop().map(Some),
            Traced::Peer(..) => Ok(None),
        }
    }
}

/// The A/B pairs: the preamble with the ratio table, and the kernel-time section.
fn ab(daemon: &Path, pairs: usize, dir: &Path) -> Result<[String; 2]> {
    crate::ensure_packages(PEER_PACKAGES)?;
    /// The storms' files, removed however the run ends: a tree left under /etc would be seeded
    /// into every later daemon's model on this machine.
    struct StormFiles;
    impl Drop for StormFiles {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all("/etc/st-bench");
            let _ = fs::remove_dir_all("/dev/shm/st-bench");
        }
    }
    let _storm_files = StormFiles;
    let mut rows = Vec::new();
    let mut kernel_rows = Vec::new();
    for w in WORKLOADS {
        (w.run)()?; // warm caches
        let tracers = std::iter::once(None).chain(w.peers.iter().map(Some));
        for peer in tracers {
            let label = peer.map_or("safetytwin", |p| p.name);
            eprintln!("==> {} under {label} ({pairs} pairs)", w.name);
            let (mut ratios, mut untraced, mut traced) = (Vec::new(), Vec::new(), Vec::new());
            let mut dropped = 0;
            for i in 0..pairs {
                let a = time(w)?;
                let t = Traced::start(peer, daemon, dir)?;
                let b = time(w)?;
                dropped += t.stop()?.map_or(0, |(_, _, d)| d);
                eprintln!("    pair {}: untraced {a:.3} s, traced {b:.3} s", i + 1);
                ratios.push(b / a);
                untraced.push(a);
                traced.push(b);
            }
            let (lo, hi) = (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            let med = median(&mut ratios);

            // One more traced run with the kernel's BPF statistics (and our daemon's CPU).
            fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
            let t = Traced::start(peer, daemon, dir)?;
            let before = bpf_stats()?;
            let cpu0 = match &t {
                Traced::Us(d) => d.cpu_seconds()?,
                Traced::Peer(..) => 0.0,
            };
            let ops = (w.run)()?;
            // The daemon works at its drains; let the last one happen.
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = match &t {
                Traced::Us(d) => d.cpu_seconds()?,
                Traced::Peer(..) => 0.0,
            };
            let after = bpf_stats()?;
            let name = t.name().to_owned();
            let counters = t.stop()?;
            fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
            let cpu = match counters {
                Some((_, received, _)) if received > 0 => format!(
                    "{:.2} µs ({received} events)",
                    (cpu1 - cpu0) * 1e6 / received as f64
                ),
                Some(_) => "0 events".to_owned(),
                None => "—".to_owned(),
            };
            let dropped = if counters.is_some() {
                dropped.to_string()
            } else {
                "—".to_owned()
            };
            rows.push(format!(
                "| {} | {} | {name} | {:.3} s | {:.3} s | **{:.3}** | {:.3}–{:.3} | {ops} | {cpu} | {dropped} |",
                w.name,
                w.what,
                median(&mut untraced),
                median(&mut traced),
                med,
                lo,
                hi,
            ));
            kernel_rows.push(format!(
                "| {} | {name} | {} |",
                w.name,
                per_program(&before, &after).join("<br>")
            ));
        }
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
    "## Controller capacity: replayers and stores",
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
         their spread; each tracer, safetytwin and the peers (Debian's bpftrace, libbpf-tools \
         and inotify-tools, installed by the harness), has its own pairs in the same run. \
         Daemon CPU per event = safetytwin's user+system time during one traced run divided by \
         the events it received.\n\n\
         | workload | what | tracer | untraced (median) | traced (median) | ratio | spread | ops | daemon CPU per event | dropped |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_version.trim()
    );
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    let mut kernel_text = String::from(
        "## Kernel time per probe run\n\nFrom `kernel.bpf_stats_enabled` (run_time_ns / run_cnt) \
         during one traced run of each workload, for every program that ran. The statistics \
         cost something themselves: the empty program on `sys_enter_openat` shows this \
         machine's floor.\n\n| workload | tracer | ns per run × runs |\n| --- | --- | --- |\n",
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
pub(crate) fn write_results(path: &Path, new: &[String]) -> Result<()> {
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
