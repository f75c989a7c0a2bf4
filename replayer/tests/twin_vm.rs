//! The twin end to end, in a real VM: batches stream into the replayer over gRPC, the applier
//! brings a libvirt twin (TCG here) to each state through the guest agent, and the consumer
//! API lists snapshots and reverts. One boot serves the whole story:
//!
//! 1. a config file, a unit and its enablement arrive; the guest has the bytes, mode, owner,
//!    and the unit is active and enabled; a snapshot exists;
//! 2. the config changes, the unit stops, the host installed the service `tftpd-hpa` (from
//!    the package pool, with `libwrap0` and its own dependency `libnsl2`, which the host held
//!    before the twin's first apply and the image lacks) and added an account (locked in the
//!    twin); the service runs in the twin; a second snapshot;
//! 3. `Revert` to the first snapshot: the guest shows the first state again (and holds);
//!    `Resume` catches up again;
//! 4. an empty batch: no apply, no snapshot;
//! 5. a unit that fails to start: reported as failed, the twin back at the last good snapshot;
//! 6. a fix: applied, and retention keeps exactly `max_snapshots`.
//!
//! After every apply the applier's own check (what it changed, read back) finds no difference;
//! `Verify` reads everything.
//!
//! Needs root, libvirt and the image (`cargo xtask setup-twin`, `build-image`); without them it
//! says why and passes.

#![cfg(feature = "libvirt")]

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Running, Stream, vm};
use safetytwin_model::{
    DeltaBatch, FileDelta, FileState, Group, GroupDelta, PackageDelta, Password, Unit, UnitDelta,
    User, UserDelta, fixtures, fixtures::upsert,
};
use safetytwin_proto::{
    convert,
    v1::{self, twin_client::TwinClient},
};
use safetytwin_services::server::Security;
use safetytwin_twin::{
    applier::{Applier, ApplierConfig},
    pool::{AptDownload, Pool},
    vm::{
        TwinBackend,
        libvirt::{LibvirtBackend, LibvirtConfig},
    },
};

const MAX_SNAPSHOTS: usize = 2;
const T: Duration = Duration::from_secs(30);

/// With its real hash: `verify` compares it with the guest's.
fn file(mode: u32, gid: u32, text: &str) -> FileState {
    FileState {
        mode,
        gid,
        sha256: Some(format!(
            "{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(text)
        )),
        ..fixtures::text(text)
    }
}

fn unit(name: &str, active: bool) -> UnitDelta {
    UnitDelta::Upsert(Unit {
        fragment_path: Some(format!("/etc/systemd/system/{name}")),
        ..fixtures::unit(name, active)
    })
}

const CONF: &str = "/etc/demo/app.conf";
const UNIT_FILE: &str = "/etc/systemd/system/demo.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/demo.service";
const BAD_FILE: &str = "/etc/systemd/system/bad.service";
const MARKER: &str = "/etc/demo/from-the-failed-batch";

/// The host's first state; it holds `DEPENDENCIES` at `versions` (which the twin, following
/// package changes from its first apply, does not install now).
fn first(versions: &[String]) -> DeltaBatch {
    DeltaBatch {
        files: vec![
            upsert("/etc/demo", fixtures::dir(0o750)),
            // gid 4 is `adm` in Debian: the owner must arrive as numbers.
            upsert(CONF, file(0o640, 4, "port=1\nworkers=4\n")),
            upsert(
                UNIT_FILE,
                file(
                    0o644,
                    0,
                    "[Unit]\nDescription=demo\n[Service]\nExecStart=/bin/sleep infinity\n\
                     [Install]\nWantedBy=multi-user.target\n",
                ),
            ),
            upsert(WANTS, fixtures::symlink(UNIT_FILE)),
        ],
        units: vec![unit("demo.service", true)],
        packages: DEPENDENCIES
            .iter()
            .zip(versions)
            .map(|(name, version)| PackageDelta::Upsert(fixtures::package(name, version)))
            .collect(),
        ..DeltaBatch::default()
    }
}

