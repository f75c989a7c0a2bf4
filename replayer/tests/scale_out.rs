//! Two replayers on one PostgreSQL, four daemons' senders (each listing both replayers, in
//! either order) streaming 150 batches apiece, while one replayer is killed with kill -9 again
//! and again and restarted: every batch is stored exactly once, in order, with the content
//! sent; every spool is acknowledged to the end; and a subscriber on the replayer that is never
//! killed sees every batch of every host, in order, whichever replayer stored it (the store's
//! notices, `safetytwin-services/src/relay.rs`).
//!
//! Needs a PostgreSQL server (`SAFETYTWIN_TEST_POSTGRES`; `cargo xtask test` starts one).

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::Lcg;
use prost::Message;
use safetytwin_model::{Batch, DeltaBatch, fixtures};
use safetytwin_proto::{
    convert,
    spool::Spool,
    v1::{self, twin_client::TwinClient},
};
use safetytwin_store::{StoreUrl, scratch::Scratch};

const HOSTS: usize = 4;
const BATCHES: u64 = 150;
const KILLS: usize = 8;

fn start(addr: &str, data: &Path, store: &StoreUrl) -> Child {
    let StoreUrl::Postgres(url) = store else {
        panic!("a PostgreSQL store");
    };
    Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(["serve", "--insecure", "--twin", "none", "--listen", addr])
        .arg("--data")
        .arg(data)
        .args(["--store", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start replayer")
}

fn host(i: usize) -> String {
    format!("web-{i}")
}

fn batch(host: &str, seq: u64) -> Batch {
    let delta = DeltaBatch {
        files: vec![fixtures::upsert(
            "/etc/app.conf",
            fixtures::text(&format!("{host} generation={seq}\n")),
        )],
        ..DeltaBatch::default()
    };
    fixtures::batch(host, seq, delta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_one_killed_again_and_again_nothing_lost_or_doubled() {
    let Some(db) = Scratch::postgres() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (common::free_addr(), common::free_addr());
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut child_a = start(&a, &data_a, &db.url);
    let mut child_b = start(&b, &data_b, &db.url);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");

    // The subscriber on B, from the start: every batch reaches it live.
    let seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let subscriber = {
        let (b, seen) = (b.clone(), seen.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                match TwinClient::connect(format!("http://{b}")).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("replayer B never answered: {e}"),
                }
            };
            let mut stream = client
                .subscribe(v1::SubscribeRequest::default())
                .await
                .expect("subscribe on B")
                .into_inner();
            while let Some(batch) = stream.message().await.expect("B's live stream") {
                seen.lock()
                    .unwrap()
                    .entry(batch.host_id.clone())
                    .or_default()
                    .push(batch.seq);
            }
        })
    };

    let mut senders = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for i in 0..HOSTS {
        let spool_dir = tmp.path().join(format!("spool-{i}"));
        let spool = Arc::new(Mutex::new(Spool::open(&spool_dir, 1 << 30).unwrap()));
        // Half prefer A, half B: A's death moves half of them.
        let mut endpoints = vec![format!("http://{a}"), format!("http://{b}")];
        if i % 2 == 1 {
            endpoints.reverse();
        }
        let (link, task) = common::start_sender(endpoints, &host(i), &spool, stop_rx.clone());
        senders.push((spool, link, task));
    }

    let killer = {
        let (a, data_a, url) = (a.clone(), data_a.clone(), db.url.clone());
        std::thread::spawn(move || {
            let mut rng = Lcg(seed);
            for _ in 0..KILLS {
                std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
                child_a.kill().unwrap(); // SIGKILL
                child_a.wait().unwrap();
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                child_a = start(&a, &data_a, &url);
            }
            child_a
        })
    };

    for _ in 0..BATCHES {
        for (i, (spool, link, _)) in senders.iter().enumerate() {
            {
                let mut s = spool.lock().unwrap();
                let seq = s.next_seq();
                s.push(&convert::batch_to_wire(&batch(&host(i), seq)).encode_to_vec())
                    .unwrap();
            }
            link.wake.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child_a = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, (spool, ..)) in senders.iter().enumerate() {
        while spool.lock().unwrap().acked() < BATCHES {
            assert!(
                Instant::now() < deadline,
                "{}: acknowledged {} of {BATCHES} in 120 s",
                host(i),
                spool.lock().unwrap().acked()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every batch reached B's subscriber, in order, whichever replayer stored it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let complete = {
            let seen = seen.lock().unwrap();
            (0..HOSTS).all(|i| seen.get(&host(i)).map_or(0, Vec::len) as u64 >= BATCHES)
        };
        if complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's subscriber saw {:?} batches per host, not {BATCHES}",
            seen.lock()
                .unwrap()
                .iter()
                .map(|(h, s)| (h.clone(), s.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (h, seqs) in seen.lock().unwrap().iter() {
        assert_eq!(
            seqs,
            &(1..=BATCHES).collect::<Vec<_>>(),
            "{h}: B's subscriber saw a gap, a repeat or a reordering"
        );
    }
    stop_tx.send(true).unwrap();
    for (_, _, task) in senders {
        task.await.unwrap();
    }
    subscriber.abort();
    for child in [&mut child_a, &mut child_b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let store = safetytwin_store::Store::connect(&url).unwrap();
        assert_eq!(store.hosts().unwrap().len(), HOSTS);
        for i in 0..HOSTS {
            let h = host(i);
            assert_eq!(store.last_seq(&h).unwrap(), BATCHES, "{h}");
            for seq in 1..=BATCHES {
                assert_eq!(
                    store.batch(&h, seq).unwrap(),
                    Some(batch(&h, seq)),
                    "{h} batch {seq}"
                );
            }
        }
    })
    .await
    .unwrap();
    drop(db);
}
