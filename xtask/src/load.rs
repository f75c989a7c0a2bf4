//! `cargo xtask load`: the controller's capacity. Starts the replayers (one on the embedded
//! store, or one to three on a throw-away PostgreSQL), drives them with the load generator
//! (`benches/src/bin/load.rs`: simulated daemons on the real protocol) and reports batches/s,
//! ack latency, store growth and the CPU each batch costs (replayers plus the database
//! server). `--sweep` steps the hosts up for every layout until this machine saturates and
//! rewrites the capacity section of benches/RESULTS.md.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::postgres::Cluster;

/// One layout: which store, how many replayers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// The embedded redb file (one replayer).
    Redb,
    /// A throw-away PostgreSQL 15 (1 to 3 replayers).
    Postgres,
}

/// What one run asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub hosts: usize,
    pub interval: f64,
    pub changes: usize,
    pub seconds: f64,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Point {
    store: StoreKind,
    replayers: usize,
    load: Load,
    acked_per_s: f64,
    acked: u64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    store_bytes: u64,
    cpu_ms_per_batch: f64,
}

impl Point {
    /// Kept up: nearly all it was offered, acked within a second.
    fn kept_up(&self) -> bool {
        let offered = self.load.hosts as f64 / self.load.interval;
        self.acked_per_s >= 0.9 * offered && self.p99_ms < 1000.0
    }

    fn row(&self) -> String {
        format!(
            "| {} × {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.1} |",
            match self.store {
                StoreKind::Redb => "redb",
                StoreKind::Postgres => "PostgreSQL",
            },
            self.replayers,
            self.load.hosts,
            self.load.hosts as f64 / self.load.interval,
            self.acked_per_s,
            self.p50_ms,
            self.p99_ms,
            self.errors,
            self.cpu_ms_per_batch,
            self.store_bytes as f64 / self.acked.max(1) as f64 / 1024.0,
        )
    }
}

/// User + system CPU seconds of `pid` so far (0 once it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds of every process of the `postgres` user (the server and its backends; the
/// ones that ended in between are missed, which only undercounts connection churn).
fn postgres_cpu() -> f64 {
    let uid = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        });
    let Some(uid) = uid else { return 0.0 };
    let mut total = 0.0;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let owner = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
            });
        if owner == Some(uid) {
            total += cpu_seconds(pid);
        }
    }
    total
}

/// Replayer processes, stopped (SIGTERM, then SIGKILL after 10 s) however the run ends.
struct Replayers(Vec<Child>);

