//! cgroup ids to paths, so an event's `cgroup_id` names the unit of the task behind it.
//! Seeded from the hierarchy at start-up, then kept by mkdir/rmdir events. Pure.

use std::collections::HashMap;

use safetytwin_common::events::cgroup::CgroupOp;
use safetytwin_model::units::{UnitRef, unit_of_cgroup};

use crate::events::HostEvent;

/// The unit hierarchy's cgroups by id.
#[derive(Debug, Default, Clone)]
pub struct CgroupIndex {
    paths: HashMap<u64, String>,
}

impl CgroupIndex {
    /// Records the cgroup `id` at `path` (relative to the hierarchy root).
    pub fn insert(&mut self, id: u64, path: String) {
        self.paths.insert(id, path);
    }

    /// Folds a cgroup event in.
    pub fn apply(&mut self, event: &HostEvent) {
        if let HostEvent::Cgroup(c) = event {
            match c.op {
                Some(CgroupOp::Mkdir) => self.insert(c.cgroup_id, c.path.clone()),
                Some(CgroupOp::Rmdir) => {
                    self.paths.remove(&c.cgroup_id);
                }
                _ => {}
            }
        }
    }

    /// The path of cgroup `id`.
    pub fn path(&self, id: u64) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    /// The unit whose cgroup (or sub-cgroup) has id `id`.
    pub fn unit_of(&self, id: u64) -> Option<UnitRef> {
        unit_of_cgroup(self.path(id)?)
    }
}
