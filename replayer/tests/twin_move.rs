//! A real libvirt twin moving from one worker to another: two replayers with `--twin libvirt`
//! on one PostgreSQL store and one hypervisor (this machine), a daemon's sender listing both.
//! Whichever worker takes the host's lease boots its twin and applies seq 1; then it is killed
//! with kill -9. Within the bound (lease 3 s here, plus a round) the other holds the lease,
//! puts the twin back at the snapshot of seq 1 (its old worker might have died mid-apply) and
//! applies seq 2, which the daemon's sender, failing over, stored through it.
//!
//! Needs root, libvirt, the twin image and PostgreSQL (`cargo xtask test` provides them all).

#![cfg(feature = "libvirt")]

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::vm;
use prost::Message;
use safetytwin_model::{Batch, DeltaBatch, fixtures};
use safetytwin_proto::{convert, spool::Spool};
use safetytwin_store::{Store, StoreUrl, scratch::Scratch};
use safetytwin_twin::vm::{
    TwinBackend,
    libvirt::{LibvirtBackend, LibvirtConfig},
};

const CONF: &str = "/etc/st-move.conf";

/// Killed (SIGKILL) however the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(name: &str, root: &Path, twins: &Path, store: &StoreUrl) -> (Proc, String) {
    let StoreUrl::Postgres(url) = store else {
        panic!("a PostgreSQL store");
    };
    let addr = common::free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["-v", "serve", "--insecure", "--twin", "libvirt"])
        .args(["--listen", &addr, "--store", url, "--worker-id", name])
        .args(["--lease", "3s", "--twin-packages", "off"])
        .arg("--data")
        .arg(root.join(name))
        .arg("--twin-dir")
        .arg(twins)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), format!("http://{addr}"))
}

fn batch(host: &str, seq: u64) -> Batch {
    let delta = DeltaBatch {
        files: vec![fixtures::upsert(
            CONF,
            fixtures::text(&format!("seq={seq}\n")),
        )],
        ..DeltaBatch::default()
    };
    fixtures::batch(host, seq, delta)
}

/// Polls `what` on a blocking thread until it holds or `limit` passes; returns how long it took.
async fn until(
    what: &str,
    limit: Duration,
    f: impl Fn() -> bool + Send + Sync + 'static,
) -> Duration {
    let f = Arc::new(f);
    let t = Instant::now();
    loop {
        let g = f.clone();
        if tokio::task::spawn_blocking(move || g()).await.unwrap() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_twin_moves_to_the_other_worker_when_its_worker_is_killed() {
    // 0755: libvirt's qemu user reaches the twin's disk through it.
    let tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let root = tmp.path().to_owned();
    let config = LibvirtConfig {
        state_dir: root.join("twins"),
        ..LibvirtConfig::default()
    };
    if vm::skip(&config) {
        return;
    }
    let Some(db) = Scratch::postgres() else {
        return;
    };
    let backend = Arc::new(LibvirtBackend::open(config.clone()).unwrap());
    let host = format!("test-move-{}", std::process::id());
    let _cleanup = vm::Cleanup {
        backend: &backend,
        host: host.clone(),
    };
    let store = {
        let url = db.url.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || Store::connect(&url).unwrap())
                .await
                .unwrap(),
        )
    };

    let (a, url_a) = worker("a", &root, &config.state_dir, &db.url);
    let (b, url_b) = worker("b", &root, &config.state_dir, &db.url);
    let mut workers = [("a", Some(a)), ("b", Some(b))];
    let spool = Arc::new(Mutex::new(
        Spool::open(root.join("spool"), 1 << 20).unwrap(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (link, sender) = common::start_sender(vec![url_a, url_b], &host, &spool, stopped);
    let push = |seq: u64| {
        let mut s = spool.lock().unwrap();
        assert_eq!(s.next_seq(), seq);
        s.push(&convert::batch_to_wire(&batch(&host, seq)).encode_to_vec())
            .unwrap();
        drop(s);
        link.wake.notify_one();
    };
    let owner = {
        let (store, host) = (store.clone(), host.clone());
        move || {
            store
                .leases()
                .unwrap()
                .into_iter()
                .find(|l| l.host == host)
                .map(|l| l.owner)
        }
    };
    let applied = {
        let (store, host) = (store.clone(), host.clone());
        move || store.twin_progress(&host).unwrap().applied_seq
    };

    push(1);
    let took = {
        let applied = applied.clone();
        until(
            "the first worker's twin to hold seq 1",
            Duration::from_secs(600),
            move || applied() >= 1,
        )
        .await
    };
    eprintln!("seq 1 in the twin after {:.1} s", took.as_secs_f64());
    // The store blocks: never on the test's async threads.
    let first = tokio::task::spawn_blocking(owner.clone())
        .await
        .unwrap()
        .expect("a worker holds the lease");
    let (dead, other) = if first == "a" { (0, "b") } else { (1, "a") };
    eprintln!("worker {first} drives the twin; killing it");

    // That worker dies; the next batch goes to the other (the sender fails over, if it was
    // on the dead one) and the other takes the twin.
    let mut victim = workers[dead].1.take().unwrap();
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let killed = Instant::now();
    push(2);
    let moved = {
        let owner = owner.clone();
        until("the lease to move", Duration::from_secs(15), move || {
            owner().as_deref() == Some(other)
        })
        .await
    };
    eprintln!(
        "the lease moved {:.1} s after the kill",
        moved.as_secs_f64()
    );
    {
        let applied = applied.clone();
        until(
            "the other worker's twin to hold seq 2",
            Duration::from_secs(300),
            move || applied() >= 2,
        )
        .await;
    }
    eprintln!(
        "seq 2 in the twin {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(root.join(format!("{other}.log"))).unwrap();
    assert!(
        log.contains("twin taken over: back at its last snapshot"),
        "{other} did not put the twin back at seq 1's snapshot:\n{log}"
    );
    assert_eq!(
        backend.read_file(&host, CONF).unwrap(),
        b"seq=2\n",
        "the twin holds the last batch"
    );
    stop.send(true).unwrap();
    sender.await.unwrap();
}
