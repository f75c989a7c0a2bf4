//! Files under the watched trees that changed: read at two cuts, and then while held.
//!
//! The daemon learns of a change while it is being made: a syscall that changes a name or
//! attributes is reported at its entry, a write when it dirties the inode. So a file is read at
//! the cut after its event (it is dirty) and once more at the next cut, whatever happens: the
//! call may still have been in flight when the first cut read it, and a later write within the
//! same clock tick, to a page already dirty, dirties nothing new. After that it is read at every
//! cut for as long as the process behind the event still holds it open (its `/proc/PID/fd`), so
//! a log-like writer that keeps a config file open is followed too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Files followed at most; beyond, a new one is read at its cut only (and counted).
pub const MAX_HELD: usize = 4096;
/// Openers followed per file at most.
const MAX_OPENERS: usize = 16;
/// Fds of one process looked at before it counts as still holding the file (reading it again
/// is harmless; scanning a process with 100,000 sockets at every cut is not).
const MAX_FDS: usize = 4096;

#[derive(Debug, Default)]
struct Entry {
    openers: BTreeSet<u32>,
    /// Changed since the last cut: read again at the next one regardless.
    fresh: bool,
}

/// The files that changed, by path, with the processes that changed them.
#[derive(Debug, Default)]
pub struct Held {
    files: BTreeMap<String, Entry>,
    /// Changes not followed because [`MAX_HELD`] files already were.
    pub overflowed: u64,
}

impl Held {
    /// Process `pid` changed `path` (absolute, under a watched tree), or is changing it.
    pub fn changed(&mut self, path: &str, pid: u32) {
        if !self.files.contains_key(path) && self.files.len() >= MAX_HELD {
            self.overflowed += 1;
            if self.overflowed.is_power_of_two() {
                tracing::warn!(
                    overflowed = self.overflowed,
                    "{MAX_HELD} changed files are followed already; {path} is read at its \
                     next cut only"
                );
            }
            return;
        }
        // Most events are of a file already followed: no allocation for those.
        let entry = match self.files.get_mut(path) {
            Some(entry) => entry,
            None => self.files.entry(path.to_owned()).or_default(),
        };
        entry.fresh = true;
        if entry.openers.len() < MAX_OPENERS {
            entry.openers.insert(pid);
        }
    }

    /// At a cut: the files to read again at the next one. `open_fds(pid)` says what a process
    /// holds open, asked once per process and cut however many files it opened (dpkg opens
    /// dozens); a file no opener holds is forgotten.
    pub fn carry(&mut self, mut open_fds: impl FnMut(u32) -> OpenFds) -> Vec<String> {
        let mut asked: BTreeMap<u32, OpenFds> = BTreeMap::new();
        let mut again = Vec::new();
        self.files.retain(|path, entry| {
            if std::mem::take(&mut entry.fresh) {
                again.push(path.clone());
                return true;
            }
            entry.openers.retain(|&pid| {
                asked
                    .entry(pid)
                    .or_insert_with(|| open_fds(pid))
                    .holds(path)
            });
            if entry.openers.is_empty() {
                return false;
            }
            again.push(path.clone());
            true
        });
        again
    }

    /// Files followed now.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// No file is followed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// The files a process holds open.
#[derive(Debug, Default)]
pub enum OpenFds {
    /// The paths its fds name (none: it has exited).
    #[default]
    None,
    /// These paths.
    Paths(BTreeSet<PathBuf>),
    /// More than [`MAX_FDS`] fds: it counts as holding any file (reading one again is
    /// harmless; scanning 100,000 sockets at every cut is not).
    Many,
}

impl OpenFds {
    /// Whether one of the fds names `path`.
    pub fn holds(&self, path: &str) -> bool {
        match self {
            OpenFds::None => false,
            OpenFds::Paths(paths) => paths.contains(Path::new(path)),
            OpenFds::Many => true,
        }
    }
}

/// What process `pid` holds open, from `proc_root` (normally `/proc`): `/proc/PID/fd`, read once.
pub fn open_fds(proc_root: &Path, pid: u32) -> OpenFds {
    let Ok(fds) = fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return OpenFds::None;
    };
    let mut paths = BTreeSet::new();
    for (i, fd) in fds.flatten().enumerate() {
        if i >= MAX_FDS {
            return OpenFds::Many;
        }
        if let Ok(target) = fs::read_link(fd.path()) {
            paths.insert(target);
        }
    }
    OpenFds::Paths(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Process `pid` holds every file; no other process holds any.
    fn only(pid: u32) -> impl FnMut(u32) -> OpenFds {
        move |p| {
            if p == pid {
                OpenFds::Many
            } else {
                OpenFds::None
            }
        }
    }

    #[test]
    fn a_file_is_read_at_the_next_cut_and_then_while_held() {
        let mut held = Held::default();
        held.changed("/etc/a.conf", 10);
        held.changed("/etc/b.conf", 11);
        // First cut after the opens: both again, held or not.
        assert_eq!(
            held.carry(|_| OpenFds::None),
            ["/etc/a.conf", "/etc/b.conf"]
        );
        // Then only what a process still holds.
        assert_eq!(held.carry(only(10)), ["/etc/a.conf"]);
        assert_eq!(held.carry(only(10)), ["/etc/a.conf"]);
        assert_eq!(held.carry(|_| OpenFds::None), Vec::<String>::new());
        assert!(held.is_empty());
    }

    #[test]
    fn a_new_open_makes_a_followed_file_fresh_again() {
        let mut held = Held::default();
        held.changed("/etc/a.conf", 10);
        held.carry(|_| OpenFds::None);
        held.changed("/etc/a.conf", 12);
        assert_eq!(held.carry(|_| OpenFds::None), ["/etc/a.conf"]);
        assert_eq!(held.carry(only(12)), ["/etc/a.conf"]);
    }

    #[test]
    fn each_opener_is_asked_once_per_cut() {
        let mut held = Held::default();
        for i in 0..50 {
            held.changed(&format!("/etc/f{i}"), 7);
        }
        held.carry(|_| OpenFds::None);
        let mut asked = 0;
        let again = held.carry(|_| {
            asked += 1;
            OpenFds::Many
        });
        assert_eq!((again.len(), asked), (50, 1));
    }

    #[test]
    fn what_is_followed_is_bounded() {
        let mut held = Held::default();
        for i in 0..MAX_HELD + 10 {
            held.changed(&format!("/etc/f{i}"), 1);
        }
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(held.overflowed, 10);
        for pid in 0..100 {
            held.changed("/etc/f0", pid);
        }
        assert_eq!(held.files["/etc/f0"].openers.len(), MAX_OPENERS);
    }

    #[test]
    fn an_fd_on_the_file_is_found_in_proc() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("held.conf");
        let f = fs::File::create(&file).unwrap();
        let me = std::process::id();
        let proc_root = Path::new("/proc");
        assert!(open_fds(proc_root, me).holds(file.to_str().unwrap()));
        drop(f);
        assert!(!open_fds(proc_root, me).holds(file.to_str().unwrap()));
        assert!(!open_fds(proc_root, u32::MAX).holds("/etc/hosts"));
    }
}
