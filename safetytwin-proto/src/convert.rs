//! Wire types ↔ domain types. The only module that knows prost; everything else works on
//! `safetytwin_model`. Decoding validates: a batch that cannot be a real one is an error here,
//! before it reaches a store.

use safetytwin_model::{
    Activity, Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, HostModel,
    Process, ProcessDelta, Unit, UnitDelta, UnitRuntime, units::unit_type_of,
};

use crate::v1;

/// Why a wire message is not a valid domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// A required field is empty or zero.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// An enum field holds a value this version does not know.
    #[error("{field} has unknown value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The value.
        value: i32,
    },
    /// A field contradicts another.
    #[error("{0}")]
    Inconsistent(&'static str),
}

fn process_to_wire(p: &Process) -> v1::Process {
    v1::Process {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        argv: p.argv.clone(),
        cgroup_id: p.cgroup_id,
    }
}

fn process_from_wire(p: v1::Process) -> Process {
    Process {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: p.comm,
        exe: p.exe,
        argv: p.argv,
        cgroup_id: p.cgroup_id,
    }
}

/// A file's state on the wire.
pub fn file_to_wire(f: &FileState) -> v1::FileState {
    let (content_state, text) = match &f.content {
        Content::None => (v1::ContentState::None, String::new()),
        Content::Text(t) => (v1::ContentState::Text, t.clone()),
        Content::Redacted => (v1::ContentState::Redacted, String::new()),
        Content::TooLarge => (v1::ContentState::TooLarge, String::new()),
        Content::Binary => (v1::ContentState::Binary, String::new()),
    };
    v1::FileState {
        kind: match f.kind {
            FileKind::Regular => v1::FileKind::Regular,
            FileKind::Directory => v1::FileKind::Directory,
            FileKind::Symlink => v1::FileKind::Symlink,
            FileKind::Other => v1::FileKind::Other,
        } as i32,
        mode: f.mode,
        uid: f.uid,
        gid: f.gid,
        size: f.size,
        sha256: f.sha256.clone().unwrap_or_default(),
        content_state: content_state as i32,
        text,
        link_target: f.link_target.clone(),
    }
}

/// A file's state from the wire.
pub fn file_from_wire(f: v1::FileState) -> Result<FileState, ConvertError> {
    let kind = match v1::FileKind::try_from(f.kind) {
        Ok(v1::FileKind::Regular) => FileKind::Regular,
        Ok(v1::FileKind::Directory) => FileKind::Directory,
        Ok(v1::FileKind::Symlink) => FileKind::Symlink,
        Ok(v1::FileKind::Other) => FileKind::Other,
        _ => {
            return Err(ConvertError::UnknownEnum {
                field: "FileState.kind",
                value: f.kind,
            });
        }
    };
    let content = match v1::ContentState::try_from(f.content_state) {
        Ok(v1::ContentState::None) => Content::None,
        Ok(v1::ContentState::Text) => Content::Text(f.text),
        Ok(v1::ContentState::Redacted) => Content::Redacted,
        Ok(v1::ContentState::TooLarge) => Content::TooLarge,
        Ok(v1::ContentState::Binary) => Content::Binary,
        _ => {
            return Err(ConvertError::UnknownEnum {
                field: "FileState.content_state",
                value: f.content_state,
            });
        }
    };
    if kind != FileKind::Regular && content != Content::None {
        return Err(ConvertError::Inconsistent(
            "only regular files carry content",
        ));
    }
    let sha256 = (!f.sha256.is_empty()).then_some(f.sha256);
    if sha256
        .as_ref()
        .is_some_and(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ConvertError::Inconsistent("sha256 is not 64 hex digits"));
    }
    Ok(FileState {
        kind,
        mode: f.mode,
        uid: f.uid,
        gid: f.gid,
        size: f.size,
        sha256,
        content,
        link_target: f.link_target,
    })
}

fn runtime_to_wire(r: &UnitRuntime) -> v1::UnitRuntime {
    v1::UnitRuntime {
        cgroup: r.cgroup.clone(),
        cgroup_id: r.cgroup_id,
        active: r.active,
        main_pid: r.main_pid,
    }
}

fn runtime_from_wire(r: v1::UnitRuntime) -> UnitRuntime {
    UnitRuntime {
        cgroup: r.cgroup,
        cgroup_id: r.cgroup_id,
        active: r.active,
        main_pid: r.main_pid,
    }
}