/// The candidate version of `name` in this machine's apt sources.
fn candidate(name: &str) -> String {
    let out = std::process::Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .output()
        .expect("apt-cache runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("apt knows {name} (apt-get update)"))
}

/// A service the image lacks, and the dependencies it needs that the image lacks too (the
/// second one through the first).
const SERVICE: &str = "tftpd-hpa";
const DEPENDENCIES: [&str; 2] = ["libwrap0", "libnsl2"];

/// The host installed the service and added the account `demo` too: the twin gets the
/// package, and the dependency the host already had, from the package pool, and the account
/// with its password locked.
fn second(service: &str) -> DeltaBatch {
    DeltaBatch {
        files: vec![upsert(CONF, file(0o640, 4, "port=2\nworkers=4\n"))],
        units: vec![
            unit("demo.service", false),
            UnitDelta::Upsert(Unit {
                // From its init script, by systemd's generator.
                fragment_path: Some(format!("/run/systemd/generator.late/{SERVICE}.service")),
                ..fixtures::unit(&format!("{SERVICE}.service"), true)
            }),
        ],
        packages: vec![PackageDelta::Upsert(fixtures::package(SERVICE, service))],
        users: vec![UserDelta::Upsert(User {
            name: "demo".into(),
            uid: 1500,
            gid: 1500,
            gecos: "Demo".into(),
            home: "/home/demo".into(),
            shell: "/bin/bash".into(),
            password: Password::Set,
        })],
        groups: vec![GroupDelta::Upsert(Group {
            name: "demo".into(),
            gid: 1500,
            members: vec![],
        })],
        ..DeltaBatch::default()
    }
}

fn failing() -> DeltaBatch {
    DeltaBatch {
        files: vec![
            upsert(
                BAD_FILE,
                file(0o644, 0, "[Service]\nType=oneshot\nExecStart=/bin/false\n"),
            ),
            upsert(MARKER, file(0o644, 0, "should not survive\n")),
        ],
        units: vec![unit("bad.service", true)],
        ..DeltaBatch::default()
    }
}

fn fixed() -> DeltaBatch {
    DeltaBatch {
        files: vec![
            FileDelta::Remove {
                path: BAD_FILE.into(),
            },
            FileDelta::Remove {
                path: MARKER.into(),
            },
            upsert(CONF, file(0o640, 4, "port=5\nworkers=4\n")),
        ],
        units: vec![UnitDelta::Remove {
            name: "bad.service".into(),
        }],
        ..DeltaBatch::default()
    }
}

fn wire(host: &str, seq: u64, delta: DeltaBatch) -> v1::DeltaBatch {
    let mut b = fixtures::batch(host, seq, delta);
    b.header.window_end_unix_ns = 1_795_000_000_000_000_000;
    convert::batch_to_wire(&b)
}

struct Guest<'a> {
    backend: &'a LibvirtBackend,
    host: &'a str,
}

impl Guest<'_> {
    fn sh(&self, script: &str) -> String {
        let out = self
            .backend
            .exec(
                self.host,
                &["/bin/sh".into(), "-c".into(), script.into()],
                T,
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn conf(&self) -> String {
        String::from_utf8(self.backend.read_file(self.host, CONF).unwrap()).unwrap()
    }

    fn unit(&self, name: &str) -> String {
        self.sh(&format!(
            "systemctl is-active {name}; systemctl is-enabled {name} 2>/dev/null || true"
        ))
    }
}

async fn status(client: &mut TwinClient<tonic::transport::Channel>) -> v1::TwinState {
    let s = client
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.twin_backend, "libvirt");
    s.twins.into_iter().next().expect("one twin")
}

