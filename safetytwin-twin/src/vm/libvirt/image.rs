//! The twin image and the overlays made on it. The image directory (`image.json`, kernel,
//! initrd, `rootfs.qcow2`) is checked once when the backend opens; each twin then gets its
//! own qcow2 overlay on the shared, read-only rootfs through `qemu-img`, the one program this
//! backend runs on the host.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

use super::VmError;

/// The image directory, resolved, with what a domain needs from it.
#[derive(Debug)]
pub(super) struct Image {
    pub(super) dir: PathBuf,
    pub(super) rootfs: PathBuf,
    pub(super) kernel: PathBuf,
    pub(super) initrd: PathBuf,
    pub(super) cmdline: String,
    /// The Debian release it was built from (`bookworm`).
    pub(super) suite: String,
}

impl Image {
    pub(super) fn open(path: &Path) -> Result<Image, VmError> {
        let missing = |what: &str| {
            VmError::Image(format!(
                "{what} (build the image with `cargo xtask build-image`)"
            ))
        };
        let dir = fs::canonicalize(path)
            .map_err(|e| missing(&format!("no image at {}: {e}", path.display())))?;
        let manifest = dir.join("image.json");
        let text = fs::read_to_string(&manifest)
            .map_err(|e| missing(&format!("cannot read {}: {e}", manifest.display())))?;
        /// What a twin needs from `image.json` (it holds more).
        #[derive(Deserialize)]
        struct Manifest {
            cmdline: String,
            suite: String,
        }
        let Manifest { cmdline, suite } = serde_json::from_str(&text)
            .map_err(|e| VmError::Image(format!("{}: {e}", manifest.display())))?;
        let image = Image {
            rootfs: dir.join("rootfs.qcow2"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline,
            suite,
            dir,
        };
        for file in [&image.rootfs, &image.kernel, &image.initrd] {
            let meta =
                fs::metadata(file).map_err(|e| missing(&format!("{}: {e}", file.display())))?;
            // QEMU runs as its own user and opens the shared base read-only; libvirt is told
            // not to relabel it (`xml.rs`), so it must be readable as it is.
            if meta.permissions().mode() & 0o004 == 0 {
                return Err(VmError::Image(format!(
                    "{} is not world-readable; QEMU could not open it",
                    file.display()
                )));
            }
        }
        Ok(image)
    }
}

/// Creates `overlay`, a qcow2 whose backing file is `base` (stated, not probed), replacing
/// whatever was left at that path.
pub(super) fn create_overlay(base: &Path, overlay: &Path) -> Result<(), VmError> {
    if overlay.exists() {
        // Left by a twin removed half-way or a crash before define: its content belongs
        // to no domain, and the store replays the host's state into the fresh one.
        tracing::info!(path = %overlay.display(), "replacing a stale overlay");
        fs::remove_file(overlay)?;
    }
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(VmError::Image(format!(
            "qemu-img create {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Deletes `path`; absent is fine.
pub(super) fn remove_if_exists(path: &Path) -> Result<(), VmError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}
