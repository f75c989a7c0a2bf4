//! The documented command path, end to end on this host: `safetytwin-replayer serve` with a
//! libvirt twin and `safetytwin-daemon run` (real probes) as processes, a config file and a
//! unit (file and enablement link) changed under /etc, both seen in the twin; then
//! `apt-get install` of a service package the image lacks and `useradd` on the host: the twin
//! has the package at the host's version, its binary, its config byte-identical, its unit
//! enabled, and the account (locked), and `verify` finds no difference; then the operator's
//! `snapshots`, `revert` (before the install: the package is gone, `verify` clean again) and
//! `export`. Needs root, libvirt, the image and apt's lists, and the daemon binary built next
//! to this test (`cargo xtask test` builds the whole workspace). The package and the account
//! are removed from the host however the test ends.

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

/// A service package the image lacks, installed on the host by this test and purged however
/// it ends; and an account, deleted.
struct HostChanges {
    package: Option<String>,
    user: Option<String>,
}

impl Drop for HostChanges {
    fn drop(&mut self) {
        if let Some(p) = &self.package {
            let _ = Command::new("apt-get")
                .args(["purge", "-y", "-q", p])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
        if let Some(u) = &self.user {
            let _ = Command::new("userdel").args(["-r", u]).output();
        }
    }
}

/// Service packages the twin image lacks, each with dependencies it lacks too; the test takes
/// the first one this host does not have.
const SERVICES: [(&str, &str); 2] = [
    ("memcached", "/etc/memcached.conf"),
    ("tftpd-hpa", "/etc/default/tftpd-hpa"),
];

fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status} ${Version}", package])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .strip_prefix("installed ")
        .map(str::to_owned)
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
    // The guest agent does not answer while the twin is paused for a snapshot (an apply of
    // the host's own later changes may take one at any time): ask again rather than read an
    // error as empty output, which a later assertion would take for the guest's answer.
    let guest = |argv: &[&str]| -> String {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match backend.exec(&host, &argv, Duration::from_secs(60)) {
                Ok(o) => return String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("guest {argv:?}: {e}; asking again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("guest {argv:?}: {e}"),
            }
        }
    };
    wait_for("the change in the twin", Duration::from_secs(120), || {
        backend.read_file(&host, &conf).ok().as_deref() == Some(b"listen=8080\n".as_slice())
            && guest(&["/bin/systemctl", "is-enabled", &format!("{name}.service")]) == "enabled"
    });
    eprintln!(
        "config file and unit in the twin {:.1} s after the change",
        changed.elapsed().as_secs_f64()
    );

    // A service package installed on the host, and an account with a password.
    let (package, config) = SERVICES
        .into_iter()
        .find(|(p, _)| installed_version(p).is_none())
        .expect("this host has every test service package: purge one of them");
    let user = format!("ste2e{}", std::process::id() % 100_000);
    let mut host_changes = HostChanges {
        package: Some(package.to_owned()),
        user: None,
    };
    let t = Instant::now();
    let apt = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(
        apt.status.success(),
        "apt-get install {package}: {}",
        String::from_utf8_lossy(&apt.stderr)
    );
    let version = installed_version(package).expect("installed");
    eprintln!(
        "host: {package} {version} installed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let useradd = Command::new("useradd")
        .args(["-m", "-s", "/bin/bash", &user])
        .status()
        .unwrap();
    assert!(useradd.success());
    host_changes.user = Some(user.clone());
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        chpasswd.stdin.as_mut().unwrap(),
        format!("{user}:e2e-Secret-1\n").as_bytes(),
    )
    .unwrap();
    assert!(chpasswd.wait().unwrap().success());
    let passwd_line = String::from_utf8_lossy(
        &Command::new("getent")
            .args(["passwd", &user])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    let changed = Instant::now();
    let sh = |script: &str| guest(&["/bin/sh", "-c", script]);
    wait_for(
        "the package and the account in the twin",
        Duration::from_secs(600),
        || {
            sh(&format!(
                "dpkg-query -W -f '${{db:Status-Status}} ${{Version}}' {package}"
            )) == format!("installed {version}")
                && !sh(&format!("getent passwd {user}")).is_empty()
        },
    );
    eprintln!(
        "{package} and {user} in the twin {:.1} s after the install",
        changed.elapsed().as_secs_f64()
    );
    // Its config byte for byte, its unit enabled, the account with its password locked.
    wait_for("the package's files", Duration::from_secs(120), || {
        backend.read_file(&host, config).ok() == std::fs::read(config).ok()
    });
    assert_eq!(
        sh(&format!(
            "systemctl is-enabled {package}; passwd -S {user} | cut -d' ' -f2; getent passwd {user}"
        )),
        format!("enabled\nL\n{passwd_line}")
    );
    // Proven: everything the twin should hold, it holds (settled: the last batch applied).
    let verify = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let out = replayer_cli(&url, &["verify", "--host", &host]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                eprintln!("{what}:\n{text}");
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still differs:\n{text}");
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    verify("verify after the install");

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
    assert_eq!(
        sh(&format!(
            "dpkg-query -W -f '${{db:Status-Status}}' {package} 2>/dev/null || echo absent"
        )),
        "absent",
        "the first snapshot predates the install"
    );
    verify("verify at the first snapshot");
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
