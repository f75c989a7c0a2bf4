//! Privileged end to end: `safetytwin-daemon run` streams to a replayer (in-process here, so the
//! test can read its store), a config change reaches the store, and a daemon killed with
//! SIGKILL mid-stream and restarted loses nothing and re-applies nothing: seqs stay contiguous
//! and the restart is a resync.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use safetytwin_model::Content;
use safetytwin_services::server::Server;
use safetytwin_store::Store;

fn daemon(addr: &str, spool: &std::path::Path, host: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_safetytwin-daemon"))
        .args(["run", "--insecure", "--interval", "1", "--replayer"])
        .arg(format!("http://{addr}"))
        .arg("--spool")
        .arg(spool)
        .args(["--host-id", host])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start daemon")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn changes_reach_the_store_and_a_killed_daemon_loses_nothing() {
    if !common::privileged("changes_reach_the_store_and_a_killed_daemon_loses_nothing") {
        return;
    }
    let marker = common::marker("st-e2e");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = Arc::new(Store::open(root.join("history.redb")).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::bind("127.0.0.1:0".parse().unwrap(), store.clone()))
        .unwrap();
    let addr = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = runtime.spawn(server.run(async {
        let _ = stopped.await;
    }));
    let spool = root.join("spool");
    let host = marker.as_str();
    let conf = format!("/etc/{marker}.conf");

    let mut d = daemon(&addr, &spool, host);
    wait_for("the first two batches", || {
        store.last_seq(host).unwrap() >= 2
    });
    // SIGKILL mid-stream, then start again on the same spool.
    d.kill().unwrap();
    d.wait().unwrap();
    let before_restart = store.last_seq(host).unwrap();
    let mut d = daemon(&addr, &spool, host);
    wait_for("a batch from the restarted daemon", || {
        store.last_seq(host).unwrap() > before_restart
    });
    std::fs::write(&conf, "restarted=yes\n").unwrap();
    wait_for("the change in the store", || {
        store
            .state(host)
            .unwrap()
            .and_then(|m| m.files.get(&conf).map(|f| f.content.clone()))
            == Some(Content::Text("restarted=yes\n".into()))
    });
    // SAFETY: plain kill(2) on our child; SIGINT lets it send its last batch.
    unsafe { libc::kill(d.id() as i32, libc::SIGINT) };
    assert!(d.wait().unwrap().success());
    std::fs::remove_file(&conf).unwrap();

    let last = store.last_seq(host).unwrap();
    let batches: Vec<_> = (1..=last)
        .map(|seq| {
            store
                .batch(host, seq)
                .unwrap()
                .unwrap_or_else(|| panic!("seq {seq} lost"))
        })
        .collect();
    let resyncs: Vec<u64> = batches
        .iter()
        .filter(|b| b.header.resync)
        .map(|b| b.header.seq)
        .collect();
    assert_eq!(resyncs[0], 1, "the first batch restates the model");
    assert_eq!(
        resyncs.len(),
        2,
        "one more resync, at the restart: {resyncs:?}"
    );
    assert!(
        resyncs[1] > before_restart && resyncs[1] <= before_restart + 2,
        "{resyncs:?}"
    );
    assert!(batches.iter().all(|b| b.header.dropped == 0));
    eprintln!("{last} batches, resyncs at {resyncs:?}, killed after {before_restart}");

    stop.send(()).unwrap();
    runtime.block_on(served).unwrap().unwrap();
}
