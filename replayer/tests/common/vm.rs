//! Shared by the tests that boot a real twin: when they cannot run here, and cleaning up.

use std::{
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
};

use safetytwin_twin::vm::libvirt::{LibvirtBackend, LibvirtConfig};

/// Removes the twin however the test ends.
pub struct Cleanup<'a> {
    pub backend: &'a LibvirtBackend,
    pub host: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.backend.remove(&self.host) {
            eprintln!("cleanup of {}: {e}", self.host);
        }
    }
}

/// Whether a test that boots a real twin must skip here: it says why and returns true. Only
/// truly absent capabilities count (root, a libvirt that answers, the image); where
/// `SAFETYTWIN_TWIN_REQUIRED` is set (`cargo xtask test` and `check-twin` prepared all of
/// them), a missing one fails the test instead of hiding behind a skip.
pub fn skip(config: &LibvirtConfig) -> bool {
    let Some(why) = why_skip(config) else {
        return false;
    };
    assert!(
        std::env::var_os("SAFETYTWIN_TWIN_REQUIRED").is_none(),
        "cannot run the twin: {why}"
    );
    eprintln!("skipping: {why}");
    true
}

fn why_skip(config: &LibvirtConfig) -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not root".into());
    }
    let virsh = Command::new("virsh")
        .args(["-c", &config.uri, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !virsh.is_ok_and(|s| s.success()) {
        return Some(format!(
            "`virsh -c {} version` fails (cargo xtask setup-twin)",
            config.uri
        ));
    }
    if !config.image.join("image.json").exists() {
        return Some(format!(
            "no image at {} (cargo xtask build-image)",
            config.image.display()
        ));
    }
    None
}
