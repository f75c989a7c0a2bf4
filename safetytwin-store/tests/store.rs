//! The history store on every engine (redb; PostgreSQL where `SAFETYTWIN_TEST_POSTGRES` names
//! a server, as in `cargo xtask test`): exactly once, in order, durable across reopen; and
//! `state_at(k)` equals the daemon's model after batch k for any history (event sourcing with
//! checkpoints).

use proptest::prelude::*;
use safetytwin_model::{
    Batch, Change, HostModel, Window, fixtures,
    fixtures::{process, text},
};
use safetytwin_store::{Appended, CHECKPOINT_EVERY, StoreError, scratch::Scratch};

/// Folds `changes` as one window of the daemon's model and seals the batch as `seq`.
fn cut(model: &mut HostModel, seq: u64, changes: &[Change]) -> Batch {
    let mut w = Window::default();
    for c in changes {
        model.apply(c, &mut w);
    }
    fixtures::batch("web-1", seq, model.cut(w))
}

fn file(path: &str, content: Option<&str>) -> Change {
    Change::FileObserved {
        path: path.into(),
        state: content.map(text),
    }
}

#[test]
fn duplicates_are_ignored_conflicts_and_gaps_refused_and_none_change_anything() {
    for engine in Scratch::each() {
        eprintln!("engine: {}", engine.engine);
        exactly_once_in_order(&engine);
    }
}

fn exactly_once_in_order(engine: &Scratch) {
    let store = engine.open();
    let mut daemon = HostModel::default();
    let b1 = cut(&mut daemon, 1, &[file("/etc/a", Some("1"))]);
    let b2 = cut(&mut daemon, 2, &[file("/etc/a", Some("2"))]);
    let b3 = cut(&mut daemon, 3, &[file("/etc/b", Some("3"))]);
    for b in [&b1, &b2, &b3] {
        assert_eq!(store.append(b).unwrap(), Appended::Stored);
    }
    let before = store.state("web-1").unwrap();

    // The same batch again is acknowledged and ignored; the same seq with other content is
    // another history, refused.
    assert_eq!(store.append(&b2).unwrap(), Appended::Duplicate);
    let mut other = b2.clone();
    other.delta.files.clear();
    assert!(matches!(
        store.append(&other),
        Err(StoreError::Conflict { seq: 2, .. })
    ));
    assert_eq!(store.batch("web-1", 2).unwrap().as_ref(), Some(&b2));

    let mut gap = b3.clone();
    gap.header.seq = 5;
    assert!(matches!(
        store.append(&gap),
        Err(StoreError::Gap {
            last: 3,
            got: 5,
            ..
        })
    ));
    assert_eq!(store.last_seq("web-1").unwrap(), 3);
    assert_eq!(store.state("web-1").unwrap(), before);
    assert_eq!(before.as_ref(), Some(&daemon));

    // A resync restates the whole model, not the seqs: far ahead it is a gap like any other
    // (stored, it would make the live daemon's next batches look like duplicates).
    let mut resync = cut(
        &mut HostModel::default(),
        1 << 62,
        &[file("/etc/c", Some("only"))],
    );
    resync.header.resync = true;
    assert!(matches!(store.append(&resync), Err(StoreError::Gap { .. })));
    resync.header.seq = u64::MAX;
    assert!(matches!(store.append(&resync), Err(StoreError::Gap { .. })));
    assert_eq!(store.state("web-1").unwrap(), before);
    resync.header.seq = 4;
    assert_eq!(store.append(&resync).unwrap(), Appended::Stored);
    let after = store.state("web-1").unwrap().unwrap();
    assert_eq!(after.files.keys().collect::<Vec<_>>(), ["/etc/c"]);

    drop(store);
    let reopened = engine.open();
    assert_eq!(reopened.last_seq("web-1").unwrap(), 4);
    assert_eq!(reopened.hosts().unwrap(), [("web-1".to_owned(), 4)]);
    assert_eq!(
        reopened.state_at("web-1", 2).unwrap().files["/etc/a"],
        text("2")
    );
    assert!(matches!(
        reopened.state_at("web-1", 5),
        Err(StoreError::NoSuchSeq { seq: 5, .. })
    ));
    // Seqs from outside (an operator's `diff`) cannot make the arithmetic wrap.
    assert!(matches!(
        reopened.changes_between("web-1", u64::MAX, 0),
        Err(StoreError::NoSuchSeq { .. })
    ));
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u8..6, proptest::option::of("[a-c]{0,3}"))
            .prop_map(|(i, content)| file(&format!("/etc/f{i}"), content.as_deref())),
        (1u32..8).prop_map(|pid| Change::ProcessStarted(process(pid, "/bin/sh"))),
        (1u32..8).prop_map(|pid| Change::ProcessExited { pid }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn state_at_k_is_the_daemon_model_after_batch_k(
        windows in proptest::collection::vec(proptest::collection::vec(change(), 0..6), 1..(3 * CHECKPOINT_EVERY as usize)),
        probes in proptest::collection::vec(any::<prop::sample::Index>(), 8),
    ) {
        for engine in Scratch::each() {
            let store = engine.open();
            let mut daemon = HostModel::default();
            let mut after = Vec::new();
            for (i, changes) in windows.iter().enumerate() {
                let batch = cut(&mut daemon, i as u64 + 1, changes);
                prop_assert_eq!(store.append(&batch).unwrap(), Appended::Stored);
                after.push(daemon.clone());
            }
            for probe in &probes {
                let k = probe.index(after.len());
                prop_assert_eq!(&store.state_at("web-1", k as u64 + 1).unwrap(), &after[k]);
            }
            let last = store.state("web-1").unwrap();
            prop_assert_eq!(last.as_ref(), Some(&daemon));
        }
    }
}