impl Drop for Replayers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn psql_scalar(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([url, "-Atq", "-c", sql])
        .output()
        .context("run psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One run: fresh store, `replayers` processes, the generator for `load.seconds`.
fn run_point(
    bins: &Bins,
    pg: Option<&Cluster>,
    store: StoreKind,
    replayers: usize,
    load: Load,
    n: usize,
) -> Result<Point> {
    let tmp = tempdir(&format!("st-load-{n}"))?;
    let url = match (store, pg) {
        (StoreKind::Postgres, Some(pg)) => {
            let db = format!("load_{}_{n}", std::process::id());
            psql_scalar(&pg.url, &format!("CREATE DATABASE {db}"))?;
            Some(
                pg.url
                    .rsplit_once('/')
                    .context("a database URL")?
                    .0
                    .to_owned()
                    + "/"
                    + &db,
            )
        }
        (StoreKind::Postgres, None) => bail!("PostgreSQL not started"),
        (StoreKind::Redb, _) => None,
    };
    let mut running = Replayers(Vec::new());
    let mut addrs = Vec::new();
    for r in 0..replayers {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&bins.replayer);
        // One connection per simulated daemon: past the default cap of 1,024 the listener
        // would reset them, which measures the cap, not the replayer.
        cmd.args(["serve", "--insecure", "--twin", "none", "--listen", &addr])
            .args(["--max-connections", "1000000"])
            .arg("--data")
            .arg(tmp.join(format!("r{r}")))
            .stdout(Stdio::null())
            .stderr(fs::File::create(tmp.join(format!("r{r}.log")))?);
        if let Some(url) = &url {
            cmd.args(["--store", url]);
        }
        running.0.push(cmd.spawn().context("start a replayer")?);
        addrs.push(addr);
    }
    for addr in &addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "replayer {addr} did not listen within 30 s (see {})",
                    tmp.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let cpu = |running: &Replayers| -> f64 {
        running.0.iter().map(|c| cpu_seconds(c.id())).sum::<f64>()
            + if pg.is_some() { postgres_cpu() } else { 0.0 }
    };
    let before = cpu(&running);
    let mut gen_cmd = Command::new(&bins.load);
    for addr in &addrs {
        gen_cmd.args(["--replayer", &format!("http://{addr}")]);
    }
    let out = gen_cmd
        .args(["--hosts", &load.hosts.to_string()])
        .args(["--interval", &load.interval.to_string()])
        .args(["--changes", &load.changes.to_string()])
        .args(["--seconds", &load.seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("run the load generator")?;
    if !out.status.success() {
        bail!("the load generator failed ({})", out.status);
    }
    let after = cpu(&running);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the load generator's JSON")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let acked = v["acked"].as_u64().unwrap_or(0);
    let store_bytes = match &url {
        Some(url) => psql_scalar(url, "SELECT pg_database_size(current_database())")?
            .parse()
            .unwrap_or(0),
        None => fs::metadata(tmp.join("r0/history.redb")).map_or(0, |m| m.len()),
    };
    drop(running);
    let _ = fs::remove_dir_all(&tmp);
    if let (Some(pg), Some(url)) = (pg, &url) {
        let db = url.rsplit_once('/').map_or("", |(_, d)| d);
        let _ = psql_scalar(
            &pg.url,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
    Ok(Point {
        store,
        replayers,
        load,
        acked_per_s: f("acked_per_s"),
        acked,
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
        errors: v["errors"].as_u64().unwrap_or(0),
        store_bytes,
        cpu_ms_per_batch: (after - before) * 1000.0 / acked.max(1) as f64,
    })
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The binaries a run needs.
pub(crate) struct Bins {
    pub replayer: PathBuf,
    pub load: PathBuf,
}

const HEADER: &str = "| store × replayers | hosts | offered batches/s | acked batches/s | \
                      p50 ack ms | p99 ack ms | errors | CPU ms per batch | store KiB per batch |\n\
                      | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

/// One run, printed.
pub(crate) fn once(bins: &Bins, store: StoreKind, replayers: usize, load: Load) -> Result<()> {
    if store == StoreKind::Redb && replayers != 1 {
        bail!("the embedded store serves one replayer; use --store postgres for more");
    }
    let pg = match store {
        StoreKind::Postgres => Some(Cluster::start()?),
        StoreKind::Redb => None,
    };
    let p = run_point(bins, pg.as_ref(), store, replayers, load, 0)?;
    println!("{HEADER}\n{}", p.row());
    Ok(())
}

/// Every layout, the hosts stepped up until one does not keep up; writes RESULTS.md.
pub(crate) fn sweep(bins: &Bins, base: Load, steps: &[usize], results: &Path) -> Result<()> {
    let pg = Cluster::start()?;
    let layouts = [
        (StoreKind::Redb, 1),
        (StoreKind::Postgres, 1),
        (StoreKind::Postgres, 2),
        (StoreKind::Postgres, 3),
    ];
    let mut rows = Vec::new();
    let mut n = 0;
    for (store, replayers) in layouts {
        for &hosts in steps {
            n += 1;
            let load = Load { hosts, ..base };
            eprintln!(
                "==> {store:?} × {replayers}: {hosts} hosts every {} s",
                load.interval
            );
            let p = run_point(bins, Some(&pg), store, replayers, load, n)?;
            eprintln!("    {}", p.row());
            let saturated = !p.kept_up();
            rows.push(p.row());
            if saturated {
                break;
            }
        }
    }
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let section = format!(
        "## Controller capacity: replayers and stores\n\n\
         `cargo xtask load --sweep` on this machine ({cpu} CPUs; the replayers, PostgreSQL 15 \
         with its defaults, fsync on, and the load generator share them): simulated daemons \
         on the real protocol, each host one batch of {} changed files (~200 B each) every {} \
         s, {} s per point, the hosts stepped up until a layout no longer keeps up (acks < 90% \
         of what is offered, or p99 ≥ 1 s; that row is the last of its layout). CPU is the \
         replayers' plus the database server's, per acknowledged batch; store growth is the \
         redb file or `pg_database_size` after the run, per batch.\n\n{HEADER}\n{}\n",
        base.changes,
        base.interval,
        base.seconds,
        rows.join("\n")
    );
    crate::overhead::write_results(results, &[section])
}
