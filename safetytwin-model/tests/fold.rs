//! The delta engine's contract: batches hold only net changes, and folding the batches of any
//! split of a change sequence gives the same model as folding the whole sequence at once.

use std::collections::BTreeMap;

use proptest::prelude::*;
use safetytwin_model::{
    Change, DeltaBatch, FileDelta, FileState, Group, HostModel, OsRelease, Package, PackageStatus,
    Password, Process, ProcessDelta, UnitDelta, User, Window,
    fixtures::{process, symlink, text},
};

fn window(model: &mut HostModel, changes: &[Change]) -> DeltaBatch {
    let mut w = Window::default();
    for c in changes {
        model.apply(c, &mut w);
    }
    model.cut(w)
}

fn observed(path: &str, state: Option<FileState>) -> Change {
    Change::FileObserved {
        path: path.to_owned(),
        state,
    }
}

#[test]
fn fifty_writes_are_one_upsert_with_the_final_content() {
    let mut m = HostModel::default();
    let changes: Vec<Change> = (0..50)
        .map(|i| observed("/etc/app.conf", Some(text(&format!("v{i}")))))
        .collect();
    let batch = window(&mut m, &changes);
    assert_eq!(
        batch.files,
        [FileDelta::Upsert {
            path: "/etc/app.conf".into(),
            state: text("v49")
        }]
    );
}

#[test]
fn created_and_deleted_inside_the_window_is_nothing() {
    let mut m = HostModel::default();
    let batch = window(
        &mut m,
        &[
            observed("/etc/tmp.conf", Some(text("x"))),
            observed("/etc/tmp.conf", None),
        ],
    );
    assert!(batch.is_empty(), "{batch:?}");
    // Rewriting a file with the bytes it had is no change either.
    m.files.insert("/etc/same.conf".into(), text("same"));
    let batch = window(&mut m, &[observed("/etc/same.conf", Some(text("same")))]);
    assert!(batch.is_empty(), "{batch:?}");
}

#[test]
fn short_lived_processes_are_only_counted() {
    let mut m = HostModel::default();
    m.processes.insert(1, process(1, "/sbin/init"));
    let batch = window(
        &mut m,
        &[
            Change::ProcessStarted(process(10, "/bin/sh")),
            Change::ProcessStarted(process(10, "/bin/true")),
            Change::ProcessExited { pid: 10 },
            Change::ProcessStarted(process(11, "/usr/sbin/nginx")),
            Change::ProcessExited { pid: 1 },
        ],
    );
    assert_eq!(
        batch.processes,
        [
            ProcessDelta::Remove { pid: 1 },
            ProcessDelta::Upsert(process(11, "/usr/sbin/nginx"))
        ]
    );
    assert_eq!(
        (
            batch.activity.started,
            batch.activity.exited,
            batch.activity.short_lived
        ),
        (2, 2, 1)
    );
}

#[test]
fn unit_lifecycle_through_cgroups_and_files() {
    let mut m = HostModel::default();
    let cg = "/system.slice/demo.service".to_owned();
    let batch = window(
        &mut m,
        &[
            observed(
                "/etc/systemd/system/demo.service",
                Some(text("[Service]\n")),
            ),
            observed(
                "/etc/systemd/system/multi-user.target.wants/demo.service",
                Some(symlink("/etc/systemd/system/demo.service")),
            ),
            Change::CgroupCreated {
                path: cg.clone(),
                id: 77,
            },
            Change::CgroupPopulated {
                path: cg.clone(),
                id: 77,
                populated: true,
            },
            Change::TaskAttached {
                path: cg.clone(),
                pid: 42,
            },
        ],
    );
    let [UnitDelta::Upsert(unit)] = batch.units.as_slice() else {
        panic!("{:?}", batch.units)
    };
    assert!(unit.active());
    assert_eq!(unit.runtime.as_ref().unwrap().main_pid, Some(42));
    m.processes.insert(
        42,
        Process {
            cgroup_id: 77,
            ..process(42, "/usr/bin/demo")
        },
    );
    m.processes.insert(43, process(43, "/bin/sh"));
    assert_eq!(m.unit_tasks("demo.service"), [42]);
    assert_eq!(unit.enabled_by.len(), 1);
    assert_eq!(batch.files.len(), 2);

    let batch = window(
        &mut m,
        &[
            Change::CgroupPopulated {
                path: cg.clone(),
                id: 77,
                populated: false,
            },
            Change::CgroupRemoved { path: cg },
        ],
    );
    let [UnitDelta::Upsert(unit)] = batch.units.as_slice() else {
        panic!("{:?}", batch.units)
    };
    assert!(!unit.active() && unit.runtime.is_none());
    assert_eq!(
        unit.fragment_path.as_deref(),
        Some("/etc/systemd/system/demo.service")
    );

    let batch = window(
        &mut m,
        &[
            observed("/etc/systemd/system/demo.service", None),
            observed(
                "/etc/systemd/system/multi-user.target.wants/demo.service",
                None,
            ),
        ],
    );
    assert_eq!(
        batch.units,
        [UnitDelta::Remove {
            name: "demo.service".into()
        }]
    );
}

#[test]
fn an_idle_window_is_an_empty_heartbeat() {
    let mut m = HostModel::default();
    m.files
        .insert("/etc/hosts".into(), text("127.0.0.1 localhost\n"));
    let batch = window(&mut m, &[]);
    assert!(batch.is_empty());
    assert_eq!(batch.activity.changes, 0);
}

