//! Kernel events as model changes. Pure: file events only name the paths to look at at batch
//! cut (the daemon reads them then, once per batch, however often they were written).

use safetytwin_common::events::{cgroup::CgroupOp, file::FileOp};
use safetytwin_model::{Change, HostModel, Process};

use crate::events::{HostEvent, ProcInfo};

/// The model changes an event implies, and the paths it dirtied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Implied {
    /// Changes to fold now.
    pub changes: Vec<Change>,
    /// Paths whose state must be read at the next cut (with everything below them): both ends
    /// of a rename, of which the caller reads only those within the watched trees.
    pub dirty: Vec<String>,
}

fn process(info: &ProcInfo, exe: String, argv: Vec<String>) -> Process {
    Process {
        pid: info.pid,
        ppid: info.ppid,
        uid: info.uid,
        gid: info.gid,
        comm: info.comm.clone(),
        exe,
        argv,
        cgroup_id: info.cgroup_id,
    }
}

/// What `event` means for a model currently in state `model`.
pub fn implied(event: &HostEvent, model: &HostModel) -> Implied {
    let mut out = Implied::default();
    match event {
        HostEvent::Exec(e) => out.changes.push(Change::ProcessStarted(process(
            &e.info,
            e.filename.clone(),
            e.argv.clone(),
        ))),
        HostEvent::Fork(f) => {
            // A forked child runs its parent's program until it execs.
            let (exe, argv) = model
                .processes
                .get(&f.creator_pid)
                .map(|p| (p.exe.clone(), p.argv.clone()))
                .unwrap_or_default();
            out.changes
                .push(Change::ProcessStarted(process(&f.info, exe, argv)));
        }
        HostEvent::Exit(e) => out.changes.push(Change::ProcessExited { pid: e.info.pid }),
        HostEvent::Cgroup(c) => {
            let path = c.path.clone();
            match c.op {
                Some(CgroupOp::Mkdir) => out.changes.push(Change::CgroupCreated {
                    path,
                    id: c.cgroup_id,
                }),
                Some(CgroupOp::Rmdir) => out.changes.push(Change::CgroupRemoved { path }),
                Some(CgroupOp::Populated) => out.changes.push(Change::CgroupPopulated {
                    path,
                    id: c.cgroup_id,
                    populated: c.value != 0,
                }),
                Some(CgroupOp::Attach) => {
                    if let Some(p) = model.processes.get(&c.value) {
                        out.changes.push(Change::ProcessStarted(Process {
                            cgroup_id: c.cgroup_id,
                            ..p.clone()
                        }));
                    }
                    out.changes
                        .push(Change::TaskAttached { path, pid: c.value });
                }
                None => {}
            }
        }
        HostEvent::File(f) => {
            out.dirty.push(f.path.clone());
            if matches!(f.op, Some(FileOp::Rename)) {
                out.dirty.extend(f.new_path.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::events::{CgroupChange, Exec, FileChange, Fork};

    fn info(pid: u32, ppid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            tid: pid,
            ppid,
            uid: 0,
            gid: 0,
            cgroup_id: 7,
            comm: "bash".into(),
            ts: UNIX_EPOCH,
        }
    }

    #[test]
    fn fork_inherits_the_program_of_its_creator() {
        let mut model = HostModel::default();
        let exec = HostEvent::Exec(Exec {
            info: info(10, 1),
            filename: "/bin/bash".into(),
            argv: vec!["bash".into()],
            argv_truncated: false,
            snapshot: false,
        });
        let mut w = safetytwin_model::Window::default();
        for c in implied(&exec, &model).changes {
            model.apply(&c, &mut w);
        }
        let fork = HostEvent::Fork(Fork {
            info: info(11, 10),
            creator_pid: 10,
        });
        let Implied { changes, dirty } = implied(&fork, &model);
        assert!(dirty.is_empty());
        let [Change::ProcessStarted(child)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!((child.pid, child.exe.as_str()), (11, "/bin/bash"));
    }

    #[test]
    fn file_events_dirty_both_ends_of_a_rename() {
        let rename = HostEvent::File(FileChange {
            info: info(5, 1),
            op: Some(FileOp::Rename),
            syscall: 316,
            flags: 0,
            mode: 0,
            owner_uid: None,
            owner_gid: None,
            path: "/etc/a.tmp".into(),
            new_path: Some("/etc/a.conf".into()),
            truncated: false,
        });
        let out = implied(&rename, &HostModel::default());
        assert!(out.changes.is_empty());
        assert_eq!(out.dirty, ["/etc/a.tmp", "/etc/a.conf"]);
    }

    #[test]
    fn populated_cgroups_are_unit_state() {
        let ev = HostEvent::Cgroup(CgroupChange {
            info: info(1, 0),
            op: Some(CgroupOp::Populated),
            value: 1,
            cgroup_id: 9,
            level: 2,
            path: "/system.slice/x.service".into(),
        });
        assert_eq!(
            implied(&ev, &HostModel::default()).changes,
            [Change::CgroupPopulated {
                path: "/system.slice/x.service".into(),
                id: 9,
                populated: true
            }]
        );
    }
}