/// Two replayers on one PostgreSQL: each hears of every append, its own marked as such, and
/// after (re)connecting is told that it may have missed some. The embedded engine has one
/// writer and says so.
#[test]
fn every_replayer_on_a_shared_store_hears_of_every_append() {
    assert!(!Scratch::redb().open().listen(|_| true));
    let Some(engine) = Scratch::postgres() else {
        return;
    };
    let (here, there) = (engine.open(), engine.open());
    let (tx, rx) = std::sync::mpsc::channel();
    assert!(here.listen(move |n| tx.send(n).is_ok()));
    let wait = || {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a notice within 10 s")
    };
    assert_eq!(wait(), safetytwin_store::Notice::Missed);
    let mut daemon = HostModel::default();
    there
        .append(&cut(&mut daemon, 1, &[file("/etc/a", Some("1"))]))
        .unwrap();
    here.append(&cut(&mut daemon, 2, &[file("/etc/a", Some("2"))]))
        .unwrap();
    // A duplicate and a refusal store nothing and say nothing.
    assert_eq!(
        there
            .append(&here.batch("web-1", 2).unwrap().unwrap())
            .unwrap(),
        Appended::Duplicate
    );
    there
        .append(&cut(&mut daemon, 3, &[file("/etc/a", Some("3"))]))
        .unwrap();
    let stored = |seq, here| safetytwin_store::Notice::Stored {
        host: "web-1".into(),
        seq,
        here,
    };
    assert_eq!(
        [wait(), wait(), wait()],
        [stored(1, false), stored(2, true), stored(3, false)]
    );
}

