//! Reading files at batch cut: metadata, SHA-256 and, for text files within the cap that are
//! not secrets, the content. This is the daemon's expensive per-batch work, done once per dirty
//! path rather than per write.
//!
//! A file's content stays on the host when its name is a secret's or a copy of one
//! ([`safetytwin_model::globs::secret_matches`]), when its bytes hold one
//! ([`safetytwin_model::secrets::find`]), or when it has more than one hard link (another name
//! of the same bytes may be a secret this daemon cannot see). A redacted file's hash is keyed
//! ([`FingerprintKey`]), so it still shows that the file changed but cannot confirm a guess.

use std::{
    ffi::CString,
    fs,
    io::Read,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{MetadataExt, PermissionsExt},
        },
    },
    path::Path,
};

use safetytwin_model::{Change, Content, FileKind, FileState, HostModel};
use sha2::{Digest, Sha256};

/// Paths whose content never leaves the host, by default.
pub const DEFAULT_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh/ssh_host_*_key",
    "*.key",
    "/etc/ssl/private/**",
];

/// Default cap on the content carried for one file.
pub const DEFAULT_MAX_CONTENT: u64 = 256 * 1024;

/// The key of the fingerprint a redacted file carries instead of its SHA-256: drawn from the
/// kernel at start, never printed, never sent. A plain SHA-256 of a short secret (a PSK, a
/// password file of a few lines) would let whoever reads the batches test guesses offline; an
/// HMAC under this key only says "same bytes as before" within this daemon's run.
#[derive(Clone)]
pub struct FingerprintKey([u8; 32]);

impl FingerprintKey {
    /// A fresh key from getrandom(2).
    pub fn random() -> FingerprintKey {
        let mut key = [0u8; 32];
        let mut filled = 0;
        while filled < key.len() {
            // SAFETY: writes at most `len - filled` bytes into `key[filled..]`.
            let n = unsafe {
                libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0)
            };
            if n > 0 {
                filled += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // Without the kernel's randomness there is no key that could keep the oracle
                // shut, and the daemon cannot run safely.
                panic!("getrandom failed: {}", std::io::Error::last_os_error());
            }
        }
        FingerprintKey(key)
    }

    /// The key kept in `path` (created there, mode 0600, on first use), so fingerprints stay
    /// the same across restarts and a restart's resync does not show every secret as changed.
    /// A file that is not a regular 32-byte file owned by this user and closed to others is
    /// refused rather than trusted or replaced.
    pub fn load_or_create(path: &Path) -> Result<FingerprintKey, KeyError> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let err = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(mut file) => {
                let meta = file.metadata().map_err(err)?;
                // SAFETY: geteuid has no preconditions.
                let me = unsafe { libc::geteuid() };
                let why = if !meta.is_file() {
                    Some("not a regular file")
                } else if meta.uid() != me || meta.mode() & 0o077 != 0 {
                    Some("readable or owned by someone else (want mode 0600, our owner)")
                } else if meta.len() != 32 {
                    Some("not 32 bytes")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(KeyError::Unsafe {
                        path: path.to_owned(),
                        why,
                    });
                }
                let mut key = [0u8; 32];
                file.read_exact(&mut key).map_err(err)?;
                Ok(FingerprintKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = FingerprintKey::random();
                let mut tmp = path.as_os_str().to_owned();
                tmp.push(".tmp");
                let tmp = std::path::PathBuf::from(tmp);
                match fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                    _ => {}
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&tmp)
                    .map_err(err)?;
                file.write_all(&key.0).map_err(err)?;
                file.sync_all().map_err(err)?;
                fs::rename(&tmp, path).map_err(err)?;
                Ok(key)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// HMAC-SHA256 (RFC 2104) of `digest` under this key, as lower-case hex.
    fn fingerprint(&self, digest: &[u8]) -> String {
        let (mut inner, mut outer) = ([0x36u8; 64], [0x5cu8; 64]);
        for (i, k) in self.0.iter().enumerate() {
            inner[i] ^= k;
            outer[i] ^= k;
        }
        let inner = Sha256::new()
            .chain_update(inner)
            .chain_update(digest)
            .finalize();
        hex(&Sha256::new()
            .chain_update(outer)
            .chain_update(inner)
            .finalize())
    }
}