/// Waits until the twin has applied `seq` (or failed it).
/// Waits until `seq` is applied (or failed); an apply that changed something was checked by
/// the applier and found equal.
async fn applied(client: &mut TwinClient<tonic::transport::Channel>, seq: u64) -> v1::TwinState {
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let t = status(client).await;
        if t.applied_seq >= seq && t.last_apply_seq == seq {
            let v = t.last_verify.clone().expect("checked after the apply");
            eprintln!(
                "checked after the apply of seq {seq}: {} equal, {} differences in {} ms",
                v.equal,
                v.differences,
                v.micros / 1000
            );
            assert_eq!((v.seq, v.full, v.differences), (seq, false, 0), "{v:?}");
            return t;
        }
        if t.applied_seq >= seq || t.last_failure_seq >= seq {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "seq {seq} not applied in time: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `Twin.Verify` of `host`: the twin must hold exactly the model at `seq`.
async fn verified(
    client: &mut TwinClient<tonic::transport::Channel>,
    host: &str,
    seq: u64,
    equal: u64,
) {
    let t = Instant::now();
    let v = client
        .verify(v1::VerifyRequest {
            host_id: host.to_owned(),
        })
        .await
        .expect("verify answers")
        .into_inner();
    eprintln!(
        "verify at seq {seq}: {} equal, {} differences, by design {:?}, in {} ms",
        v.equal,
        v.differences.len(),
        v.by_design
            .iter()
            .map(|b| format!("{} {}", b.reason, b.count))
            .collect::<Vec<_>>(),
        t.elapsed().as_millis()
    );
    assert_eq!(v.seq, seq);
    assert!(v.differences.is_empty(), "{:?}", v.differences);
    assert_eq!(v.equal, equal, "{v:?}");
}

async fn snapshots(client: &mut TwinClient<tonic::transport::Channel>) -> Vec<(u64, String)> {
    client
        .list_snapshots(v1::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .into_iter()
        .map(|s| (s.seq, s.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_become_the_twin_and_snapshots_revert_it() {
    let config = LibvirtConfig::default();
    if vm::skip(&config) {
        return;
    }
    let backend = Arc::new(LibvirtBackend::open(config).unwrap());
    let host = format!("test-twin-{}", std::process::id());
    let _cleanup = vm::Cleanup {
        backend: &backend,
        host: host.clone(),
    };
    let guest = Guest {
        backend: &backend,
        host: &host,
    };
    let dyn_backend: Arc<dyn TwinBackend> = backend.clone();
    let service = candidate(SERVICE);
    let dependencies: Vec<String> = DEPENDENCIES.iter().map(|d| candidate(d)).collect();
    // Lives to the end of the test: the applier fetches into it.
    let pool_dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(pool_dir.path().join("pool"), Box::new(AptDownload)).unwrap();
    let running = Running::start_full("twin-vm", 64 << 20, Security::Insecure, |store| {
        Applier::new(
            store,
            dyn_backend,
            ApplierConfig {
                max_snapshots: MAX_SNAPSHOTS,
                ..ApplierConfig::default()
            },
        )
        .with_pool(pool)
    })
    .await;
    let mut client = TwinClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let (mut stream, _) = Stream::open(running.addr, &host).await;

    // 1. First state: boots the twin, then applies.
    let t0 = Instant::now();
    stream
        .send(wire(&host, 1, first(&dependencies)))
        .await
        .unwrap();
    let t = applied(&mut client, 1).await;
    eprintln!(
        "boot + first apply: {:.1} s; apply {} items in {} ms: {:?}",
        t0.elapsed().as_secs_f64(),
        t.last_apply_items,
        t.last_apply_micros / 1000,
        t.last_apply_steps
            .iter()
            .map(|s| format!("{} {} ms", s.name, s.micros / 1000))
            .collect::<Vec<_>>()
    );
    assert_eq!(t.applied_seq, 1, "{t:?}");
    assert_eq!(t.domain_state, "running");
    assert_eq!(guest.conf(), "port=1\nworkers=4\n");
    assert_eq!(
        guest.sh(&format!("stat -c '%a %u %g' {CONF} /etc/demo")),
        "640 0 4\n750 0 0"
    );
    assert_eq!(guest.unit("demo.service"), "active\nenabled");
    // Four files and the unit.
    verified(&mut client, &host, 1, 5).await;
    let snaps = snapshots(&mut client).await;
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let first_snapshot = snaps[0].1.clone();

    // 2. Config changed, unit stopped.
    stream.send(wire(&host, 2, second(&service))).await.unwrap();
    let t = applied(&mut client, 2).await;
    eprintln!(
        "second apply: {} items in {} ms: {:?}",
        t.last_apply_items,
        t.last_apply_micros / 1000,
        t.last_apply_steps
            .iter()
            .map(|s| format!("{} {} ms", s.name, s.micros / 1000))
            .collect::<Vec<_>>()
    );
    assert_eq!(guest.conf(), "port=2\nworkers=4\n");
    assert_eq!(guest.unit("demo.service"), "inactive\nenabled");
    let [wrap, nsl] = DEPENDENCIES;
    assert_eq!(
        guest.sh(&format!(
            "dpkg-query -W -f '${{Version}} ${{db:Status-Status}}\n' {SERVICE} {wrap} {nsl} && \
             systemctl is-active {SERVICE} && command -v in.tftpd"
        )),
        // dpkg-query lists by name.
        format!(
            "{} installed\n{} installed\n{service} installed\nactive\n/usr/sbin/in.tftpd",
            dependencies[1], dependencies[0]
        )
    );
    assert_eq!(
        guest.sh("getent passwd demo; getent group demo; passwd -S demo | cut -d' ' -f2"),
        "demo:x:1500:1500:Demo:/home/demo:/bin/bash\ndemo:x:1500:\nL"
    );
    // The files, two units, three packages, the user and the group.
    verified(&mut client, &host, 2, 11).await;
    assert_eq!(snapshots(&mut client).await.len(), 2);

    // 3. Back to the first snapshot: the first state, held; then follow again.
    let r = Instant::now();
    let reverted = client
        .revert(v1::RevertRequest {
            host_id: String::new(),
            snapshot: first_snapshot.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!("revert: {:.1} s", r.elapsed().as_secs_f64());
    assert_eq!(reverted.snapshot.unwrap().seq, 1);
    assert_eq!(guest.conf(), "port=1\nworkers=4\n");
    assert_eq!(guest.unit("demo.service"), "active\nenabled");
    let t = status(&mut client).await;
    assert!(t.held && t.applied_seq == 1, "{t:?}");
    // Before the install: the package is gone, and the twin is exactly seq 1 again.
    assert_eq!(guest.sh("command -v in.tftpd || echo absent"), "absent");
    verified(&mut client, &host, 1, 5).await;
    let missing = client
        .revert(v1::RevertRequest {
            host_id: host.clone(),
            snapshot: "no-such-snapshot".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    client
        .resume(v1::ResumeRequest {
            host_id: host.clone(),
        })
        .await
        .unwrap();
    let t = applied(&mut client, 2).await;
    assert!(!t.held);
    assert_eq!(guest.conf(), "port=2\nworkers=4\n");

    // 4. Nothing changed: applied without touching the guest, no snapshot.
    let before = snapshots(&mut client).await;
    stream
        .send(wire(&host, 3, DeltaBatch::default()))
        .await
        .unwrap();
    let t = applied(&mut client, 3).await;
    assert_eq!(t.last_apply_seq, 2, "no apply for an empty batch: {t:?}");
    assert_eq!(snapshots(&mut client).await, before);

    // 5. A unit that cannot start: failed, reported, back to the last good snapshot.
    stream.send(wire(&host, 4, failing())).await.unwrap();
    let t = applied(&mut client, 4).await;
    assert_eq!(t.last_failure_seq, 4, "{t:?}");
    assert!(t.last_failure.contains("bad.service"), "{t:?}");
    assert_eq!(t.applied_seq, 3);
    assert_eq!(
        guest.sh(&format!("test -e {MARKER} && echo there || echo gone")),
        "gone"
    );
    assert_eq!(guest.conf(), "port=2\nworkers=4\n");
    assert_eq!(snapshots(&mut client).await, before);

    // 6. The fix applies; retention keeps exactly MAX_SNAPSHOTS.
    stream.send(wire(&host, 5, fixed())).await.unwrap();
    let t = applied(&mut client, 5).await;
    assert_eq!(t.applied_seq, 5, "{t:?}");
    assert_eq!(guest.conf(), "port=5\nworkers=4\n");
    // Retention runs after the apply is recorded (the status says 5 a moment before the
    // oldest snapshot is deleted from libvirt and the store).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut snaps = snapshots(&mut client).await;
    while snaps.len() > MAX_SNAPSHOTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        snaps = snapshots(&mut client).await;
    }
    assert_eq!(
        snaps.iter().map(|s| s.0).collect::<Vec<_>>(),
        [2, 5],
        "{snaps:?}"
    );
    let in_libvirt: Vec<String> = backend
        .snapshots(&host)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(in_libvirt.len(), MAX_SNAPSHOTS, "{in_libvirt:?}");

    drop(stream);
    drop(client);
    running.stop().await;
}
