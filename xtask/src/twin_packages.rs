//! The packages the twin needs on the host (QEMU, libvirt, debootstrap …), QEMU and libvirt
//! from bookworm-backports pinned per package; `setup-twin` and `build-image` both install them.

use anyhow::{Context, Result, bail};

use crate::{apt_get, missing_packages, require_root, step};

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