/// Why the fingerprint key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("fingerprint key {}: {source}", path.display())]
    Io {
        /// The key file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but cannot be trusted to be ours alone.
    #[error("fingerprint key {}: {why}; remove it to make a new one", path.display())]
    Unsafe {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

/// How files are observed.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    /// Largest file whose content is carried; larger ones carry their hash only.
    pub max_content: u64,
    /// Glob patterns of secret files: `*` matches within one path component, a trailing `/**`
    /// everything below a directory, and a pattern without `/` matches the file name.
    pub secrets: Vec<String>,
    /// Directory levels scanned below a dirty or watched directory.
    pub max_depth: usize,
    /// Keys the hash of redacted files.
    pub fingerprint_key: FingerprintKey,
    /// The watched trees: a file below one is opened beneath it with no symlink followed on
    /// the way, so a directory swapped for a link out of the tree is not read through.
    pub roots: Vec<String>,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            max_content: DEFAULT_MAX_CONTENT,
            secrets: DEFAULT_SECRETS.iter().map(|s| s.to_string()).collect(),
            max_depth: 16,
            fingerprint_key: FingerprintKey::random(),
            roots: Vec::new(),
        }
    }
}

impl ObserveConfig {
    /// Whether `path` is a secret by name (or the name of a copy of one).
    pub fn is_secret(&self, path: &str) -> bool {
        safetytwin_model::globs::any_secret_matches(&self.secrets, path)
    }

