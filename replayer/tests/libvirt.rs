//! The libvirt backend against a real twin: boot, files and programs through the guest agent,
//! parallel exec, internal snapshots and revert, then removal. Needs root, a libvirt that
//! answers on qemu:///system and the image (`cargo xtask setup-twin`, `build-image`); without
//! them it says why and passes. `cargo xtask check-twin` runs it with `--nocapture` for the
//! timings.
//!
//! `SAFETYTWIN_DOMAIN_TYPE=kvm|qemu` overrides the detected domain type;
//! `SAFETYTWIN_TWIN_REQUIRED` makes a missing prerequisite a failure instead of a skip.

#![cfg(feature = "libvirt")]

mod common;

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use common::vm;
use safetytwin_twin::vm::{
    DomainState, TwinBackend,
    libvirt::{LibvirtBackend, LibvirtConfig},
};

const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!(
        "    {what}: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    value
}

#[test]
fn a_twin_boots_runs_snapshots_and_reverts() {
    // The backend's own step log (define, boot, ready, revert split), shown with --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let config = LibvirtConfig {
        domain_type: std::env::var("SAFETYTWIN_DOMAIN_TYPE").ok(),
        ..LibvirtConfig::default()
    };
    if vm::skip(&config) {
        return;
    }
    let backend = LibvirtBackend::open(config).expect("open");
    let host = format!("test-libvirt-{}", std::process::id());
    let _cleanup = vm::Cleanup {
        backend: &backend,
        host: host.clone(),
    };
    eprintln!(
        "    image {}, domain type {}",
        backend.image_dir().display(),
        backend.domain_type()
    );

    assert_eq!(backend.state(&host).unwrap(), DomainState::Absent);
    let ensured = backend.ensure(&host).expect("ensure");
    assert!(!ensured.adopted);
    eprintln!(
        "    ensure (define, boot, first guest-ping): {:.1} s",
        ensured.took.as_secs_f64()
    );
    let again = timed("ensure of the running twin (adopt + ping)", || {
        backend.ensure(&host).expect("adopt")
    });
    assert!(again.adopted);

    let run = |args: &[&str]| {
        let out = backend.exec(&host, &argv(args), EXEC_TIMEOUT).unwrap();
        assert!(out.success(), "{args:?}: {out:?}");
        out
    };
    timed("exec /bin/true (agent round trips)", || run(&["/bin/true"]));
    timed("exec mkdir -p /etc/demo", || {
        run(&["/bin/mkdir", "-p", "/etc/demo"])
    });

    let path = "/etc/demo/x.conf";
    let a = b"version = A\n".to_vec();
    timed("write_file 12 B", || {
        backend.write_file(&host, path, &a).unwrap()
    });
    let read = timed("read_file 12 B", || backend.read_file(&host, path).unwrap());
    assert_eq!(read, a);
    let cat = timed("exec /bin/cat", || run(&["/bin/cat", path]));
    assert_eq!(cat.stdout, a);
    let failing = backend
        .exec(&host, &argv(&["/bin/cat", "/nonexistent"]), EXEC_TIMEOUT)
        .unwrap();
    assert_ne!(failing.code, 0);
    assert!(!failing.stderr.is_empty(), "{failing:?}");

    // More than one chunk, with every byte value.
    let big: Vec<u8> = (0..(2 << 20) + 12_345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    timed("write_file 2.01 MiB", || {
        backend.write_file(&host, "/root/big", &big).unwrap()
    });
    let back = timed("read_file 2.01 MiB", || {
        backend.read_file(&host, "/root/big").unwrap()
    });
    assert!(back == big, "the 2 MiB file came back different");
    assert!(backend.read_file(&host, "/nonexistent").is_err());

    // Serialised, two 2 s sleeps take 4 s.
    let started = Instant::now();
    let outs = backend
        .exec_all(
            &host,
            &[argv(&["/bin/sleep", "2"]), argv(&["/bin/sleep", "2"])],
            EXEC_TIMEOUT,
        )
        .unwrap();
    let parallel = started.elapsed();
    eprintln!("    exec_all 2 × sleep 2: {:.2} s", parallel.as_secs_f64());
    assert!(outs.iter().all(|o| o.success()), "{outs:?}");
    assert!(parallel < Duration::from_millis(3500), "{parallel:?}");

    let started = Instant::now();
    let e = backend
        .exec(&host, &argv(&["/bin/sleep", "30"]), Duration::from_secs(1))
        .unwrap_err();
    assert!(e.to_string().contains("/bin/sleep"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    timed("snapshot A", || backend.snapshot(&host, "A").unwrap());
    let snapshot_a = Instant::now();
    let b = b"version = B\n".to_vec();
    backend.write_file(&host, path, &b).unwrap();
    timed("snapshot B", || backend.snapshot(&host, "B").unwrap());
    let names = |list: Vec<_>| -> Vec<String> {
        list.into_iter()
            .map(|s: safetytwin_twin::vm::SnapshotInfo| s.name)
            .collect()
    };
    let list = backend.snapshots(&host).unwrap();
    assert!(list[0].created_unix <= list[1].created_unix);
    assert_eq!(names(list), ["A", "B"]);

    // Long enough after A for a guest clock left at A's time to show.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(snapshot_a.elapsed()));
    timed("revert to A (incl. agent ping, set-time)", || {
        backend.revert(&host, "A").unwrap()
    });
    assert_eq!(backend.read_file(&host, path).unwrap(), a);
    let date = run(&["/bin/date", "+%s"]);
    let guest: i64 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    eprintln!(
        "    guest clock after revert: {:+} s off the host's",
        guest - host_now
    );
    assert!(
        (guest - host_now).abs() <= 3,
        "guest clock not reset after revert"
    );

    timed("delete snapshot B", || {
        backend.delete_snapshot(&host, "B").unwrap()
    });
    assert_eq!(names(backend.snapshots(&host).unwrap()), ["A"]);
    assert!(matches!(
        backend.revert(&host, "B"),
        Err(safetytwin_twin::vm::VmError::NoSuchSnapshot(_))
    ));
    assert_eq!(backend.state(&host).unwrap(), DomainState::Running);

    timed("remove (destroy, undefine with snapshots, files)", || {
        backend.remove(&host).unwrap()
    });
    assert_eq!(backend.state(&host).unwrap(), DomainState::Absent);

    // Every twin shares the base: it must still be root's and read-only (libvirt would chown
    // it to the qemu user if the template let it relabel).
    let base = backend.image_dir().join("rootfs.qcow2");
    let meta = std::fs::metadata(Path::new(&base)).unwrap();
    assert_eq!(meta.uid(), 0, "{} changed owner", base.display());
    assert_eq!(meta.mode() & 0o222, 0, "{} became writable", base.display());
}