/// A batch on the wire.
pub fn batch_to_wire(b: &Batch) -> v1::DeltaBatch {
    let h = &b.header;
    let d = &b.delta;
    v1::DeltaBatch {
        host_id: h.host_id.clone(),
        boot_id: h.boot_id.clone(),
        seq: h.seq,
        window_start_unix_ns: h.window_start_unix_ns,
        window_end_unix_ns: h.window_end_unix_ns,
        files: d
            .files
            .iter()
            .map(|f| match f {
                FileDelta::Upsert { path, state } => v1::FileDelta {
                    path: path.clone(),
                    state: Some(file_to_wire(state)),
                },
                FileDelta::Remove { path } => v1::FileDelta {
                    path: path.clone(),
                    state: None,
                },
            })
            .collect(),
        units: d
            .units
            .iter()
            .map(|u| match u {
                UnitDelta::Upsert(u) => v1::UnitDelta {
                    name: u.name.clone(),
                    unit: Some(v1::Unit {
                        name: u.name.clone(),
                        runtime: u.runtime.as_ref().map(runtime_to_wire),
                        fragment_path: u.fragment_path.clone(),
                        dropins: u.dropins.clone(),
                        enabled_by: u.enabled_by.iter().cloned().collect(),
                    }),
                },
                UnitDelta::Remove { name } => v1::UnitDelta {
                    name: name.clone(),
                    unit: None,
                },
            })
            .collect(),
        processes: d
            .processes
            .iter()
            .map(|p| match p {
                ProcessDelta::Upsert(p) => v1::ProcessDelta {
                    pid: p.pid,
                    process: Some(process_to_wire(p)),
                },
                ProcessDelta::Remove { pid } => v1::ProcessDelta {
                    pid: *pid,
                    process: None,
                },
            })
            .collect(),
        activity: Some(v1::Activity {
            started: d.activity.started,
            exited: d.activity.exited,
            short_lived: d.activity.short_lived,
            changes: d.activity.changes,
        }),
        counters: Some(v1::LossCounters {
            produced: h.produced,
            received: h.received,
            dropped: h.dropped,
        }),
        resync: h.resync,
    }
}

/// A batch from the wire, validated.
pub fn batch_from_wire(w: v1::DeltaBatch) -> Result<Batch, ConvertError> {
    if w.host_id.is_empty() {
        return Err(ConvertError::Missing("DeltaBatch.host_id"));
    }
    if w.seq == 0 {
        return Err(ConvertError::Missing("DeltaBatch.seq"));
    }
    if w.window_end_unix_ns < w.window_start_unix_ns {
        return Err(ConvertError::Inconsistent("window ends before it starts"));
    }
    let files = w
        .files
        .into_iter()
        .map(|f| {
            if !f.path.starts_with('/') {
                return Err(ConvertError::Inconsistent("file path is not absolute"));
            }
            Ok(match f.state {
                Some(s) => FileDelta::Upsert {
                    path: f.path,
                    state: file_from_wire(s)?,
                },
                None => FileDelta::Remove { path: f.path },
            })
        })
        .collect::<Result<_, _>>()?;
    let units = w
        .units
        .into_iter()
        .map(|u| {
            if u.name.is_empty() {
                return Err(ConvertError::Missing("UnitDelta.name"));
            }
            Ok(match u.unit {
                Some(unit) if unit.name != u.name => {
                    return Err(ConvertError::Inconsistent(
                        "unit name differs from delta name",
                    ));
                }
                Some(unit) => UnitDelta::Upsert(Unit {
                    unit_type: unit_type_of(&unit.name),
                    name: unit.name,
                    runtime: unit.runtime.map(runtime_from_wire),
                    fragment_path: unit.fragment_path,
                    dropins: unit.dropins,
                    enabled_by: unit.enabled_by.into_iter().collect(),
                }),
                None => UnitDelta::Remove { name: u.name },
            })
        })
        .collect::<Result<_, _>>()?;
    let processes = w
        .processes
        .into_iter()
        .map(|p| match p.process {
            Some(proc) if proc.pid != p.pid => Err(ConvertError::Inconsistent(
                "process pid differs from delta pid",
            )),
            Some(proc) => Ok(ProcessDelta::Upsert(process_from_wire(proc))),
            None => Ok(ProcessDelta::Remove { pid: p.pid }),
        })
        .collect::<Result<_, _>>()?;
    let a = w.activity.unwrap_or_default();
    let c = w.counters.unwrap_or_default();
    Ok(Batch {
        header: BatchHeader {
            host_id: w.host_id,
            boot_id: w.boot_id,
            seq: w.seq,
            window_start_unix_ns: w.window_start_unix_ns,
            window_end_unix_ns: w.window_end_unix_ns,
            produced: c.produced,
            received: c.received,
            dropped: c.dropped,
            resync: w.resync,
        },
        delta: DeltaBatch {
            files,
            units,
            processes,
            activity: Activity {
                started: a.started,
                exited: a.exited,
                short_lived: a.short_lived,
                changes: a.changes,
            },
        },
    })
}

