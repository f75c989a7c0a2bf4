//! The watched trees, as userspace applies them. The kernel filter is deliberately
//! over-inclusive for relative paths with `..`; this one runs on the normalised path. Pure:
//! where a tree is another one under a second name (`/lib/systemd/system` is
//! `/usr/lib/systemd/system` on a merged-/usr system), [`Watched::resolved`] is given the
//! resolution, and every path is then named by its tree's real name, so one file is one entry
//! of the model whichever name the writer used.

use crate::events::{HostEvent, file::FileChange};

/// Absolute directory prefixes, without trailing slashes.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    prefixes: Vec<String>,
    /// Other names of watched trees: (alias, real name), the real name in `prefixes`.
    aliases: Vec<(String, String)>,
}

/// Whether `path` is `prefix` or lies below it.
fn below(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Watched {
    /// From prefixes already checked by `tracer::watched_prefixes`.
    pub fn new(prefixes: Vec<String>) -> Self {
        Watched {
            prefixes,
            aliases: Vec::new(),
        }
    }

    /// From checked prefixes and what each really is (`realpath`, `None`: as given or
    /// unknown): a prefix that is another name of a tree is kept as an alias of its real name,
    /// which is watched instead.
    pub fn resolved(prefixes: Vec<String>, real: impl Fn(&str) -> Option<String>) -> Self {
        let mut w = Watched::default();
        for p in prefixes {
            let name = real(&p)
                .filter(|r| *r != p && safetytwin_model::paths::check(r).is_ok())
                .unwrap_or_else(|| p.clone());
            if name != p {
                w.aliases.push((p, name.clone()));
            }
            if !w.prefixes.contains(&name) {
                w.prefixes.push(name);
            }
        }
        w
    }

    /// `path` by its tree's real name (itself when it is not below an alias).
    pub fn real_name(&self, path: &str) -> Option<String> {
        self.aliases.iter().find_map(|(alias, name)| {
            below(path, alias).then(|| format!("{name}{}", &path[alias.len()..]))
        })
    }

    /// Renames the paths of a file event below an alias to their real names (a symlink's
    /// target is kept as written).
    pub fn rename_aliases(&self, event: &mut HostEvent) {
        let HostEvent::File(change) = event else {
            return;
        };
        if let Some(real) = self.real_name(&change.path) {
            change.path = real;
        }
        if change.op != Some(safetytwin_common::events::file::FileOp::Symlink)
            && let Some(real) = change.new_path.as_deref().and_then(|p| self.real_name(p))
        {
            change.new_path = Some(real);
        }
    }

    /// The watched trees.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether `path` is a watched tree or lies below one.
    pub fn contains(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| below(path, p))
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

    /// `/lib/systemd/system` on a merged-/usr host: one tree, one name in the model; a file
    /// removed through either name is removed.
    #[test]
    fn a_tree_under_a_second_name_is_named_by_its_real_name() {
        let w = Watched::resolved(
            vec![
                "/etc".into(),
                "/lib/systemd/system".into(),
                "/usr/lib/systemd/system".into(),
            ],
            |p| p.strip_prefix("/lib/").map(|r| format!("/usr/lib/{r}")),
        );
        assert_eq!(w.prefixes(), ["/etc", "/usr/lib/systemd/system"]);
        let mut ev = rename(
            "/lib/systemd/system/memcached.service",
            "/lib/systemd/system/memcached.service.dpkg-old",
        );
        w.rename_aliases(&mut ev);
        let HostEvent::File(change) = &ev else {
            unreachable!()
        };
        assert_eq!(change.path, "/usr/lib/systemd/system/memcached.service");
        assert_eq!(
            change.new_path.as_deref(),
            Some("/usr/lib/systemd/system/memcached.service.dpkg-old")
        );
        assert_eq!(w.real_name("/libx/a"), None);
        assert_eq!(w.real_name("/etc/hosts"), None);
        // Without a resolution every tree is its own.
        let plain = Watched::resolved(vec!["/etc".into(), "/lib/x".into()], |_| None);
        assert_eq!(plain.prefixes(), ["/etc", "/lib/x"]);
    }
}
