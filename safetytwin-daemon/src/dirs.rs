//! Names that appear in a watched directory without any event: a file created empty.
//!
//! Opens are not traced, and an inode is dirtied at its creation before it has a name the probe
//! could walk, so `open(O_CREAT)` of a file that is then neither written nor given other
//! attributes (`: > /etc/flag`) reaches no probe. Its directory's modification time changes,
//! though. At each cut the daemon looks at the time of every directory of the model and lists
//! only those whose time moved (or that it has not listed yet); a name the model lacks, or a
//! name the model has that is gone, is read like any dirty path. A `stat` per directory and cut
//! (a few hundred under `/etc`), a listing per changed directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::MetadataExt,
    path::Path,
};

use safetytwin_model::{FileKind, HostModel, files_below};

/// Directories whose time is remembered at most; beyond, the rest are not looked at (and
/// counted), as a model that large is far from a config tree.
pub const MAX_DIRS: usize = 65_536;

/// A directory's identity and modification time, as last listed.
type Stamp = (u64, i64, i64);

/// The watched directories' times at their last listing.
#[derive(Debug, Default)]
pub struct DirTimes {
    stamps: BTreeMap<String, Stamp>,
    /// Directories not looked at because [`MAX_DIRS`] already were.
    pub skipped: u64,
}

impl DirTimes {
    /// The paths to read at this cut: entries that appeared in, or went from, a directory of
    /// `model` whose time moved since it was last listed. The time is taken before the listing,
    /// so a name added during it moves the time again for the next cut.
    pub fn changed_entries(&mut self, model: &HostModel) -> Vec<String> {
        let mut out = Vec::new();
        let mut alive = BTreeSet::new();
        let dirs = model
            .files
            .iter()
            .filter(|(_, s)| s.kind == FileKind::Directory);
        for (n, (dir, _)) in dirs.enumerate() {
            if n >= MAX_DIRS {
                self.skipped += 1;
                continue;
            }
            alive.insert(dir.as_str());
            let Ok(meta) = fs::symlink_metadata(dir) else {
                continue; // gone: its removal is an event of its own, and read then
            };
            if !meta.is_dir() {
                continue;
            }
            let stamp = (meta.ino(), meta.mtime(), meta.mtime_nsec());
            if self.stamps.get(dir.as_str()) == Some(&stamp) {
                continue;
            }
            self.stamps.insert(dir.clone(), stamp);
            let Ok(listing) = fs::read_dir(dir) else {
                continue;
            };
            let now: BTreeSet<String> = listing
                .filter_map(|e| Some(Path::new(dir).join(e.ok()?.file_name())))
                .filter_map(|p| p.to_str().map(str::to_owned))
                .collect();
            // The model's entries directly in `dir` (one `/` after it).
            let known: BTreeSet<&str> = files_below(&model.files, dir)
                .map(|(p, _)| p.as_str())
                .filter(|p| !p[dir.len() + 1..].contains('/'))
                .collect();
            out.extend(now.iter().filter(|p| !known.contains(p.as_str())).cloned());
            out.extend(
                known
                    .iter()
                    .filter(|p| !now.contains(**p))
                    .map(|p| p.to_string()),
            );
        }
        self.stamps.retain(|d, _| alive.contains(d.as_str()));
        out
    }
}

#[cfg(test)]
mod tests {
    use safetytwin_model::{Content, FileState};

    use super::*;

    fn state(kind: FileKind) -> FileState {
        FileState {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            sha256: None,
            content: Content::Text(String::new()),
            link_target: None,
        }
    }

    #[test]
    fn a_name_created_without_any_event_is_found_once() {
        let dir = std::env::temp_dir().join(format!("st-dirs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("known"), "").unwrap();
        let d = dir.to_str().unwrap().to_owned();
        let mut model = HostModel::default();
        model.files.insert(d.clone(), state(FileKind::Directory));
        model
            .files
            .insert(format!("{d}/sub"), state(FileKind::Directory));
        model
            .files
            .insert(format!("{d}/known"), state(FileKind::Regular));
        model
            .files
            .insert(format!("{d}/sub/gone"), state(FileKind::Regular));

        let mut times = DirTimes::default();
        // First listing: what the model lacks or holds wrongly.
        assert_eq!(times.changed_entries(&model), [format!("{d}/sub/gone")]);
        model.files.remove(&format!("{d}/sub/gone"));
        // Nothing moved: nothing listed.
        assert!(times.changed_entries(&model).is_empty());

        // An empty file, created with no write: the directory's time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::File::create(dir.join("sub/flag")).unwrap();
        assert_eq!(times.changed_entries(&model), [format!("{d}/sub/flag")]);
        model
            .files
            .insert(format!("{d}/sub/flag"), state(FileKind::Regular));
        assert!(times.changed_entries(&model).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
