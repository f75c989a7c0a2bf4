//! Wire types ↔ domain types. The only module that knows prost; everything else works on
//! `safetytwin_model`. Decoding validates: a batch that cannot be a real one is an error here,
//! before it reaches a store.

use safetytwin_model::{
    Activity, Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, HostModel,
    Process, ProcessDelta, Unit, UnitDelta, UnitRuntime,
    paths::{self, PathError},
    units::unit_type_of,
};

use crate::v1;

/// Most trees a daemon may declare in its Hello (the daemon itself watches at most 8).
pub const MAX_WATCHED: usize = 64;

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
    /// A path that is not absolute and normalized, not printable, too long, or outside the
    /// trees the daemon declared (see `safetytwin_model::paths`).
    #[error("{field} {path}: {error}")]
    Path {
        /// The field.
        field: &'static str,
        /// The path, escaped and shortened for the message.
        path: String,
        /// What is wrong with it.
        error: PathError,
    },
}

/// `path` for an error message: escaped (it may hold terminal controls) and shortened.
fn shown(path: &str) -> String {
    const MAX: usize = 120;
    let mut s: String = path.chars().take(MAX).collect();
    if s.len() < path.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn path_error(field: &'static str, path: &str, error: PathError) -> ConvertError {
    ConvertError::Path {
        field,
        path: shown(path),
        error,
    }
}

/// Checks a path from the wire: absolute, normalized, printable, bounded.
fn check_path(field: &'static str, path: &str) -> Result<(), ConvertError> {
    paths::check(path).map_err(|e| path_error(field, path, e))
}

/// The trees a daemon declares in its Hello: at least one, at most [`MAX_WATCHED`], each an
/// absolute normalized path. Every file path on that stream must lie beneath one of them
/// ([`check_batch_paths`]).
pub fn watched_from_wire(watched: Vec<String>) -> Result<Vec<String>, ConvertError> {
    if watched.is_empty() {
        return Err(ConvertError::Missing("Hello.watched"));
    }
    if watched.len() > MAX_WATCHED {
        return Err(ConvertError::Inconsistent(
            "Hello.watched declares too many trees",
        ));
    }
    for tree in &watched {
        check_path("Hello.watched", tree)?;
    }
    Ok(watched)
}

/// Whether `delta` may be sent on a stream that declared `trees`: its path is beneath one of
/// them and, for a symlink, its target is one a link may hold. The daemon drops what fails this
/// before sending ([`retain_sendable`]); the replayer refuses a batch holding any ([`check_batch_paths`]).
fn check_file_delta(delta: &FileDelta, trees: &[String]) -> Result<(), ConvertError> {
    let (path, state) = match delta {
        FileDelta::Upsert { path, state } => (path, Some(state)),
        FileDelta::Remove { path } => (path, None),
    };
    paths::check_within(path, trees).map_err(|e| path_error("FileDelta.path", path, e))?;
    match state.and_then(|s| s.link_target.as_deref()) {
        Some(target) => paths::check_link_target(target)
            .map_err(|e| path_error("FileState.link_target", target, e)),
        None => Ok(()),
    }
}

/// Checks every file path of `delta` against the trees its stream declared.
pub fn check_batch_paths(delta: &DeltaBatch, trees: &[String]) -> Result<(), ConvertError> {
    delta
        .files
        .iter()
        .try_for_each(|f| check_file_delta(f, trees))
}

/// Drops from `delta` the file changes the replayer would refuse on a stream that declared
/// `trees` (a file name with a newline, say), so that one odd name on the host cannot wedge
/// the stream: every resend of the batch would be refused again. Returns what it dropped.
pub fn retain_sendable(delta: &mut DeltaBatch, trees: &[String]) -> Vec<ConvertError> {
    let mut dropped = Vec::new();
    delta.files.retain(|f| match check_file_delta(f, trees) {
        Ok(()) => true,
        Err(e) => {
            dropped.push(e);
            false
        }
    });
    dropped
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
    match (&f.link_target, kind) {
        (Some(_), k) if k != FileKind::Symlink => {
            return Err(ConvertError::Inconsistent(
                "only symlinks have a link target",
            ));
        }
        (Some(target), _) => paths::check_link_target(target)
            .map_err(|e| path_error("FileState.link_target", target, e))?,
        (None, _) => {}
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
            check_path("FileDelta.path", &f.path)?;
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
                Some(unit) => {
                    for p in unit.fragment_path.iter().chain(&unit.dropins) {
                        check_path("Unit.fragment_path/dropins", p)?;
                    }
                    for p in &unit.enabled_by {
                        check_path("Unit.enabled_by", p)?;
                    }
                    UnitDelta::Upsert(Unit {
                        unit_type: unit_type_of(&unit.name),
                        name: unit.name,
                        runtime: unit.runtime.map(runtime_from_wire),
                        fragment_path: unit.fragment_path,
                        dropins: unit.dropins,
                        enabled_by: unit.enabled_by.into_iter().collect(),
                    })
                }
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
        check_path("NamedFile.path", &f.path)?;
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
            Err(ConvertError::Path {
                error: PathError::NotAbsolute,
                ..
            })
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
    fn paths_that_are_not_normalized_are_refused_everywhere() {
        for path in [
            "/etc//a",
            "/etc/./a",
            "/etc/../a",
            "/etc/a\0",
            "/etc/\x1b[2J",
            "/etc/",
        ] {
            let mut w = batch_to_wire(&sample());
            w.files[3].path = path.into();
            assert!(
                matches!(
                    batch_from_wire(w),
                    Err(ConvertError::Path {
                        field: "FileDelta.path",
                        ..
                    })
                ),
                "{path:?}"
            );
            let mut m = model_to_wire(&HostModel::default());
            m.files.push(v1::NamedFile {
                path: path.into(),
                state: Some(file_to_wire(&text("x"))),
            });
            assert!(
                matches!(model_from_wire(m), Err(ConvertError::Path { .. })),
                "{path:?}"
            );
        }
        let mut w = batch_to_wire(&sample());
        w.units[0].unit.as_mut().unwrap().enabled_by[0] = "/etc/x/../y".into();
        assert!(matches!(
            batch_from_wire(w),
            Err(ConvertError::Path {
                field: "Unit.enabled_by",
                ..
            })
        ));
        let mut w = batch_to_wire(&sample());
        w.files[1].state.as_mut().unwrap().link_target = Some("x\x1b]0;t\x07".into());
        let err = batch_from_wire(w).unwrap_err();
        assert!(
            matches!(
                err,
                ConvertError::Path {
                    field: "FileState.link_target",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !err.to_string().contains('\x1b'),
            "escaped in messages: {err}"
        );
        let mut w = batch_to_wire(&sample());
        w.files[0].state.as_mut().unwrap().link_target = Some("/etc/x".into());
        assert_eq!(
            batch_from_wire(w),
            Err(ConvertError::Inconsistent(
                "only symlinks have a link target"
            ))
        );
    }

    #[test]
    fn trees_are_declared_and_hold_every_path() {
        let trees = watched_from_wire(vec!["/etc".into()]).unwrap();
        assert_eq!(check_batch_paths(&sample().delta, &trees), Ok(()));
        assert_eq!(
            watched_from_wire(vec![]),
            Err(ConvertError::Missing("Hello.watched"))
        );
        assert!(watched_from_wire(vec!["/etc/".into()]).is_err());
        assert!(watched_from_wire(vec!["/etc".into(); MAX_WATCHED + 1]).is_err());
        assert!(watched_from_wire(vec!["/".into()]).is_ok());

        let mut b = sample();
        b.delta.files.push(FileDelta::Remove {
            path: "/root/.ssh/authorized_keys".into(),
        });
        b.delta.files.push(FileDelta::Upsert {
            path: "/etc/a\nb".into(),
            state: text("x"),
        });
        assert!(matches!(
            check_batch_paths(&b.delta, &trees),
            Err(ConvertError::Path {
                error: PathError::OutsideTrees,
                ..
            })
        ));
        // The daemon keeps such paths to itself rather than wedge its stream.
        let dropped = retain_sendable(&mut b.delta, &trees);
        assert_eq!(dropped.len(), 2);
        assert_eq!(b.delta.files, sample().delta.files);
        assert_eq!(check_batch_paths(&b.delta, &trees), Ok(()));
    }

    #[test]
    fn models_round_trip() {
        let mut m = HostModel::default();
        m.apply_batch(&sample().delta);
        assert!(!m.files.is_empty() && !m.units.is_empty());
        assert_eq!(model_from_wire(model_to_wire(&m)), Ok(m));
    }
}
