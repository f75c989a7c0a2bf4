//! The daemon's table of live processes, folded from exec/fork/exit events. Pure: no I/O.
//!
//! Seeded from the /proc snapshot before the first kernel event is applied, and idempotent
//! under the overlap between the two (an exec seen both by the scan and by the probe).

use std::collections::HashMap;

use safetytwin_common::events::cgroup::CgroupOp;

use crate::events::HostEvent;

/// One live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Thread group id.
    pub pid: u32,
    /// Parent's thread group id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Command name.
    pub comm: String,
    /// Executable path (inherited from the parent until the first exec).
    pub filename: String,
    /// Arguments (inherited from the parent until the first exec).
    pub argv: Vec<String>,
    /// cgroup v2 id.
    pub cgroup_id: u64,
}

/// Live processes by pid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessTable {
    procs: HashMap<u32, Process>,
}

impl ProcessTable {
    /// Folds one event into the table.
    pub fn apply(&mut self, event: &HostEvent) {
        let info = event.info();
        match event {
            HostEvent::Exec(exec) => {
                self.procs.insert(
                    info.pid,
                    Process {
                        pid: info.pid,
                        ppid: info.ppid,
                        uid: info.uid,
                        gid: info.gid,
                        comm: info.comm.clone(),
                        filename: exec.filename.clone(),
                        argv: exec.argv.clone(),
                        cgroup_id: info.cgroup_id,
                    },
                );
            }
            HostEvent::Fork(fork) => {
                let (filename, argv) = self
                    .procs
                    .get(&fork.creator_pid)
                    .map(|p| (p.filename.clone(), p.argv.clone()))
                    .unwrap_or_default();
                self.procs.insert(
                    info.pid,
                    Process {
                        pid: info.pid,
                        ppid: info.ppid,
                        uid: info.uid,
                        gid: info.gid,
                        comm: info.comm.clone(),
                        filename,
                        argv,
                        cgroup_id: info.cgroup_id,
                    },
                );
            }
            HostEvent::Exit(_) => {
                self.procs.remove(&info.pid);
            }
            HostEvent::File(_) => {}
            HostEvent::Cgroup(change) => {
                if change.op == Some(CgroupOp::Attach)
                    && let Some(p) = self.procs.get_mut(&change.value)
                {
                    p.cgroup_id = change.cgroup_id;
                }
            }
        }
    }

    /// The process with `pid`, if live.
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// Number of live processes.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when no process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::events::{Exec, Exit, Fork, ProcInfo};

    fn info(pid: u32, ppid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            tid: pid,
            ppid,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            comm: "bash".into(),
            ts: UNIX_EPOCH,
        }
    }

    fn exec(pid: u32, ppid: u32, file: &str) -> HostEvent {
        HostEvent::Exec(Exec {
            info: info(pid, ppid),
            filename: file.into(),
            argv: vec![file.into()],
            argv_truncated: false,
            snapshot: false,
        })
    }

    #[test]
    fn fork_inherits_program_then_exec_replaces_it_and_exit_removes() {
        let mut t = ProcessTable::default();
        t.apply(&exec(10, 1, "/bin/bash"));
        t.apply(&HostEvent::Fork(Fork {
            info: info(11, 10),
            creator_pid: 10,
        }));
        assert_eq!(t.get(11).unwrap().filename, "/bin/bash");
        t.apply(&exec(11, 10, "/bin/ls"));
        assert_eq!(t.get(11).unwrap().argv, ["/bin/ls"]);
        t.apply(&HostEvent::Exit(Exit {
            info: info(11, 10),
            status: 0,
        }));
        assert!(t.get(11).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn snapshot_and_probe_overlap_is_idempotent() {
        let mut once = ProcessTable::default();
        once.apply(&exec(20, 1, "/usr/sbin/cron"));
        let mut twice = once.clone();
        twice.apply(&exec(20, 1, "/usr/sbin/cron"));
        assert_eq!(once, twice);
        // An exit for a pid the table never saw changes nothing.
        twice.apply(&HostEvent::Exit(Exit {
            info: info(99, 1),
            status: 0,
        }));
        assert_eq!(once, twice);
    }
}
