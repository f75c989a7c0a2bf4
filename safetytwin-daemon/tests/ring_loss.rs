//! Privileged: with a deliberately tiny ring buffer and no draining during a burst, events are
//! lost, and every loss is counted: `received + dropped == produced` exactly. And the other
//! way round: with the ring drained on its own thread, an exec storm running while the daemon
//! attaches its probes, seeds its model and cuts a long first batch (a large watched tree, read
//! and hashed) loses nothing with the default ring, though the ring alone could not hold it.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use safetytwin_daemon::{
    clock::BootClock,
    tracer::{Tracer, TracerConfig},
};

#[test]
fn every_lost_event_is_counted() {
    if !common::privileged("every_lost_event_is_counted") {
        return;
    }
    let mut tracer = Tracer::start(&TracerConfig {
        ring_bytes: 4096,
        ..TracerConfig::default()
    })
    .expect("start tracer");
    // ~6 exec records fit in one page; 300 processes produce ~900 records.
    for _ in 0..300 {
        Command::new("/bin/true").status().expect("run /bin/true");
    }
    tracer.detach();
    // Drained only now, once.
    let mut drainer = tracer
        .drain_on_thread(BootClock::now(), Duration::from_secs(3600))
        .expect("drain");
    drainer.finish();
    let mut counted = 0u64;
    while let Some(chunk) = drainer.chunks.blocking_recv() {
        counted += chunk.len() as u64;
    }
    let stats = tracer.stats().expect("read counters");
    eprintln!("{stats:?}");
    assert_eq!(stats.received, counted);
    assert!(
        stats.dropped > 0,
        "the burst should overflow a 4 KiB ring: {stats:?}"
    );
    assert!(stats.produced >= 900, "{stats:?}");
    assert_eq!(stats.received + stats.dropped, stats.produced, "{stats:?}");
}

#[test]
fn a_storm_during_a_long_first_batch_loses_nothing() {
    if !common::privileged("a_storm_during_a_long_first_batch_loses_nothing") {
        return;
    }
    // A watched tree large enough that seeding and the first batch (every file read and hashed)
    // keep the daemon's loop busy for seconds (the test build hashes slowly), and small enough
    // that the storm meanwhile stays within what the ring and the draining thread's bounded
    // queue hold together (~80,000 events): beyond that, losing events is the design.
    let tree = std::path::PathBuf::from(format!("/var/tmp/{}", common::marker("st-drain")));
    fs::create_dir_all(&tree).unwrap();
    let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..300 {
        fs::write(tree.join(format!("f{i}.conf")), &block).unwrap();
    }
    struct Cleanup(std::path::PathBuf, Vec<std::process::Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.1 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let mut cleanup = Cleanup(tree.clone(), Vec::new());

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_safetytwin-daemon"))
        .args(["deltas", "--json", "--interval", "3600"])
        .arg("--watch")
        .arg(&tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start daemon");
    for _ in 0..2 {
        let storm = Command::new("/bin/sh")
            .args(["-c", "while :; do /bin/true; done"])
            .spawn()
            .expect("start the storm");
        cleanup.1.push(storm);
    }

    let started = Instant::now();
    let mut lines = BufReader::new(daemon.stdout.take().unwrap()).lines();
    let first = loop {
        let line = lines.next().expect("daemon output").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["kind"] == "batch" {
            break v;
        }
    };
    let busy = started.elapsed();
    assert!(
        first["files"].as_array().is_some_and(|f| f.len() >= 300),
        "the first batch should hold the tree"
    );
    // Long enough to produce more than the default ring holds (~10,000 exec records).
    std::thread::sleep(Duration::from_secs(8).saturating_sub(busy));
    for c in &mut cleanup.1 {
        let _ = c.kill();
        let _ = c.wait();
    }
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    let rest: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(daemon.wait().unwrap().success());
    let (produced, received, dropped) = common::final_drops(&rest);
    eprintln!(
        "first batch after {busy:?}; produced {produced}, received {received}, dropped {dropped}"
    );
    assert!(
        produced > 12_000,
        "the storm should produce more than the 4 MiB ring holds: {produced}"
    );
    assert_eq!(dropped, 0, "events lost while the first batch was cut");
}