/// A whole model on the wire.
pub fn model_to_wire(m: &HostModel) -> v1::HostState {
    v1::HostState {
        processes: m.processes.values().map(process_to_wire).collect(),
        files: m
            .files
            .iter()
            .map(|(path, s)| v1::NamedFile {
                path: path.clone(),
                state: Some(file_to_wire(s)),
            })
            .collect(),
        units: m
            .units
            .iter()
            .map(|(name, r)| v1::NamedUnitRuntime {
                name: name.clone(),
                runtime: Some(runtime_to_wire(r)),
            })
            .collect(),
    }
}

/// A whole model from the wire.
pub fn model_from_wire(w: v1::HostState) -> Result<HostModel, ConvertError> {
    let mut m = HostModel::default();
    for p in w.processes {
        m.processes.insert(p.pid, process_from_wire(p));
    }
    for f in w.files {
        let state = f.state.ok_or(ConvertError::Missing("NamedFile.state"))?;
        m.files.insert(f.path, file_from_wire(state)?);
    }
    for u in w.units {
        let rt = u
            .runtime
            .ok_or(ConvertError::Missing("NamedUnitRuntime.runtime"))?;
        m.units.insert(u.name, runtime_from_wire(rt));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn text(s: &str) -> FileState {
        FileState {
            kind: FileKind::Regular,
            mode: 0o640,
            uid: 1,
            gid: 2,
            size: s.len() as u64,
            sha256: Some("ab".repeat(32)),
            content: Content::Text(s.into()),
            link_target: None,
        }
    }

    fn sample() -> Batch {
        let runtime = UnitRuntime {
            cgroup: "/system.slice/demo.service".into(),
            cgroup_id: 9,
            active: true,
            main_pid: Some(42),
        };
        Batch {
            header: BatchHeader {
                host_id: "web-1".into(),
                boot_id: "b1".into(),
                seq: 7,
                window_start_unix_ns: 1,
                window_end_unix_ns: 2,
                produced: 10,
                received: 9,
                dropped: 1,
                resync: false,
            },
            delta: DeltaBatch {
                files: vec![
                    FileDelta::Upsert {
                        path: "/etc/a.conf".into(),
                        state: text("x=1\n"),
                    },
                    FileDelta::Upsert {
                        path: "/etc/l".into(),
                        state: FileState {
                            kind: FileKind::Symlink,
                            sha256: None,
                            content: Content::None,
                            link_target: Some("a.conf".into()),
                            ..text("")
                        },
                    },
                    FileDelta::Upsert {
                        path: "/etc/shadow".into(),
                        state: FileState {
                            content: Content::Redacted,
                            ..text("")
                        },
                    },
                    FileDelta::Remove {
                        path: "/etc/old".into(),
                    },
                ],
                units: vec![
                    UnitDelta::Upsert(Unit {
                        name: "demo.service".into(),
                        unit_type: unit_type_of("demo.service"),
                        runtime: Some(runtime),
                        fragment_path: Some("/etc/systemd/system/demo.service".into()),
                        dropins: vec![],
                        enabled_by: BTreeSet::from([
                            "/etc/systemd/system/multi-user.target.wants/demo.service".into(),
                        ]),
                    }),
                    UnitDelta::Remove {
                        name: "gone.service".into(),
                    },
                ],
                processes: vec![ProcessDelta::Remove { pid: 3 }],
                activity: Activity {
                    started: 4,
                    exited: 5,
                    short_lived: 3,
                    changes: 20,
                },
            },
        }
    }

    #[test]
    fn batches_round_trip() {
        let b = sample();
        assert_eq!(batch_from_wire(batch_to_wire(&b)), Ok(b));
    }

    #[test]
    fn malformed_batches_are_rejected_precisely() {
        let mut w = batch_to_wire(&sample());
        w.seq = 0;
        assert_eq!(
            batch_from_wire(w),
            Err(ConvertError::Missing("DeltaBatch.seq"))
        );
        let mut w = batch_to_wire(&sample());
        w.files[0].path = "etc/a.conf".into();
        assert!(matches!(
            batch_from_wire(w),
            Err(ConvertError::Inconsistent(_))
        ));
        let mut w = batch_to_wire(&sample());
        w.files[0].state.as_mut().unwrap().kind = 99;
        assert!(matches!(
            batch_from_wire(w),
            Err(ConvertError::UnknownEnum { value: 99, .. })
        ));
        let mut w = batch_to_wire(&sample());
        w.files[0].state.as_mut().unwrap().sha256 = "zz".into();
        assert!(matches!(
            batch_from_wire(w),
            Err(ConvertError::Inconsistent(_))
        ));
    }

    #[test]
    fn models_round_trip() {
        let mut m = HostModel::default();
        m.apply_batch(&sample().delta);
        assert!(!m.files.is_empty() && !m.units.is_empty());
        assert_eq!(model_from_wire(model_to_wire(&m)), Ok(m));
    }
}
