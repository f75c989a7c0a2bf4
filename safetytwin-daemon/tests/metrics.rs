//! Privileged: `deltas --metrics` serves Prometheus metrics that count what really happened on
//! the host (execs, a watched file write, batches) and keep the loss accounting's shape. Not
//! privileged: a non-loopback address is refused before anything loads.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::sh;

/// A port nobody listens on right now (the daemon binds it a moment later).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET /metrics`: the response head and every sample by series (name with labels).
fn scrape(addr: SocketAddr) -> (String, BTreeMap<String, f64>) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect();
    (head.to_owned(), samples)
}

#[test]
fn metrics_count_what_happened() {
    if !common::privileged("metrics_count_what_happened") {
        return;
    }
    let marker = common::marker("st-metrics");
    let dir = PathBuf::from(format!("/etc/{marker}"));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = free_port().to_string();
    let mut session = common::TraceSession::start_with(
        &["deltas", "--json", "--interval", "1", "--metrics", &addr],
        |v| v["kind"] == "batch",
    );
    let addr: SocketAddr = addr.parse().unwrap();

    // Five execs of /bin/true, plus the shell's own exec; one write under /etc.
    const EXECS: f64 = 5.0;
    sh(
        &format!(
            "for i in 1 2 3 4 5; do /bin/true; done; echo hello > {}/x.conf",
            dir.display()
        ),
        Path::new("/"),
    );
    // The next batch is cut after a drain that saw them.
    session.next_batch();
    session.next_batch();

    let deadline = Instant::now() + Duration::from_secs(20);
    let (head, m) = loop {
        let (head, m) = scrape(addr);
        let ready = m["safetytwin_daemon_events_total{kind=\"exec\"}"] >= EXECS
            && m["safetytwin_daemon_events_total{kind=\"file\"}"] >= 1.0;
        if ready || Instant::now() > deadline {
            break (head, m);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines = session.finish();
    let _ = std::fs::remove_dir_all(&dir);
    common::final_drops(&lines);

    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let get = |series: &str| *m.get(series).unwrap_or_else(|| panic!("no {series}"));
    let kind = |k: &str| get(&format!("safetytwin_daemon_events_total{{kind=\"{k}\"}}"));
    assert!(kind("exec") >= EXECS, "{m:?}");
    assert!(kind("file") >= 1.0, "{m:?}");
    let (produced, received, dropped) = (
        get("safetytwin_daemon_ring_produced_total"),
        get("safetytwin_daemon_ring_received_total"),
        get("safetytwin_daemon_ring_dropped_total"),
    );
    assert!(received >= EXECS + 1.0, "{m:?}");
    // While running, the difference is still in the ring.
    assert!(produced >= received + dropped, "{m:?}");
    // Every record read is either decoded into a kind or counted as invalid; both are
    // published in the same step as `received`, so a scrape sees them agree.
    let decoded: f64 = ["exec", "exit", "fork", "file", "cgroup"]
        .into_iter()
        .map(kind)
        .sum();
    assert_eq!(
        decoded + get("safetytwin_daemon_records_invalid_total"),
        received,
        "{m:?}"
    );
    assert!(get("safetytwin_daemon_batches_total") >= 2.0, "{m:?}");
    assert!(get("safetytwin_daemon_batch_changes_total{kind=\"files\"}") >= 1.0);
    assert!(get("safetytwin_daemon_batch_cut_seconds_count") >= 2.0);
    assert!(get("safetytwin_daemon_model_entries{kind=\"processes\"}") > 0.0);
    assert!(
        !m.keys().any(|k| k.contains("spool")),
        "deltas has no spool"
    );
}

#[test]
fn a_remote_metrics_address_needs_an_explicit_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_safetytwin-daemon"))
        .args(["deltas", "--metrics", "0.0.0.0:9464"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--metrics-allow-remote"), "{stderr}");
}
