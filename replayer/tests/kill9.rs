//! Kill -9 the replayer 20 times at random moments while a daemon-side sender streams 1,000
//! batches, restarting it each time: the store ends with every batch exactly once, in order,
//! with the content that was sent.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::Lcg;
use prost::Message;
use safetytwin_model::{Batch, Content, DeltaBatch, fixtures};
use safetytwin_proto::{convert, spool::Spool};
use safetytwin_store::Store;

const BATCHES: u64 = 1000;
const KILLS: usize = 20;

fn start(addr: &str, data: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args([
            "serve",
            "--insecure",
            "--twin",
            "none",
            "--listen",
            addr,
            "--data",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replayer")
}

fn content(seq: u64) -> String {
    format!("generation={seq}\n")
}

fn batch(seq: u64) -> Batch {
    let delta = DeltaBatch {
        files: vec![fixtures::upsert(
            &format!("/etc/app/{}.conf", seq % 7),
            fixtures::text(&content(seq)),
        )],
        ..DeltaBatch::default()
    };
    fixtures::batch("web-1", seq, delta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_exactly_once_in_order_across_twenty_kill_9s() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (data, spool_dir): (PathBuf, PathBuf) = (root.join("data"), root.join("spool"));
    let addr = common::free_addr();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");

    let mut child = start(&addr, &data);
    let spool = Arc::new(Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (link, sender) =
        common::start_sender(vec![format!("http://{addr}")], "web-1", &spool, stop_rx);

    let killer = {
        let (addr, data) = (addr.clone(), data.clone());
        std::thread::spawn(move || {
            let mut rng = Lcg(seed);
            for _ in 0..KILLS {
                std::thread::sleep(Duration::from_millis(20 + rng.below(180)));
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                std::thread::sleep(Duration::from_millis(rng.below(60)));
                child = start(&addr, &data);
            }
            child
        })
    };

    for _ in 0..BATCHES {
        {
            let mut s = spool.lock().unwrap();
            let seq = s.next_seq();
            let bytes = convert::batch_to_wire(&batch(seq)).encode_to_vec();
            s.push(&bytes).unwrap();
        }
        link.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut child = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    while spool.lock().unwrap().acked() < BATCHES {
        assert!(
            Instant::now() < deadline,
            "not everything acknowledged in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    sender.await.unwrap();
    // SAFETY: plain kill(2) on our child; a graceful stop releases the store.
    unsafe { libc_kill(child.id() as i32, 15) };
    child.wait().unwrap();

    let store = Store::open(data.join("history.redb")).unwrap();
    assert_eq!(store.last_seq("web-1").unwrap(), BATCHES);
    for seq in 1..=BATCHES {
        assert_eq!(
            store.batch("web-1", seq).unwrap(),
            Some(batch(seq)),
            "batch {seq}"
        );
    }
    assert!(store.batch("web-1", BATCHES + 1).unwrap().is_none());
    let state = store.state("web-1").unwrap().unwrap();
    for (seq, f) in (BATCHES - 6..=BATCHES).map(|s| (s, format!("/etc/app/{}.conf", s % 7))) {
        assert_eq!(state.files[&f].content, Content::Text(content(seq)));
    }
    assert!(spool.lock().unwrap().pending_after(0).unwrap().is_empty());
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
