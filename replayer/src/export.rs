//! `export`: a host's tracked files and units at one point of its history, as a directory tree
//! plus a manifest, so the state can be reproduced elsewhere (copied onto a machine, or fed to
//! a configuration tool). Files whose content never left the host (secrets, too large, binary)
//! are listed in the manifest with their hash but not written.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Component, Path, PathBuf},
};

use safetytwin_model::{Content, FileKind, HostModel};
use serde_json::{Value, json};

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exported {
    /// Regular files written with their content.
    pub files: usize,
    /// Directories created.
    pub dirs: usize,
    /// Symlinks created.
    pub links: usize,
    /// Paths listed in the manifest only.
    pub listed_only: usize,
}

/// Where `path` (absolute, from the model) goes below `root`; None if it would escape it.
fn below(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(rel))
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
    let root = dir.join("files");
    fs::create_dir_all(&root)?;
    let mut done = Exported::default();
    // Parents first; directory modes are set last so a read-only directory can be filled.
    let mut dirs = Vec::new();
    for (path, state) in &model.files {
        let Some(target) = below(&root, path) else {
            done.listed_only += 1;
            continue;
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        match (state.kind, &state.content) {
            (FileKind::Directory, _) => {
                fs::create_dir_all(&target)?;
                dirs.push((target, state.mode));
                done.dirs += 1;
            }
            (FileKind::Symlink, _) => {
                symlink(state.link_target.as_deref().unwrap_or_default(), &target)?;
                done.links += 1;
            }
            (FileKind::Regular, Content::Text(text)) => {
                fs::write(&target, text)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(state.mode))?;
                done.files += 1;
            }
            _ => done.listed_only += 1,
        }
    }
    for (d, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
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
               "listed_only": done.listed_only}),
    );
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&Value::Object(manifest))? + "\n",
    )?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use safetytwin_model::FileState;

    use super::*;

    fn state(kind: FileKind, mode: u32, content: Content, link: Option<&str>) -> FileState {
        FileState {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            sha256: Some("ab".repeat(32)),
            content,
            link_target: link.map(str::to_owned),
        }
    }

    #[test]
    fn writes_tree_and_manifest() {
        let dir = std::env::temp_dir().join(format!("st-export-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut m = HostModel::default();
        m.files.insert(
            "/etc/app".into(),
            state(FileKind::Directory, 0o750, Content::None, None),
        );
        m.files.insert(
            "/etc/app/a.conf".into(),
            state(
                FileKind::Regular,
                0o640,
                Content::Text("x=1\n".into()),
                None,
            ),
        );
        m.files.insert(
            "/etc/app/link".into(),
            state(FileKind::Symlink, 0o777, Content::None, Some("a.conf")),
        );
        m.files.insert(
            "/etc/shadow".into(),
            state(FileKind::Regular, 0o640, Content::Redacted, None),
        );
        m.files.insert(
            "/etc/../escape".into(),
            state(FileKind::Regular, 0o644, Content::Text("no".into()), None),
        );
        let done = export(&m, "h", 7, &dir).unwrap();
        assert_eq!(
            done,
            Exported {
                files: 1,
                dirs: 1,
                links: 1,
                listed_only: 2
            }
        );
        assert_eq!(
            fs::read_to_string(dir.join("files/etc/app/a.conf")).unwrap(),
            "x=1\n"
        );
        let mode = fs::metadata(dir.join("files/etc/app/a.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(
            fs::read_link(dir.join("files/etc/app/link")).unwrap(),
            Path::new("a.conf")
        );
        assert!(!dir.join("escape").exists() && !dir.join("files/escape").exists());
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
        fs::remove_dir_all(&dir).unwrap();
    }
}
