//! Files only their owner may read, in directories only their owner may change: the daemon's
//! spool and the replayer's history hold every tracked file's content, `gen-certs` writes
//! private keys and the consumers' token. Both binaries create them through here.
//!
//! A file is created 0600 from the start (never written first and restricted after, which
//! leaves a window), never through a symbolic link, and an existing one with a looser mode is
//! tightened. A directory is created with its mode; an existing one is tightened, never
//! loosened. Refused: a directory or file owned by someone else (its owner could swap or read
//! what is inside whatever its mode), and a shared directory (sticky or world-writable, like
//! `/tmp`), which must not be made private under its other users.

use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// The mode of a private file.
pub const FILE_MODE: u32 = 0o600;
/// The mode of a private directory.
pub const DIR_MODE: u32 = 0o700;

fn refuse(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}", path.display()),
    )
}

fn check_owner(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(refuse(
            path,
            &format!(
                "owned by uid {}, not by this process (uid {me})",
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Makes `dir` a directory with at most `mode`'s permissions ([`DIR_MODE`], or 0o711 where
/// another user must traverse it to something of its own), creating it and any missing parents
/// (those with the default mode). Returns the mode it had when it was looser, so the caller
/// can say that it tightened it.
pub fn dir(dir: &Path, mode: u32) -> io::Result<Option<u32>> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        // The umask may have taken more; never less than asked for is needed, so done.
        Ok(()) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(refuse(dir, "not a directory"));
    }
    check_owner(dir, &meta)?;
    let had = meta.mode() & 0o7777;
    if had & 0o1002 != 0 {
        return Err(refuse(
            dir,
            "a shared directory (sticky or world-writable); use a directory of its own",
        ));
    }
    let want = had & mode & 0o777;
    if want == had {
        return Ok(None);
    }
    fs::set_permissions(dir, Permissions::from_mode(want))?;
    Ok(Some(had))
}

/// Opens `path` for reading and writing, created [`FILE_MODE`] if missing, never through a
/// symbolic link (`O_NOFOLLOW`); an existing file of another owner is refused, one with a looser
/// mode tightened. With `truncate`, existing content is discarded.
pub fn file(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(refuse(path, "not a regular file"));
    }
    check_owner(path, &meta)?;
    if meta.mode() & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A path in a fresh directory, not made yet; the directory goes when the guard drops.
    fn scratch() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("root");
        (tmp, d)
    }

    #[test]
    fn local_new_dirs_and_files_are_private() {
        let (_tmp, root) = scratch();
        let d = root.join("a/b");
        assert_eq!(dir(&d, DIR_MODE).unwrap(), None);
        assert_eq!(mode(&d), 0o700);
        let f = d.join("f");
        file(&f, true).unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn local_loose_ones_are_tightened_never_loosened() {
        let (_tmp, root) = scratch();
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(dir(&root, DIR_MODE).unwrap(), Some(0o755));
        assert_eq!(mode(&root), 0o700);
        // 0711 asked, 0700 there: stays 0700.
        assert_eq!(dir(&root, 0o711).unwrap(), None);
        assert_eq!(mode(&root), 0o700);
        let f = root.join("history.redb");
        fs::write(&f, b"kept").unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        file(&f, false).unwrap();
        assert_eq!((mode(&f), fs::read(&f).unwrap()), (0o600, b"kept".to_vec()));
    }

    #[test]
    fn local_symlinks_and_shared_dirs_are_refused() {
        let (_tmp, root) = scratch();
        dir(&root, DIR_MODE).unwrap();
        // A key planted as a link to somewhere the attacker can read is not written through.
        let target = root.join("readable");
        fs::write(&target, b"").unwrap();
        let link = root.join("replayer.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(file(&link, true).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"");
        let shared = root.join("tmp");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, Permissions::from_mode(0o1777)).unwrap();
        let e = dir(&shared, DIR_MODE).unwrap_err();
        assert!(e.to_string().contains("shared directory"), "{e}");
        assert_eq!(mode(&shared), 0o1777, "left as it was");
        assert!(dir(&root.join("readable"), DIR_MODE).is_err(), "a file");
    }
}