    /// The state of `path` now (`None` when it does not exist or cannot be read).
    pub fn observe(&self, path: &Path) -> Option<FileState> {
        let meta = fs::symlink_metadata(path).ok()?;
        if meta.is_file() {
            return self.observe_regular(path);
        }
        let ft = meta.file_type();
        let mut state = FileState {
            kind: if ft.is_file() {
                FileKind::Regular
            } else if ft.is_dir() {
                FileKind::Directory
            } else if ft.is_symlink() {
                FileKind::Symlink
            } else {
                FileKind::Other
            },
            mode: meta.permissions().mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            sha256: None,
            content: Content::None,
            link_target: None,
        };
        match state.kind {
            FileKind::Symlink => {
                state.link_target = fs::read_link(path)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned());
            }
            FileKind::Regular | FileKind::Directory | FileKind::Other => {}
        }
        Some(state)
    }

    /// A regular file, read through one descriptor opened without following a symlink, so the
    /// metadata, the hash and the content are all of the same file, and a path swapped for a
    /// link to a secret between `lstat` and `open` is not read.
    fn observe_regular(&self, path: &Path) -> Option<FileState> {
        let mut file = fs::File::from(self.open(path)?);
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let (digest, bytes) = hash_file(&mut file, self.max_content)?;
        // A second name may be a secret's (`ln /etc/shadow /etc/x`), and the other names of
        // an inode cannot be listed; links to config files are rare enough to give up theirs.
        let secret = self.is_secret(&path.to_string_lossy())
            || meta.nlink() > 1
            || bytes
                .as_deref()
                .is_some_and(|b| safetytwin_model::secrets::find(b).is_some());
        let (sha256, content) = if secret {
            (self.fingerprint_key.fingerprint(&digest), Content::Redacted)
        } else {
            let content = match bytes {
                None => Content::TooLarge,
                Some(b) => match String::from_utf8(b) {
                    Ok(text) => Content::Text(text),
                    Err(_) => Content::Binary,
                },
            };
            (hex(&digest), content)
        };
        Some(FileState {
            kind: FileKind::Regular,
            mode: meta.permissions().mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            sha256: Some(sha256),
            content,
            link_target: None,
        })
    }

    /// Opens regular file `path` for reading: beneath the deepest watched tree that holds it
    /// (openat2 with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), else, or where openat2 is
    /// missing, without following a symlink in its last component.
    fn open(&self, path: &Path) -> Option<OwnedFd> {
        let text = path.to_str()?;
        let beneath = self
            .roots
            .iter()
            .filter_map(|r| {
                let r = r.trim_end_matches('/');
                Some((r, text.strip_prefix(r)?.strip_prefix('/')?))
            })
            .max_by_key(|(r, _)| r.len());
        if let Some((root, rel)) = beneath {
            let root = if root.is_empty() { "/" } else { root };
            match open_beneath(Path::new(root), Path::new(rel)) {
                // No openat2: before 5.6, or refused by a seccomp filter that predates it.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EPERM | libc::E2BIG)
                    ) => {}
                result => return result.ok(),
            }
        }
        open_no_follow(path)
    }

    /// Observations of `path` and, when it is (or was, per `model`) a directory, of everything
    /// below it: what exists now and what the model holds that may be gone.
    pub fn observe_tree(&self, path: &str, model: &HostModel, out: &mut Vec<Change>) {
        let known_below: Vec<String> = safetytwin_model::files_below(&model.files, path)
            .map(|(p, _)| p.clone())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        self.scan(Path::new(path), 0, &mut |p, state| {
            seen.insert(p.to_owned());
            out.push(Change::FileObserved {
                path: p.to_owned(),
                state: Some(state),
            });
        });
        if !seen.contains(path) {
            out.push(Change::FileObserved {
                path: path.to_owned(),
                state: None,
            });
        }
        for p in known_below.into_iter().filter(|p| !seen.contains(p)) {
            out.push(Change::FileObserved {
                path: p,
                state: None,
            });
        }
    }

    /// Calls `f` for `path` and, if it is a directory, everything below it (no symlinks
    /// followed, at most `max_depth` levels).
    pub fn scan(&self, path: &Path, depth: usize, f: &mut dyn FnMut(&str, FileState)) {
        let Some(state) = self.observe(path) else {
            return;
        };
        let is_dir = state.kind == FileKind::Directory;
        f(&path.to_string_lossy(), state);
        if !is_dir || depth >= self.max_depth {
            return;
        }
        let Ok(entries) = fs::read_dir(path) else {
            return;
        };
        let mut children: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        children.sort();
        for child in children {
            self.scan(&child, depth + 1, f);
        }
    }
}

/// Opens `path` for reading without following a symlink in its last component (a path swapped
/// for a link to a secret is refused with `ELOOP`), without blocking on a fifo or taking a
/// terminal. Directories above it are followed as the kernel reported them: a watched tree may
/// itself sit below a symlink (`/lib` on merged-/usr systems).
fn open_no_follow(path: &Path) -> Option<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c_path.as_ptr(), READ_FLAGS) };
    // SAFETY: a descriptor we just opened and own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

