//! Privileged end-to-end test of `safetytwin-daemon trace --json` with the real probes: every
//! one of 2,000 short-lived processes is seen exactly once as fork, exec and exit, with the
//! right parent, arguments and exit code, and nothing is dropped.

mod common;

use std::{collections::HashMap, process::Command};

use serde_json::Value;

const PROCESSES: usize = 2000;
/// Processes started at once, to make bursts rather than a trickle.
const WAVE: usize = 50;

#[test]
fn two_thousand_processes_are_each_seen_exactly_once() {
    if !common::privileged("two_thousand_processes_are_each_seen_exactly_once") {
        return;
    }
    let marker = common::marker("st-proc");
    let me = std::process::id();
    let session = common::TraceSession::start();

    for wave in (0..PROCESSES).collect::<Vec<_>>().chunks(WAVE) {
        let children: Vec<_> = wave
            .iter()
            .map(|i| {
                Command::new("/bin/sh")
                    .args(["-c", &format!("exit {}", i % 256), &format!("{marker}-{i}")])
                    .spawn()
                    .expect("spawn sh")
            })
            .collect();
        for (mut child, i) in children.into_iter().zip(wave) {
            assert_eq!(child.wait().unwrap().code(), Some((i % 256) as i32));
        }
    }
    let lines = session.finish();

    // Index our processes by the marker in their argv.
    let mut pid_of = HashMap::new();
    for v in lines
        .iter()
        .filter(|v| v["kind"] == "exec" && v["snapshot"] == false)
    {
        let argv: Vec<&str> = v["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let Some(last) = argv.last() else { continue };
        let Some(i) = last
            .strip_prefix(&format!("{marker}-"))
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        assert_eq!(
            argv,
            ["/bin/sh", "-c", &format!("exit {}", i % 256), last],
            "argv of process {i}"
        );
        assert_eq!(v["filename"], "/bin/sh");
        assert_eq!(v["ppid"], me, "ppid of process {i}");
        let pid = v["pid"].as_u64().unwrap();
        assert!(
            pid_of.insert(i, pid).is_none(),
            "process {i} exec seen twice"
        );
    }
    assert_eq!(pid_of.len(), PROCESSES, "execs seen");

    let by_pid = |kind: &str| {
        let mut by_pid: HashMap<u64, Vec<&Value>> = HashMap::new();
        for v in lines.iter().filter(|v| v["kind"] == kind) {
            by_pid
                .entry(v["pid"].as_u64().unwrap())
                .or_default()
                .push(v);
        }
        by_pid
    };
    let exits = by_pid("exit");
    let forks = by_pid("fork");
    for (i, pid) in &pid_of {
        let e = exits.get(pid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(e.len(), 1, "exits of process {i} (pid {pid})");
        assert_eq!(
            e[0]["exit_code"],
            (i % 256) as u64,
            "exit code of process {i}"
        );
        let f = forks.get(pid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(f.len(), 1, "forks of process {i} (pid {pid})");
        assert_eq!(f[0]["ppid"], me);
    }

    let (produced, received, dropped) = common::final_drops(&lines);
    assert_eq!(dropped, 0, "produced {produced}, received {received}");
    eprintln!("{PROCESSES} processes traced; produced {produced}, received {received}, dropped 0");
}

#[test]
fn without_root_the_daemon_says_so_and_exits_non_zero() {
    if !common::privileged("without_root_the_daemon_says_so_and_exits_non_zero") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_safetytwin-daemon"))
        .args(["trace", "--json"])
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}
