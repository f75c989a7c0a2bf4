//! Reading files at batch cut: metadata, SHA-256 and, for text files within the cap that are
//! not secrets, the content. This is the daemon's expensive per-batch work, done once per dirty
//! path rather than per write.

use std::{
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use safetytwin_model::{Change, Content, FileKind, FileState, HostModel};
use sha2::{Digest, Sha256};

/// Paths whose content never leaves the host, by default.
pub const DEFAULT_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/ssh/ssh_host_*_key",
    "*.key",
    "/etc/ssl/private/**",
];

/// Default cap on the content carried for one file.
pub const DEFAULT_MAX_CONTENT: u64 = 256 * 1024;

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
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            max_content: DEFAULT_MAX_CONTENT,
            secrets: DEFAULT_SECRETS.iter().map(|s| s.to_string()).collect(),
            max_depth: 16,
        }
    }
}

impl ObserveConfig {
    /// Whether `path` is a secret.
    pub fn is_secret(&self, path: &str) -> bool {
        safetytwin_model::globs::any_matches(&self.secrets, path)
    }

    /// The state of `path` now (`None` when it does not exist or cannot be read).
    pub fn observe(&self, path: &Path) -> Option<FileState> {
        let meta = fs::symlink_metadata(path).ok()?;
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
            FileKind::Regular => {
                let (sha, bytes) = hash_file(path, self.max_content)?;
                state.sha256 = Some(sha);
                state.content = if self.is_secret(&path.to_string_lossy()) {
                    Content::Redacted
                } else {
                    match bytes {
                        None => Content::TooLarge,
                        Some(b) => match String::from_utf8(b) {
                            Ok(text) => Content::Text(text),
                            Err(_) => Content::Binary,
                        },
                    }
                };
            }
            FileKind::Directory | FileKind::Other => {}
        }
        Some(state)
    }

    /// Observations of `path` and, when it is (or was, per `model`) a directory, of everything
    /// below it: what exists now and what the model holds that may be gone.
    pub fn observe_tree(&self, path: &str, model: &HostModel, out: &mut Vec<Change>) {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let known_below: Vec<String> = model
            .files
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
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

/// SHA-256 of a file, and its bytes when it has at most `cap` of them.
fn hash_file(path: &Path, cap: u64) -> Option<(String, Option<Vec<u8>>)> {
    let mut file = fs::File::open(path).ok()?;
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
    let sha = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((sha, kept))
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
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/nginx/tls/site.key",
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
        let dir = std::env::temp_dir().join(format!("st-observe-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
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
        assert!(key.sha256.is_some());
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
}