const READ_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// Opens `rel` beneath directory `root` (which may itself be reached through symlinks: the
/// operator named it), following no symlink below it and never leaving it.
fn open_beneath(root: &Path, rel: &Path) -> std::io::Result<OwnedFd> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (c_root, c_rel) = (c(root)?, c(rel)?);
    // SAFETY: a NUL-terminated path.
    let dir = unsafe {
        libc::open(
            c_root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    // SAFETY: all-zero is a valid open_how (no mode, no resolve flags).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = READ_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid dirfd, a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just opened for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, and its bytes when it has at most `cap` of them.
fn hash_file(file: &mut fs::File, cap: u64) -> Option<([u8; 32], Option<Vec<u8>>)> {
    let mut hasher = Sha256::new();
    let mut kept = Some(Vec::new());
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(k) = &mut kept {
            if (k.len() + n) as u64 > cap {
                kept = None;
            } else {
                k.extend_from_slice(&buf[..n]);
            }
        }
    }
    Some((hasher.finalize().into(), kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_secrets() {
        let cfg = ObserveConfig::default();
        for secret in [
            "/etc/shadow",
            "/etc/gshadow-",
            "/etc/.shadow.swp",
            "/etc/shadow.dpkg-old",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key~",
            "/etc/nginx/tls/site.key",
            "/etc/nginx/tls/Server.KEY",
            "/etc/ssl/private/ca.pem",
            "/etc/ssl/private/deep/x",
        ] {
            assert!(cfg.is_secret(secret), "{secret}");
        }
        for open in [
            "/etc/shadow.d/x",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/ssh/sshd_config",
            "/etc/ssl/private",
            "/etc/keys.conf",
        ] {
            assert!(!cfg.is_secret(open), "{open}");
        }
    }

    #[test]
    fn observes_text_binary_large_secret_and_links() {
        // The test removes the tree itself, so it sits below the temporary directory.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tree");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a.conf"), "hello\n").unwrap();
        fs::write(dir.join("bin"), [0xff, 0xfe, 0]).unwrap();
        fs::write(dir.join("big"), vec![b'x'; 10]).unwrap();
        fs::write(dir.join("sub/site.key"), "SECRET").unwrap();
        std::os::unix::fs::symlink("a.conf", dir.join("link")).unwrap();
        let cfg = ObserveConfig {
            max_content: 8,
            ..ObserveConfig::default()
        };
        let a = cfg.observe(&dir.join("a.conf")).unwrap();
        assert_eq!(a.content, Content::Text("hello\n".into()));
        assert_eq!(
            a.sha256.as_deref(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert_eq!(
            cfg.observe(&dir.join("bin")).unwrap().content,
            Content::Binary
        );
        assert_eq!(
            cfg.observe(&dir.join("big")).unwrap().content,
            Content::TooLarge
        );
        let key = cfg.observe(&dir.join("sub/site.key")).unwrap();
        assert_eq!(key.content, Content::Redacted);
        assert_eq!(key.sha256.as_deref().map(str::len), Some(64));
        let link = cfg.observe(&dir.join("link")).unwrap();
        assert_eq!(
            (link.kind, link.link_target.as_deref()),
            (FileKind::Symlink, Some("a.conf"))
        );
        assert!(cfg.observe(&dir.join("missing")).is_none());

        // A removed directory: everything the model held below it is observed as gone.
        let mut model = HostModel::default();
        let mut w = safetytwin_model::Window::default();
        let mut seed = Vec::new();
        cfg.observe_tree(&dir.to_string_lossy(), &model, &mut seed);
        for c in &seed {
            model.apply(c, &mut w);
        }
        assert_eq!(model.files.len(), 7);
        fs::remove_dir_all(&dir).unwrap();
        let mut gone = Vec::new();
        cfg.observe_tree(&dir.to_string_lossy(), &model, &mut gone);
        assert_eq!(gone.len(), 7);
        assert!(
            gone.iter()
                .all(|c| matches!(c, Change::FileObserved { state: None, .. }))
        );
    }

    const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn secrets_by_content_and_hard_links_are_redacted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let cfg = ObserveConfig::default();
        fs::write(dir.join("notes.txt"), PEM).unwrap();
        fs::write(dir.join("plain.txt"), "nothing here\n").unwrap();
        fs::write(dir.join("other"), "TOP-SECRET\n").unwrap();
        fs::hard_link(dir.join("other"), dir.join("linked")).unwrap();
        for name in ["notes.txt", "other", "linked"] {
            assert_eq!(
                cfg.observe(&dir.join(name)).unwrap().content,
                Content::Redacted,
                "{name}"
            );
        }
        assert_eq!(
            cfg.observe(&dir.join("plain.txt")).unwrap().content,
            Content::Text("nothing here\n".into())
        );
        // Content past the cap is neither scanned nor carried.
        let small = ObserveConfig {
            max_content: 8,
            ..cfg.clone()
        };
        assert_eq!(
            small.observe(&dir.join("notes.txt")).unwrap().content,
            Content::TooLarge
        );
    }

    #[test]
    fn a_redacted_file_carries_a_keyed_hash_not_its_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("a.key"), "hunter2\n").unwrap();
        fs::write(dir.join("b.key"), "hunter2\n").unwrap();
        fs::write(dir.join("c.key"), "hunter3\n").unwrap();
        let cfg = ObserveConfig::default();
        let sha = |cfg: &ObserveConfig, name: &str| cfg.observe(&dir.join(name)).unwrap().sha256;
        let plain = hex(&Sha256::digest(b"hunter2\n"));
        let a = sha(&cfg, "a.key").unwrap();
        // A guess cannot be checked: the plain SHA-256 of the guess is not what is sent.
        assert_ne!(a, plain);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // Within one run it still tells same bytes from changed bytes.
        assert_eq!(sha(&cfg, "b.key").unwrap(), a);
        assert_ne!(sha(&cfg, "c.key").unwrap(), a);
        // Another key (another daemon run) gives another fingerprint.
        assert_ne!(sha(&ObserveConfig::default(), "a.key").unwrap(), a);
        assert!(!format!("{cfg:?}").contains(&format!("{:?}", cfg.fingerprint_key.0)));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 uses a 4-byte key; ours is 32 bytes, zero-padded like HMAC's.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            FingerprintKey(key).fingerprint(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_path_swapped_for_a_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("secret"), "TOP-SECRET\n").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("x.conf")).unwrap();
        // What observe_regular does after an lstat that saw a regular file.
        assert!(open_no_follow(&dir.join("x.conf")).is_none());
        assert!(
            ObserveConfig::default()
                .observe_regular(&dir.join("x.conf"))
                .is_none()
        );
    }

    #[test]
    fn the_key_file_is_made_once_kept_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("fingerprint.key");
        let made = FingerprintKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o777), (32, 0o600));
        // The same key after a restart: the same fingerprints.
        assert_eq!(FingerprintKey::load_or_create(&path).unwrap().0, made.0);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            FingerprintKey::load_or_create(&path),
            Err(KeyError::Unsafe { .. })
        ));
        // A symlink planted in its place is not followed (nor replaced).
        fs::remove_file(&path).unwrap();
        fs::write(dir.join("elsewhere"), [7u8; 32]).unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).unwrap();
        assert!(FingerprintKey::load_or_create(&path).is_err());
        fs::remove_file(&path).unwrap();
        fs::write(&path, [1u8; 31]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            FingerprintKey::load_or_create(&path),
            Err(KeyError::Unsafe {
                why: "not 32 bytes",
                ..
            })
        ));
    }

    #[test]
    fn a_directory_swapped_for_a_link_out_of_the_tree_is_not_read_through() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("tree/real")).unwrap();
        fs::create_dir_all(dir.join("outside")).unwrap();
        fs::write(dir.join("outside/id_rsa"), "TOP-SECRET\n").unwrap();
        fs::write(dir.join("tree/real/a.conf"), "fine\n").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("tree/d")).unwrap();
        // The tree itself may be reached through a symlink, as /lib is on merged-/usr hosts.
        std::os::unix::fs::symlink(dir.join("tree"), dir.join("alias")).unwrap();
        let through = dir.join("tree/d/id_rsa");
        let cfg = ObserveConfig {
            roots: vec![
                dir.join("tree").display().to_string(),
                dir.join("alias").display().to_string(),
            ],
            ..ObserveConfig::default()
        };
        assert!(cfg.observe(&through).is_none());
        assert!(cfg.observe(&dir.join("alias/d/id_rsa")).is_none());
        assert_eq!(
            cfg.observe(&dir.join("alias/real/a.conf")).unwrap().content,
            Content::Text("fine\n".into())
        );
        // Without the trees only the last component is protected: what `roots` is for.
        let bare = ObserveConfig::default();
        assert!(bare.observe(&through).is_some());
    }
}
