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
