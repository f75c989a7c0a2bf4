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

use anyhow::{Context, Result, bail};

use crate::{apt_get, image, is_root, missing_packages, root, run_cmd, step};

const SOURCES_PATH: &str = "/etc/apt/sources.list.d/safetytwin-backports.sources";
const SOURCES: &str = "\
# Written by `cargo xtask setup-twin`: QEMU and libvirt for the twin. Only the packages pinned
# in /etc/apt/preferences.d/safetytwin-twin are taken from here.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

const PREFERENCES_PATH: &str = "/etc/apt/preferences.d/safetytwin-twin";

/// Backports packages the twin needs, and the exact-version dependencies they drag along
/// (qemu-system-x86 wants `qemu-system-common (= same version)` and a newer seabios; every
/// libvirt part wants the same libvirt0). A dependency missing here would be resolved from
/// stable and the install would fail with an unmet `=` dependency.
const PINNED: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "qemu-system-gui",
    "qemu-block-extra",
    "qemu-utils",
    "seabios",
    "libvirt0",
    "libvirt-common",
    "libvirt-clients",
    "libvirt-dev",
    "libvirt-l10n",
    "libvirt-daemon",
    "libvirt-daemon-common",
    "libvirt-daemon-log",
    "libvirt-daemon-lock",
    "libvirt-daemon-plugin-lockd",
    "libvirt-daemon-system",
    "libvirt-daemon-system-systemd",
    "libvirt-daemon-config-*",
    "libvirt-daemon-driver-*",
];

/// What the twin needs on the host. Recommends are not installed: they would add swtpm, OVMF,
/// passt, spice and a dozen storage drivers the twin never uses.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-block-extra",
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-dev",
    "pkg-config",
    "debootstrap",
    "e2fsprogs",
];

const LIBVIRT_URI: &str = "qemu:///system";

/// `setup-twin`: packages, then the daemons, then a libvirt that answers.
pub fn setup() -> Result<()> {
    install()?;
    start_libvirt()
}

/// Writes the backports source and the pins, then installs what dpkg lacks; apt is not run at
/// all when everything is in place.
pub fn install() -> Result<()> {
    let preferences = format!(
        "# Written by `cargo xtask setup-twin`: these packages, and only these, come from\n\
         # bookworm-backports.\nPackage: {}\nPin: release n=bookworm-backports\n\
         Pin-Priority: 990\n",
        PINNED.join(" ")
    );
    let configured = holds(SOURCES_PATH, SOURCES) && holds(PREFERENCES_PATH, &preferences);
    let missing = missing_packages(PACKAGES);
    if configured && missing.is_empty() {
        eprintln!(
            "    twin packages: all installed, backports pinned ({})",
            PACKAGES.join(" ")
        );
        return Ok(());
    }
    require_root("installing the twin's packages")?;
    let sources_changed = write_if_changed(SOURCES_PATH, SOURCES)?;
    write_if_changed(PREFERENCES_PATH, &preferences)?;
    if missing.is_empty() {
        if sources_changed {
            step("apt-get update (bookworm-backports added)", || {
                apt_get(&["update", "-q"])
            })?;
        }
        return Ok(());
    }
    step(&format!("apt-get install {}", missing.join(" ")), || {
        apt_get(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        apt_get(&args)
    })?;
    let still = missing_packages(PACKAGES);
    if !still.is_empty() {
        bail!("apt-get finished but these are still not installed: {still:?}");
    }
    Ok(())
}

fn holds(path: &str, text: &str) -> bool {
    std::fs::read_to_string(path).ok().as_deref() == Some(text)
}

/// Writes `text` to `path` unless it already holds exactly that; returns whether it wrote.
fn write_if_changed(path: &str, text: &str) -> Result<bool> {
    if holds(path, text) {
        return Ok(false);
    }
    eprintln!("    writing {path}");
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?;
    Ok(true)
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root");
    }
    Ok(())
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
    let image = image::build(Path::new(image::DEFAULT_OUT), false)?;
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
