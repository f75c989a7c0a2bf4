//! A throw-away PostgreSQL 15 for the tests and the load harness: its own data directory under
//! /tmp, listening on loopback only on a free port, run as the `postgres` user (the server
//! refuses root), stopped and deleted however the run ends. Nothing of the Debian package's own
//! cluster is used or touched.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The server's Debian package.
pub(crate) const PACKAGES: &[&str] = &["postgresql-15"];
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster; stopped and removed on drop.
pub(crate) struct Cluster {
    dir: PathBuf,
    /// Where to connect, as the superuser.
    pub(crate) url: String,
}

/// `program args` as the `postgres` user when we are root, else as ourselves.
fn as_owner(program: &str, args: &[&str]) -> Command {
    let path = Path::new(BIN).join(program);
    if crate::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path).args(args);
        c
    } else {
        let mut c = Command::new(path);
        c.args(args);
        c
    }
}

fn run(mut c: Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// Installs the server if needed, creates a cluster and starts it.
    pub(crate) fn start() -> Result<Cluster> {
        crate::ensure_packages(PACKAGES)?;
        let dir = PathBuf::from(format!("/tmp/safetytwin-pg-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Set before anything can fail, so the drop removes the directory.
        let mut cluster = Cluster {
            dir,
            url: String::new(),
        };
        if crate::is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&cluster.dir);
                    c
                },
                "chown postgres",
            )?;
        }
        let data = cluster.dir.join("data");
        let data = data.to_str().context("non-UTF-8 temp path")?;
        run(
            as_owner(
                "initdb",
                &["-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
            ),
            "initdb",
        )?;
        // A free port: bound and released at once; a race with another process is possible
        // but then pg_ctl fails loudly.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let socket_dir = cluster.dir.to_str().context("non-UTF-8 temp path")?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {socket_dir} -c max_connections=200"
        );
        let log = cluster.dir.join("server.log");
        run(
            as_owner(
                "pg_ctl",
                &[
                    "-D",
                    data,
                    "-l",
                    log.to_str().context("non-UTF-8 temp path")?,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            ),
            "pg_ctl start",
        )
        .with_context(|| format!("see {}", log.display()))?;
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        eprintln!(
            "    PostgreSQL 15 on 127.0.0.1:{port} ({})",
            cluster.dir.display()
        );
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = as_owner(
                "pg_ctl",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .output();
            // pg_ctl -w waits for the pid file to go; give the postmaster's children a moment.
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
