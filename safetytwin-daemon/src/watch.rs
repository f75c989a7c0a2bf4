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
}