const PATHS: &[&str] = &[
    "/etc/a.conf",
    "/etc/b.conf",
    "/etc/systemd/system/a.service",
    "/etc/systemd/system/a.service.d/x.conf",
    "/etc/systemd/system/multi-user.target.wants/a.service",
    "/lib/systemd/system/b@.service",
    "/etc/systemd/system/getty.target.wants/b@x.service",
];
const CGROUPS: &[&str] = &[
    "/system.slice",
    "/system.slice/a.service",
    "/system.slice/system-b.slice/b@x.service",
    "/system.slice/a.service/payload",
];

fn change() -> impl Strategy<Value = Change> {
    let path = || proptest::sample::select(PATHS);
    let cgroup = || proptest::sample::select(CGROUPS);
    let state = prop_oneof![
        Just(None),
        "[a-c]{0,3}".prop_map(|s| Some(text(&s))),
        "[a-c]{1,2}".prop_map(|s| Some(symlink(&s))),
    ];
    prop_oneof![
        (
            1u32..6,
            proptest::sample::select(&["/bin/sh", "/bin/true", "/usr/sbin/sshd"][..])
        )
            .prop_map(|(pid, exe)| Change::ProcessStarted(process(pid, exe))),
        (1u32..6).prop_map(|pid| Change::ProcessExited { pid }),
        cgroup().prop_map(|p| Change::CgroupCreated {
            path: p.into(),
            id: p.len() as u64
        }),
        cgroup().prop_map(|p| Change::CgroupRemoved { path: p.into() }),
        (cgroup(), any::<bool>()).prop_map(|(p, populated)| Change::CgroupPopulated {
            path: p.into(),
            id: p.len() as u64,
            populated
        }),
        (cgroup(), 1u32..6).prop_map(|(p, pid)| Change::TaskAttached {
            path: p.into(),
            pid
        }),
        (path(), state).prop_map(|(p, state)| observed(p, state)),
        packages().prop_map(Change::PackagesObserved),
        proptest::sample::select(&["bookworm", "trixie"][..]).prop_map(|c| {
            Change::OsObserved(OsRelease {
                id: "debian".into(),
                version_id: String::new(),
                codename: c.into(),
            })
        }),
        (users(), groups()).prop_map(|(users, groups)| Change::AccountsObserved { users, groups }),
    ]
}

/// A package set: a few names on two architectures, each at one of a few versions.
fn packages() -> impl Strategy<Value = BTreeMap<String, Package>> {
    let package = (
        proptest::sample::select(&["nginx", "libc6", "curl"][..]),
        proptest::sample::select(&["amd64", "all"][..]),
        proptest::sample::select(&["1.0-1", "1.0-2", "2:0.9"][..]),
        proptest::sample::select(&PackageStatus::ALL[..]),
    )
        .prop_map(|(name, arch, version, status)| Package {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
            status,
        });
    proptest::collection::vec(package, 0..5)
        .prop_map(|ps| ps.into_iter().map(|p| (p.key(), p)).collect())
}

fn users() -> impl Strategy<Value = BTreeMap<String, User>> {
    let user = (
        proptest::sample::select(&["root", "alice", "svc"][..]),
        0u32..3,
        proptest::sample::select(&Password::ALL[..]),
    )
        .prop_map(|(name, uid, password)| User {
            name: name.into(),
            uid,
            gid: uid,
            gecos: String::new(),
            home: format!("/home/{name}"),
            shell: "/bin/sh".into(),
            password,
        });
    proptest::collection::vec(user, 0..4)
        .prop_map(|us| us.into_iter().map(|u| (u.name.clone(), u)).collect())
}

fn groups() -> impl Strategy<Value = BTreeMap<String, Group>> {
    let group = (
        proptest::sample::select(&["root", "sudo", "svc"][..]),
        proptest::collection::vec(proptest::sample::select(&["alice", "bob"][..]), 0..3),
    )
        .prop_map(|(name, members)| Group {
            name: name.into(),
            gid: name.len() as u32,
            members: members.into_iter().map(str::to_owned).collect(),
        });
    proptest::collection::vec(group, 0..4)
        .prop_map(|gs| gs.into_iter().map(|g| (g.name.clone(), g)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn folding_batches_equals_folding_all_changes(
        history in proptest::collection::vec(change(), 0..40),
        changes in proptest::collection::vec(change(), 0..120),
        cuts in proptest::collection::vec(0usize..120, 0..8),
    ) {
        // A model with some history, as a daemon has when it starts cutting.
        let mut initial = HostModel::default();
        window(&mut initial, &history);

        let mut all_at_once = initial.clone();
        window(&mut all_at_once, &changes);

        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(changes.len())).collect();
        bounds.extend([0, changes.len()]);
        bounds.sort();
        let mut daemon = initial.clone();
        let initial_copy = initial.clone();
        let mut replayer = initial;
        for pair in bounds.windows(2) {
            let batch = window(&mut daemon, &changes[pair[0]..pair[1]]);
            replayer.apply_batch(&batch);
            prop_assert_eq!(&replayer, &daemon);
        }
        prop_assert_eq!(&replayer, &all_at_once);

        // Diff between two points applied to the first gives the second.
        let mut patched = initial_copy.clone();
        patched.apply_batch(&initial_copy.diff(&daemon));
        prop_assert_eq!(&patched, &daemon);

        // A resync restates the model: applied to an empty one, it gives the same model.
        let mut restated = HostModel::default();
        restated.apply_batch(&daemon.restate());
        prop_assert_eq!(&restated, &daemon);
    }
}
