//! `export`: a host's tracked files and units at one point of its history, as a directory tree
//! plus a manifest, so the state can be reproduced elsewhere (copied onto a machine, or fed to
//! a configuration tool). Files whose content never left the host (secrets, too large, binary)
//! are listed in the manifest with their hash but not written.
//!
//! # Confinement
//!
//! The history is input from a monitored host, so nothing it holds may make the export write
//! outside its directory. Every file is created through directory file descriptors opened one
//! component at a time with `O_NOFOLLOW | O_DIRECTORY` below `DIR/files`, so no symlink (one the
//! history defines, or one someone plants in `DIR` meanwhile) is ever followed; files are
//! created with `O_CREAT | O_EXCL | O_NOFOLLOW` and their mode set with `fchmod` on that
//! descriptor, never through a path. Symlinks are created last, when nothing is written below
//! them any more. Paths that are not normalized are refused (`safetytwin_model::paths`). An
//! entry that collides with another (a file below what the history says is a link or a file)
//! is refused and listed in the manifest with the reason. Modes keep their permission bits
//! only: a setuid, setgid or sticky bit is not reproduced in an operator's directory (the
//! exporter may run as root; a setuid copy is a privilege waiting to be used), and the manifest
//! keeps the full mode.

use std::{fs, io::Write, os::fd::OwnedFd, path::Path};

use rustix::{
    fs::{Mode, OFlags, fchmod, mkdirat, openat, symlinkat},
    io::Errno,
};
use safetytwin_model::{Content, FileKind, HostModel, paths};
use serde_json::{Value, json};

/// The mode bits an export reproduces: permissions only (see the module doc).
const PERMISSION_BITS: u32 = 0o777;

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    /// Regular files written with their content.
    pub files: usize,
    /// Directories created.
    pub dirs: usize,
    /// Symlinks created.
    pub links: usize,
    /// Paths listed in the manifest only (content not carried, or not a file).
    pub listed_only: usize,
    /// Paths refused (not normalized, or colliding with another entry); in the manifest, with
    /// the reason.
    pub refused: usize,
}

/// Directory fds below the export's `files/`, opened without ever following a link.
struct Tree {
    root: OwnedFd,
}

/// Opens directory `name` in `parent`, refusing a symlink (`ELOOP`) or a non-directory
/// (`ENOTDIR`).
fn open_dir(parent: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Like [`open_dir`], creating the directory first when it is missing.
fn make_dir(parent: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    match mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => open_dir(parent, name),
        Err(e) => Err(e),
    }
}

impl Tree {
    /// The directory holding checked `path`, and the last component's name; with `create`,
    /// missing directories on the way are made.
    fn parent<'p>(&self, path: &'p str, create: bool) -> rustix::io::Result<(OwnedFd, &'p str)> {
        let mut names: Vec<&str> = paths::components(path).collect();
        let name = names.pop().ok_or(Errno::INVAL)?;
        let mut dir = self.root.try_clone().map_err(|_| Errno::BADF)?;
        for n in names {
            dir = if create {
                make_dir(&dir, n)?
            } else {
                open_dir(&dir, n)?
            };
        }
        Ok((dir, name))
    }

    fn directory(&self, path: &str) -> rustix::io::Result<()> {
        let (parent, name) = self.parent(path, true)?;
        make_dir(&parent, name).map(drop)
    }

    fn regular(&self, path: &str, text: &str, mode: u32) -> rustix::io::Result<()> {
        let (parent, name) = self.parent(path, true)?;
        let fd = openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        fchmod(&fd, Mode::from_raw_mode(mode & PERMISSION_BITS))?;
        fs::File::from(fd)
            .write_all(text.as_bytes())
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
    }

    fn symlink(&self, path: &str, target: &str) -> rustix::io::Result<()> {
        let (parent, name) = self.parent(path, true)?;
        symlinkat(target, &parent, name)
    }

    /// Sets a directory's mode through a descriptor of the directory itself.
    fn chmod_dir(&self, path: &str, mode: u32) -> rustix::io::Result<()> {
        let (parent, name) = self.parent(path, false)?;
        fchmod(
            open_dir(&parent, name)?,
            Mode::from_raw_mode(mode & PERMISSION_BITS),
        )
    }
}

