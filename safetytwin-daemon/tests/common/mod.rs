//! Helpers for the privileged tests: they load the real probes, so they need root and kernel
//! BTF, and skip with a plain message only where those are truly absent.

#![allow(dead_code)]

use std::path::Path;

/// True when this process can load the probes; prints why not otherwise. Under
/// `SAFETYTWIN_PRIVILEGED_REQUIRED=1` (`cargo xtask test` as root) a test that cannot run fails
/// instead: a skip there would be a green run that tested nothing.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "needs root to load eBPF programs"
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    } else {
        return true;
    };
    assert!(
        std::env::var_os("SAFETYTWIN_PRIVILEGED_REQUIRED").is_none_or(|v| v != "1"),
        "{test} cannot run ({why}) but SAFETYTWIN_PRIVILEGED_REQUIRED=1"
    );
    eprintln!("skipping {test}: {why}");
    false
}

/// Runs `script` with `/bin/sh -c` in `cwd` and asserts it succeeded.
pub fn sh(script: &str, cwd: &Path) {
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .current_dir(cwd)
        .status()
        .expect("run sh");
    assert!(status.success(), "{script}");
}

/// A marker unique to this test run, to find our own processes among the host's.
pub fn marker(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A running `safetytwin-daemon trace --json`, whose output lines are collected.
pub struct TraceSession {
    daemon: std::process::Child,
    rx: std::sync::mpsc::Receiver<serde_json::Value>,
    reader: std::thread::JoinHandle<()>,
    lines: Vec<serde_json::Value>,
}

impl TraceSession {
    /// Starts `trace --json` and waits until its probes are attached: the /proc scan runs
    /// after attaching, so the snapshot line of this test process means "ready".
    pub fn start() -> TraceSession {
        let me = std::process::id();
        Self::start_with(&["trace", "--json"], |v| {
            v["snapshot"] == true && v["pid"] == me
        })
    }

    /// Starts `deltas --json --interval 1`; ready once the first batch (the initial state) is out.
    pub fn start_deltas() -> TraceSession {
        Self::start_with(&["deltas", "--json", "--interval", "1"], |v| {
            v["kind"] == "batch"
        })
    }

    /// Starts the daemon with `args` and waits for the first line `ready` accepts.
    pub fn start_with(args: &[&str], ready: impl Fn(&serde_json::Value) -> bool) -> TraceSession {
        use std::io::BufRead;
        let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_safetytwin-daemon"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start daemon");
        let stdout = daemon.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.expect("read daemon output");
                let value: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("daemon printed non-JSON {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut session = TraceSession {
            daemon,
            rx,
            reader,
            lines: Vec::new(),
        };
        loop {
            let v = session
                .rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("daemon was not ready within 60 s");
            let is_ready = ready(&v);
            session.lines.push(v);
            if is_ready {
                return session;
            }
        }
    }

    /// Waits for the next batch line to arrive after everything already received, and returns
    /// every line so far.
    pub fn next_batch(&mut self) -> &[serde_json::Value] {
        self.lines.extend(self.rx.try_iter());
        loop {
            let v = self
                .rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("no batch within 30 s");
            let is_batch = v["kind"] == "batch";
            self.lines.push(v);
            if is_batch {
                return &self.lines;
            }
        }
    }

    /// Stops the daemon with SIGINT, checks it exited 0, and returns every line it printed.
    pub fn finish(mut self) -> Vec<serde_json::Value> {
        // SAFETY: plain kill(2) on our child.
        assert_eq!(
            unsafe { libc::kill(self.daemon.id() as i32, libc::SIGINT) },
            0
        );
        let status = self.daemon.wait().unwrap();
        self.reader.join().unwrap();
        self.lines.extend(self.rx.try_iter());
        assert!(status.success(), "daemon exited with {status}");
        self.lines
    }
}

/// The final loss counters line; asserts the accounting is exact.
pub fn final_drops(lines: &[serde_json::Value]) -> (u64, u64, u64) {
    let drops = lines
        .iter()
        .rev()
        .find(|v| v["kind"] == "drops")
        .expect("final drops line");
    let field = |k: &str| drops[k].as_u64().unwrap();
    let (produced, received, dropped) = (field("produced"), field("received"), field("dropped"));
    assert_eq!(received + dropped, produced, "{drops}");
    (produced, received, dropped)
}

/// What `bpftool ARGS` prints on stdout; fails the test with its stderr when it fails.
pub fn bpftool(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
