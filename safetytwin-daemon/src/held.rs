//! Files under the watched trees held open for writing.
//!
//! `write`, `ftruncate`, `close` and the other syscalls on an fd are not traced: they are the
//! most frequent file syscalls of every host, and a probe on them costs every one of them. The
//! open for writing is the event instead. A file opened for writing is read at the cut after its
//! open (it is dirty) and once more at the next cut, whatever happens: a write, or the open
//! itself, may still have been in flight when the first cut read it. After that it is read at
//! every cut for as long as the process that opened it still holds it open (its
//! `/proc/PID/fd`), so a log-like writer that keeps a config file open is followed too.
//!
//! What this does not see, as the fd probes before it did not: a write through an fd a process
//! inherited from one that has since closed its own, and writes to a file opened before the
//! daemon started.

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
    /// Opened since the last cut: read again at the next one regardless.
    fresh: bool,
}

/// The files opened for writing, by path, with the processes that opened them.
#[derive(Debug, Default)]
pub struct Held {
    files: BTreeMap<String, Entry>,
    /// Opens not followed because [`MAX_HELD`] files already were.
    pub overflowed: u64,
}

impl Held {
    /// Process `pid` opened `path` (absolute, under a watched tree) for writing.
    pub fn opened(&mut self, path: &str, pid: u32) {
        if !self.files.contains_key(path) && self.files.len() >= MAX_HELD {
            self.overflowed += 1;
            if self.overflowed.is_power_of_two() {
                tracing::warn!(
                    overflowed = self.overflowed,
                    "{MAX_HELD} files held open for writing are followed already; {path} is \
                     read at its next cut only"
                );
            }
            return;
        }
        let entry = self.files.entry(path.to_owned()).or_default();
        entry.fresh = true;
        if entry.openers.len() < MAX_OPENERS {
            entry.openers.insert(pid);
        }
    }

    /// At a cut: the files to read again at the next one. `holds(pid, path)` says whether a
    /// process still holds a file open; a file no opener holds is forgotten.
    pub fn carry(&mut self, holds: impl Fn(u32, &str) -> bool) -> Vec<String> {
        let mut again = Vec::new();
        self.files.retain(|path, entry| {
            if std::mem::take(&mut entry.fresh) {
                again.push(path.clone());
                return true;
            }
            entry.openers.retain(|&pid| holds(pid, path));
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

/// Whether process `pid` has an fd on `path` (under `proc_root`, normally `/proc`). A process
/// with more than [`MAX_FDS`] fds counts as holding it.
pub fn holds_open(proc_root: &Path, pid: u32, path: &str) -> bool {
    let Ok(fds) = fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return false;
    };
    let want = PathBuf::from(path);
    for (i, fd) in fds.flatten().enumerate() {
        if i >= MAX_FDS {
            return true;
        }
        if fs::read_link(fd.path()).is_ok_and(|target| target == want) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_at_the_next_cut_and_then_while_held() {
        let mut held = Held::default();
        held.opened("/etc/a.conf", 10);
        held.opened("/etc/b.conf", 11);
        // First cut after the opens: both again, held or not.
        assert_eq!(held.carry(|_, _| false), ["/etc/a.conf", "/etc/b.conf"]);
        // Then only what a process still holds.
        assert_eq!(held.carry(|pid, _| pid == 10), ["/etc/a.conf"]);
        assert_eq!(held.carry(|pid, _| pid == 10), ["/etc/a.conf"]);
        assert_eq!(held.carry(|_, _| false), Vec::<String>::new());
        assert!(held.is_empty());
    }

    #[test]
    fn a_new_open_makes_a_followed_file_fresh_again() {
        let mut held = Held::default();
        held.opened("/etc/a.conf", 10);
        held.carry(|_, _| false);
        held.opened("/etc/a.conf", 12);
        assert_eq!(held.carry(|_, _| false), ["/etc/a.conf"]);
        assert_eq!(held.carry(|pid, _| pid == 12), ["/etc/a.conf"]);
    }

    #[test]
    fn what_is_followed_is_bounded() {
        let mut held = Held::default();
        for i in 0..MAX_HELD + 10 {
            held.opened(&format!("/etc/f{i}"), 1);
        }
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!(held.overflowed, 10);
        for pid in 0..100 {
            held.opened("/etc/f0", pid);
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
        assert!(holds_open(proc_root, me, file.to_str().unwrap()));
        drop(f);
        assert!(!holds_open(proc_root, me, file.to_str().unwrap()));
        assert!(!holds_open(proc_root, u32::MAX, "/etc/hosts"));
    }
}
