//! The watched trees, as userspace applies them. The kernel filter is deliberately
//! over-inclusive for relative paths with `..`; this one runs on the normalised path. Pure.

use crate::events::{HostEvent, file::FileChange};

/// Absolute directory prefixes, without trailing slashes.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    prefixes: Vec<String>,
}

impl Watched {
    /// From prefixes already checked by `tracer::watched_prefixes`.
    pub fn new(prefixes: Vec<String>) -> Self {
        Watched { prefixes }
    }

    /// The watched trees.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether `path` is a watched tree or lies below one.
    pub fn contains(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Whether a file change touches a watched tree (a rename counts at either end).
    pub fn covers(&self, change: &FileChange) -> bool {
        self.contains(&change.path)
            || (change.op == Some(safetytwin_common::events::file::FileOp::Rename)
                && change.new_path.as_deref().is_some_and(|p| self.contains(p)))
    }

    /// The paths of `dirty` that may be read at cut: those within the trees. A rename out of
    /// the trees is thus the removal of its source only; its destination, whatever it is
    /// called, is never read.
    pub fn readable(&self, dirty: Vec<String>) -> impl Iterator<Item = String> + '_ {
        dirty.into_iter().filter(|p| self.contains(p))
    }

    /// Whether an event should be kept: everything but file changes outside the trees.
    pub fn keeps(&self, event: &HostEvent) -> bool {
        match event {
            HostEvent::File(change) => self.covers(change),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_must_end_at_a_path_boundary() {
        let w = Watched::new(vec!["/etc".into(), "/usr/lib/systemd/system".into()]);
        assert!(w.contains("/etc"));
        assert!(w.contains("/etc/hosts"));
        assert!(!w.contains("/etcetera/x"));
        assert!(!w.contains("/tmp/etc/x"));
        assert!(w.contains("/usr/lib/systemd/system/foo.service"));
    }

    fn rename(from: &str, to: &str) -> HostEvent {
        HostEvent::File(FileChange {
            info: crate::events::ProcInfo {
                pid: 5,
                tid: 5,
                ppid: 1,
                uid: 0,
                gid: 0,
                cgroup_id: 7,
                comm: "mv".into(),
                ts: std::time::UNIX_EPOCH,
            },
            op: Some(safetytwin_common::events::file::FileOp::Rename),
            syscall: 316,
            flags: 0,
            mode: 0,
            owner_uid: None,
            owner_gid: None,
            path: from.into(),
            new_path: Some(to.into()),
            truncated: false,
        })
    }

    /// What the daemon reads at cut after `event`, through the same calls as `run.rs`.
    fn read_at_cut(w: &Watched, event: &HostEvent) -> Vec<String> {
        assert!(w.keeps(event));
        let implied = crate::changes::implied(event, &safetytwin_model::HostModel::default());
        w.readable(implied.dirty).collect()
    }

    #[test]
    fn only_the_end_of_a_rename_inside_the_trees_is_read() {
        let w = Watched::new(vec!["/etc".into()]);
        // Moved out: the source is gone (a removal), the destination is never read.
        assert_eq!(
            read_at_cut(&w, &rename("/etc/shadow", "/tmp/loot.txt")),
            ["/etc/shadow"]
        );
        // Moved in: only the destination, now part of the tree.
        assert_eq!(
            read_at_cut(&w, &rename("/tmp/new.conf", "/etc/new.conf")),
            ["/etc/new.conf"]
        );
        assert_eq!(
            read_at_cut(&w, &rename("/etc/a.tmp", "/etc/a.conf")),
            ["/etc/a.tmp", "/etc/a.conf"]
        );
    }
}
