//! The twin's host side: `setup-twin` (QEMU and libvirt from bookworm-backports, the daemons)
//! and `check-twin`, which makes sure of both and of the image, then runs the replayer's
//! libvirt test: a throw-away twin booted and driven through the replayer's own backend.
//!
//! bookworm's QEMU 7.2 cannot be installed next to the preinstalled qemu-utils 10.0 from
//! backports, so QEMU and libvirt 11.3 come from bookworm-backports. Backports is pinned per
//! package: only the names in `PINNED` move, the rest of the system stays on stable.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{image, require_root, root, run_cmd, step, twin_packages};

const LIBVIRT_URI: &str = "qemu:///system";

/// `setup-twin`: packages, then the daemons, then a libvirt that answers.
pub fn setup() -> Result<()> {
    twin_packages::install()?;
    start_libvirt()
}

/// Starts virtlogd and libvirtd when they are not running (systemd is not PID 1 everywhere
/// this runs, so socket activation cannot be relied on) and waits until libvirt answers.
pub fn start_libvirt() -> Result<()> {
    if virsh_answers() {
        eprintln!("    libvirt answers on {LIBVIRT_URI}");
        return Ok(());
    }
    require_root("starting libvirtd")?;
    step("start virtlogd and libvirtd", || {
        // virtlogd first: libvirtd hands it every domain's console log.
        for daemon in ["virtlogd", "libvirtd"] {
            if process_running(daemon) {
                eprintln!("    {daemon}: already running");
                continue;
            }
            eprintln!("    {daemon} -d");
            run_cmd(
                Command::new(daemon)
                    .arg("-d")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !virsh_answers() {
            if Instant::now() > deadline {
                bail!("libvirtd started but {LIBVIRT_URI} does not answer after 60 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    })?;
    let out = Command::new("virsh")
        .args(["-c", LIBVIRT_URI, "version"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.trim().is_empty() {
            eprintln!("    {line}");
        }
    }
    Ok(())
}

fn virsh_answers() -> bool {
    Command::new("virsh")
        .args(["-c", LIBVIRT_URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn process_running(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()).any(|e| {
        std::fs::read_to_string(e.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    })
}

/// `check-twin`: set up, build (or reuse) the image, then run `replayer/tests/libvirt.rs`
/// with its output shown. The test skips without root, libvirt or the image; here all three
/// are ensured, and `SAFETYTWIN_TWIN_REQUIRED` turns a skip into a failure all the same.
pub fn check(domain_type: Option<&str>) -> Result<()> {
    setup()?;
    let image = image::build(Path::new(image::DEFAULT_OUT), false, image::DEFAULT_RELEASE)?;
    eprintln!("    image {}", image.dir.display());
    require_root("check-twin (the twin runs under qemu:///system)")?;
    if let Some(t) = domain_type
        && !matches!(t, "kvm" | "qemu")
    {
        bail!("--domain-type must be kvm or qemu, not {t}");
    }
    step("cargo test -p safetytwin-replayer --test libvirt", || {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "test",
            "-p",
            "safetytwin-replayer",
            "--test",
            "libvirt",
            "--",
            "--nocapture",
        ])
        .env("SAFETYTWIN_TWIN_REQUIRED", "1")
        .current_dir(root());
        if let Some(t) = domain_type {
            cmd.env("SAFETYTWIN_DOMAIN_TYPE", t);
        }
        run_cmd(&mut cmd)
    })
}