/// Twins' leases on a shared store: a worker takes its fair share of free hosts, renews what it
/// holds, loses all of it `ttl` after its last round (to the next worker's round, counted as
/// moves), and gives it up at once when it stops gracefully; workers taking at the same moment
/// never get the same host. The embedded store has one worker, which keeps every twin.
#[test]
fn each_twin_has_one_worker_and_moves_when_its_worker_goes() {
    use std::time::Duration;
    assert_eq!(
        Scratch::redb()
            .open()
            .lease_round("a", Duration::from_secs(1))
            .unwrap(),
        None
    );
    let Some(engine) = Scratch::postgres() else {
        return;
    };
    let store = engine.open();
    let hosts: Vec<String> = (0..4).map(|i| format!("web-{i}")).collect();
    for h in &hosts {
        let mut b = cut(&mut HostModel::default(), 1, &[]);
        b.header.host_id = h.clone();
        store.append(&b).unwrap();
    }
    let ttl = Duration::from_millis(1500);
    let a = store.lease_round("a", ttl).unwrap().unwrap();
    assert_eq!(
        (a.held.clone(), a.taken.clone()),
        (hosts.clone(), hosts.clone())
    );
    assert!(a.moved.is_empty());
    // A second worker: its share is two, but nothing is free.
    let b = store.lease_round("b", ttl).unwrap().unwrap();
    assert!(b.held.is_empty(), "{b:?}");
    // `a` renews and keeps everything; `b` still gets nothing.
    std::thread::sleep(ttl / 2);
    assert_eq!(store.lease_round("a", ttl).unwrap().unwrap().held, hosts);
    assert!(
        store
            .lease_round("b", ttl)
            .unwrap()
            .unwrap()
            .held
            .is_empty()
    );
    // `a` stops renewing: one ttl later `b` takes every twin, each a move.
    std::thread::sleep(ttl + Duration::from_millis(200));
    let b = store.lease_round("b", ttl).unwrap().unwrap();
    assert_eq!(
        (b.held.clone(), b.moved.clone()),
        (hosts.clone(), hosts.clone())
    );
    let leases = store.leases().unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.owner == "b" && l.moves == 1 && l.expires_in_ms > 0)
    );
    // `a` is back: nothing is free, it waits.
    assert!(
        store
            .lease_round("a", ttl)
            .unwrap()
            .unwrap()
            .held
            .is_empty()
    );
    // `b` stops gracefully: `a` takes everything at its next round.
    store.release("b").unwrap();
    let a = store.lease_round("a", ttl).unwrap().unwrap();
    assert_eq!((a.held, a.moved), (hosts.clone(), hosts.clone()));

    // Twenty new hosts, eight workers taking at once: no host twice.
    for i in 4..24 {
        let mut b = cut(&mut HostModel::default(), 1, &[]);
        b.header.host_id = format!("web-{i}");
        store.append(&b).unwrap();
    }
    let store = std::sync::Arc::new(store);
    let rounds: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .lease_round(&format!("w{w}"), Duration::from_secs(30))
                    .unwrap()
                    .unwrap()
                    .taken
            })
        })
        .collect();
    let mut taken: Vec<String> = rounds.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let before = taken.len();
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), before, "a host was taken twice");
}

/// The fence: once a process acts as a worker, its writes of a twin's records commit only while
/// it holds that twin's lease, so a worker that lost a twin (cut off, its lease ended, another
/// took it) cannot overwrite what the new worker records.
#[test]
fn a_worker_that_lost_a_twin_cannot_write_its_records() {
    use safetytwin_store::{FailureRecord, TwinProgress, VerifyRecord};
    use std::time::Duration;
    let Some(engine) = Scratch::postgres() else {
        return;
    };
    let (a, b) = (engine.open(), engine.open());
    a.act_as("a");
    b.act_as("b");
    a.append(&cut(&mut HostModel::default(), 1, &[])).unwrap();
    let ttl = Duration::from_millis(1500);
    assert_eq!(a.lease_round("a", ttl).unwrap().unwrap().held, ["web-1"]);
    let at = |seq| TwinProgress {
        applied_seq: seq,
        ..TwinProgress::default()
    };
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost { .. }));
    a.set_twin_progress("web-1", &at(1), None).unwrap();
    assert!(lost(b.set_twin_progress("web-1", &at(9), None)));
    // `a` stops renewing; `b` takes the twin.
    std::thread::sleep(ttl + Duration::from_millis(200));
    assert_eq!(b.lease_round("b", ttl).unwrap().unwrap().held, ["web-1"]);
    b.set_twin_progress("web-1", &at(2), None).unwrap();
    assert!(lost(a.set_twin_progress("web-1", &at(7), None)));
    let failure = FailureRecord {
        seq: 3,
        message: "late".into(),
        unix_ns: 1,
    };
    assert!(lost(a.record_failure("web-1", &failure)));
    assert!(lost(a.set_verify("web-1", &VerifyRecord::default())));
    assert!(lost(a.remove_snapshot("web-1", 1)));
    assert_eq!(b.twin_progress("web-1").unwrap(), at(2));
    assert_eq!(b.last_failure("web-1").unwrap(), None);
}