/// Whether `e` means the entry collides with what is already in the tree (a link or a file
/// where a directory should be, or the name taken), rather than a failing disk.
fn collision(e: Errno) -> bool {
    matches!(e, Errno::LOOP | Errno::NOTDIR | Errno::EXIST | Errno::ISDIR)
}

/// Writes `model` (of `host` at `seq`) into `dir`: `files/` mirrors the paths, `manifest.json`
/// describes everything. `dir` must not exist or be empty.
pub fn export(model: &HostModel, host: &str, seq: u64, dir: &Path) -> std::io::Result<Exported> {
    if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        return Err(std::io::Error::other(format!(
            "{} is not empty",
            dir.display()
        )));
    }
    fs::create_dir_all(dir)?;
    write(model, host, seq, dir)
}

/// [`export`] into `dir`, whatever it already holds (tests plant links in it).
fn write(model: &HostModel, host: &str, seq: u64, dir: &Path) -> std::io::Result<Exported> {
    // `dir` itself is the operator's to choose; everything below it is ours and never followed.
    let top: OwnedFd = fs::File::open(dir)?.into();
    let tree = Tree {
        root: make_dir(&top, "files")?,
    };
    let mut done = Exported::default();
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut refuse = |path: &str, why: String, done: &mut Exported| {
        tracing::warn!(path = %path.escape_debug(), "not exported: {why}");
        done.refused += 1;
        refused.push((path.to_owned(), why));
    };
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    // The model is ordered by path, so a directory comes before what it holds.
    for (path, state) in &model.files {
        if let Err(e) = paths::check(path) {
            refuse(path, e.to_string(), &mut done);
            continue;
        }
        if path == "/" {
            // The root is `files/` itself.
            done.listed_only += 1;
            continue;
        }
        let written = match (state.kind, &state.content) {
            (FileKind::Directory, _) => tree.directory(path).map(|()| {
                dirs.push((path, state.mode));
                done.dirs += 1;
            }),
            (FileKind::Symlink, _) => {
                links.push((path, state.link_target.as_deref().unwrap_or_default()));
                Ok(())
            }
            (FileKind::Regular, Content::Text(text)) => tree
                .regular(path, text, state.mode)
                .map(|()| done.files += 1),
            _ => {
                done.listed_only += 1;
                Ok(())
            }
        };
        match written {
            Ok(()) => {}
            Err(e) if collision(e) => refuse(
                path,
                format!("collides with another entry ({e})"),
                &mut done,
            ),
            Err(e) => return Err(e.into()),
        }
    }
    // Links last: nothing is written below a path once it is a link.
    for (path, target) in links {
        if let Err(e) = paths::check_link_target(target) {
            refuse(path, format!("link target: {e}"), &mut done);
            continue;
        }
        match tree.symlink(path, target) {
            Ok(()) => done.links += 1,
            Err(e) if collision(e) => refuse(
                path,
                format!("collides with another entry ({e})"),
                &mut done,
            ),
            Err(e) => return Err(e.into()),
        }
    }
    // Children before parents, so a read-only directory can still be filled and changed.
    for (path, mode) in dirs.into_iter().rev() {
        tree.chmod_dir(path, mode)?;
    }
    let mut manifest = safetytwin_proto::json::model(model);
    // The content is in files/; the manifest keeps the metadata and hashes.
    if let Some(Value::Array(files)) = manifest.get_mut("files") {
        for f in files {
            if let Some(o) = f.as_object_mut() {
                o.remove("content");
                o.remove("op");
            }
        }
    }
    manifest.insert("host".into(), host.into());
    manifest.insert("seq".into(), seq.into());
    manifest.insert(
        "exported".into(),
        json!({"files": done.files, "dirs": done.dirs, "links": done.links,
               "listed_only": done.listed_only, "refused": done.refused}),
    );
    manifest.insert(
        "refused".into(),
        refused
            .iter()
            .map(|(path, why)| json!({"path": path, "why": why}))
            .collect(),
    );
    let fd = openat(
        &top,
        "manifest.json",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    fs::File::from(fd)
        .write_all((serde_json::to_string_pretty(&Value::Object(manifest))? + "\n").as_bytes())?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        os::unix::fs::{PermissionsExt, symlink},
        path::PathBuf,
    };

    use safetytwin_model::{FileState, fixtures};

    use super::*;

    /// The modes are what these tests are about: each file names its own.
    fn text(mode: u32, s: &str) -> FileState {
        FileState {
            mode,
            ..fixtures::text(s)
        }
    }

    /// A fresh scratch directory: `export/` (the export's DIR) and `outside/` holding a victim
    /// file and directory.
    struct Scratch(tempfile::TempDir);

    impl Scratch {
        fn new() -> Scratch {
            let dir = tempfile::tempdir().unwrap();
            let s = dir.path();
            fs::create_dir_all(s.join("outside/dir")).unwrap();
            fs::write(s.join("outside/victim"), "original\n").unwrap();
            fs::set_permissions(s.join("outside/victim"), fs::Permissions::from_mode(0o644))
                .unwrap();
            Scratch(dir)
        }
        fn export(&self) -> PathBuf {
            self.0.path().join("export")
        }
        fn outside(&self) -> PathBuf {
            self.0.path().join("outside")
        }
        /// Every path below `outside/` with its mode and content.
        fn outside_state(&self) -> BTreeMap<PathBuf, (u32, Option<String>)> {
            fn walk(d: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<String>)>) {
                for e in fs::read_dir(d).unwrap() {
                    let p = e.unwrap().path();
                    let m = fs::symlink_metadata(&p).unwrap();
                    out.insert(
                        p.clone(),
                        (m.permissions().mode(), fs::read_to_string(&p).ok()),
                    );
                    if m.is_dir() {
                        walk(&p, out);
                    }
                }
            }
            let mut out = BTreeMap::new();
            walk(&self.outside(), &mut out);
            out
        }
    }

    fn model(files: Vec<(&str, FileState)>) -> HostModel {
        let mut m = HostModel::default();
        for (p, s) in files {
            m.files.insert(p.into(), s);
        }
        m
    }

    #[test]
    fn writes_tree_and_manifest() {
        let scratch = Scratch::new();
        let dir = scratch.export();
        let m = model(vec![
            ("/etc/app", fixtures::dir(0o750)),
            ("/etc/app/a.conf", text(0o640, "x=1\n")),
            ("/etc/app/link", fixtures::symlink("a.conf")),
            (
                "/etc/shadow",
                FileState {
                    content: Content::Redacted,
                    ..text(0o640, "")
                },
            ),
        ]);
        let done = export(&m, "h", 7, &dir).unwrap();
        assert_eq!(
            done,
            Exported {
                files: 1,
                dirs: 1,
                links: 1,
                listed_only: 1,
                refused: 0,
            }
        );
        assert_eq!(
            fs::read_to_string(dir.join("files/etc/app/a.conf")).unwrap(),
            "x=1\n"
        );
        let mode = |p: &str| {
            fs::symlink_metadata(dir.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("files/etc/app/a.conf"), 0o640);
        assert_eq!(mode("files/etc/app"), 0o750);
        assert_eq!(
            fs::read_link(dir.join("files/etc/app/link")).unwrap(),
            Path::new("a.conf")
        );
        let manifest: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["seq"], 7);
        let shadow = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/etc/shadow")
            .unwrap();
        assert_eq!(shadow["content_state"], "redacted");
        assert!(shadow.get("content").is_none());
        assert!(
            export(&m, "h", 7, &dir).is_err(),
            "refuses a non-empty directory"
        );
    }

    /// The review's attack: the history makes `/etc/x` a link out of the export, then puts a
    /// setuid file, a directory and a file below it.
    #[test]
    fn links_in_the_history_lead_nowhere_outside() {
        let scratch = Scratch::new();
        let before = scratch.outside_state();
        let out = scratch.outside();
        let victim = out.join("victim");
        let m = model(vec![
            ("/etc/x", fixtures::symlink(out.to_str().unwrap())),
            ("/etc/x/evil", text(0o4755, "#!/bin/sh\n")),
            ("/etc/x/victim", text(0o4777, "overwritten\n")),
            (
                "/etc/d",
                fixtures::symlink(out.join("dir").to_str().unwrap()),
            ),
            ("/etc/d/sub", fixtures::dir(0o7777)),
            ("/etc/d/sub/f", text(0o644, "f\n")),
            ("/etc/v", fixtures::symlink(victim.to_str().unwrap())),
            ("/etc/up", fixtures::symlink("../../../../../../../..")),
        ]);
        let done = export(&m, "h", 1, &scratch.export()).unwrap();
        assert_eq!(
            scratch.outside_state(),
            before,
            "something outside DIR changed"
        );
        // Files and directories went in first, as real directories; the links that would
        // shadow them are refused, the others written as they are, never followed.
        let files = scratch.export().join("files/etc");
        assert!(fs::symlink_metadata(files.join("x")).unwrap().is_dir());
        assert_eq!(
            fs::symlink_metadata(files.join("x/evil"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755,
            "no setuid bit in an export"
        );
        assert_eq!(
            fs::symlink_metadata(files.join("d/sub"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o777
        );
        assert_eq!(fs::read_link(files.join("v")).unwrap(), victim);
        assert_eq!(
            (done.files, done.dirs, done.links, done.refused),
            (3, 1, 2, 2)
        );
        let manifest: Value = serde_json::from_str(
            &fs::read_to_string(scratch.export().join("manifest.json")).unwrap(),
        )
        .unwrap();
        let refused: Vec<&str> = manifest["refused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(refused, ["/etc/d", "/etc/x"]);
    }

    /// Links already in DIR (planted while an export runs) are not followed either, for
    /// writing, creating directories or changing modes.
    #[test]
    fn links_planted_in_dir_are_not_followed() {
        let scratch = Scratch::new();
        let before = scratch.outside_state();
        let out = scratch.outside();
        let files = scratch.export().join("files");
        fs::create_dir_all(files.join("srv")).unwrap();
        symlink(&out, files.join("etc")).unwrap();
        symlink(out.join("victim"), files.join("srv/victim")).unwrap();
        symlink(out.join("dir"), files.join("srv/dir")).unwrap();
        let m = model(vec![
            ("/etc/passwd", text(0o644, "root::0:0::/:/bin/sh\n")),
            ("/srv/victim", text(0o4777, "overwritten\n")),
            ("/srv/dir", fixtures::dir(0o7777)),
        ]);
        let done = write(&m, "h", 1, &scratch.export()).unwrap();
        assert_eq!(
            scratch.outside_state(),
            before,
            "something outside DIR changed"
        );
        assert_eq!((done.files, done.dirs, done.refused), (0, 0, 3));
    }

    #[test]
    fn paths_that_are_not_normalized_are_refused() {
        let scratch = Scratch::new();
        let m = model(vec![
            ("/etc/../escape", text(0o644, "no\n")),
            ("/etc/./x", text(0o644, "no\n")),
            ("/etc//y", text(0o644, "no\n")),
            ("relative", text(0o644, "no\n")),
            ("/etc/ctl\u{1b}]", text(0o644, "no\n")),
            ("/etc/bad-link", fixtures::symlink("a\nb")),
        ]);
        let done = export(&m, "h", 1, &scratch.export()).unwrap();
        assert_eq!((done.files, done.refused), (0, 6));
        assert!(!scratch.0.path().join("escape").exists());
        assert!(!scratch.export().join("escape").exists());
        assert!(!scratch.export().join("files/escape").exists());
        assert!(!scratch.export().join("files/etc/x").exists());
    }
}
