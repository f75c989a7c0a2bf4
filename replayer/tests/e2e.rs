//! The documented command path, end to end on this host: `safetytwin-replayer serve` with a
//! libvirt twin and `safetytwin-daemon run` (real probes) as processes, a config file and a
//! unit (file and enablement link) changed under /etc, both seen in the twin, then the
//! operator's `snapshots`, `revert` and `export`. Needs root, libvirt and the image, and the
//! daemon binary built next to this test (`cargo xtask test` builds the whole workspace).

#![cfg(feature = "libvirt")]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::vm;
use safetytwin_twin::vm::{
    TwinBackend,
    libvirt::{LibvirtBackend, LibvirtConfig},
};

/// A child stopped with SIGINT (as an operator's Ctrl-C) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(self.0.id() as i32, 2) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Host files this test made, removed however it ends.
struct HostFiles(Vec<PathBuf>);

impl Drop for HostFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn replayer_cli(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .args(args)
        .args(["--replayer", url])
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_documented_path_from_host_change_to_twin_revert_and_export() {
    // 0755 like a directory made by hand: libvirt's qemu user reaches the twin's disk through
    // it (a temporary directory is 0700).
    let tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let config = LibvirtConfig {
        state_dir: root.join("twins"),
        ..LibvirtConfig::default()
    };
    if vm::skip(&config) {
        return;
    }
    let daemon_bin =
        Path::new(env!("CARGO_BIN_EXE_safetytwin-replayer")).with_file_name("safetytwin-daemon");
    assert!(
        daemon_bin.exists(),
        "{} is missing: build the workspace (cargo xtask test does)",
        daemon_bin.display()
    );
    let backend = LibvirtBackend::open(config.clone()).unwrap();
    let host = format!("test-e2e-{}", std::process::id());
    let _cleanup = vm::Cleanup {
        backend: &backend,
        host: host.clone(),
    };

    // Any free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let log = |name: &str| std::fs::File::create(root.join(name)).unwrap();
    let _replayer = Proc(
        Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
            .args([
                "-v",
                "serve",
                "--insecure",
                "--twin",
                "libvirt",
                "--listen",
                &listen,
            ])
            .arg("--data")
            .arg(root)
            .arg("--twin-dir")
            .arg(&config.state_dir)
            .stdout(Stdio::null())
            .stderr(log("replayer.log"))
            .spawn()
            .unwrap(),
    );
    wait_for("the replayer", Duration::from_secs(30), || {
        replayer_cli(&url, &["status"]).status.success()
    });
    let _daemon = Proc(
        Command::new(&daemon_bin)
            .args([
                "-v",
                "run",
                "--insecure",
                "--interval",
                "2",
                "--watch",
                "/etc",
            ])
            .args(["--replayer", &url, "--host-id", &host])
            .arg("--spool")
            .arg(root.join("spool"))
            .stdout(Stdio::null())
            .stderr(log("daemon.log"))
            .spawn()
            .unwrap(),
    );
    let applied = || -> u64 {
        json_lines(&replayer_cli(&url, &["status", "--json"]))
            .first()
            .and_then(|s| {
                s["twins"]
                    .as_array()?
                    .iter()
                    .find(|t| t["host"] == host.as_str())?["applied_seq"]
                    .as_u64()
            })
            .unwrap_or(0)
    };
    let t = Instant::now();
    wait_for(
        "the twin to hold the host",
        Duration::from_secs(600),
        || applied() >= 1,
    );
    eprintln!(
        "first full state in the twin after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // A config file and a unit, enabled, as a configuration tool would leave them.
    let name = format!("st-e2e-{}", std::process::id());
    let conf = format!("/etc/{name}.conf");
    let unit = format!("/etc/systemd/system/{name}.service");
    let wants = format!("/etc/systemd/system/multi-user.target.wants/{name}.service");
    let _files = HostFiles(vec![
        conf.clone().into(),
        wants.clone().into(),
        unit.clone().into(),
    ]);
    std::fs::write(&conf, "listen=8080\n").unwrap();
    std::fs::write(
        &unit,
        "[Unit]\nDescription=e2e\n[Service]\nExecStart=/bin/sleep infinity\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::fs::create_dir_all(Path::new(&wants).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&unit, &wants).unwrap();
    let changed = Instant::now();
    let guest = |argv: &[&str]| -> String {
        backend
            .exec(
                &host,
                &argv.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                Duration::from_secs(60),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    wait_for("the change in the twin", Duration::from_secs(120), || {
        backend.read_file(&host, &conf).ok().as_deref() == Some(b"listen=8080\n".as_slice())
            && guest(&["/bin/systemctl", "is-enabled", &format!("{name}.service")]) == "enabled"
    });
    eprintln!(
        "config file and unit in the twin {:.1} s after the change",
        changed.elapsed().as_secs_f64()
    );

    // The operator's view: snapshots, revert to the first, export the changed state.
    // The guest shows the change before the apply's health check and snapshot are done: wait
    // until the newest snapshot holds a state with the change.
    let snapshots = || {
        json_lines(&replayer_cli(
            &url,
            &["snapshots", "--host", &host, "--json"],
        ))
    };
    let has_change_at = |seq: u64| -> bool {
        let state = replayer_cli(
            &url,
            &["state", "--at", &seq.to_string(), "--host", &host, "--json"],
        );
        json_lines(&state).into_iter().next().is_some_and(|s| {
            s["files"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["path"] == conf.as_str()))
        })
    };
    let newest = || snapshots().last().and_then(|s| s["seq"].as_u64());
    wait_for(
        "a snapshot holding the change",
        Duration::from_secs(120),
        || newest().is_some_and(has_change_at),
    );
    let latest_seq = newest().unwrap();
    let snapshots = snapshots();
    let first = snapshots[0]["name"].as_str().unwrap().to_owned();
    let out = replayer_cli(&url, &["revert", &first, "--host", &host]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        backend.read_file(&host, &conf).is_err(),
        "the first snapshot predates the change"
    );
    // systemd says "enabled" only for a unit it knows and a link that exists.
    assert_ne!(
        guest(&[
            "/bin/sh",
            "-c",
            &format!("systemctl is-enabled {name}.service; true")
        ]),
        "enabled"
    );

    let export = root.join("export");
    let out = replayer_cli(
        &url,
        &[
            "export",
            &latest_seq.to_string(),
            export.to_str().unwrap(),
            "--host",
            &host,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = export.join("files");
    assert_eq!(
        std::fs::read_to_string(files.join(conf.trim_start_matches('/'))).unwrap(),
        "listen=8080\n"
    );
    assert!(files.join(unit.trim_start_matches('/')).exists());
    assert_eq!(
        std::fs::read_link(files.join(wants.trim_start_matches('/'))).unwrap(),
        Path::new(&unit)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["host"], host.as_str());
}
