//! Wire types ↔ domain types. Only this crate knows prost (`wire` gives the others the
//! bytes); everything else works on `safetytwin_model`. Decoding validates: a batch that cannot be a real one is an error here,
//! before it reaches a store. Encoding can also cut a batch into parts within a byte budget
//! ([`batch_to_wire_parts`]), since only the wire knows what a batch weighs.

use safetytwin_model::{
    Activity, Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, Group,
    GroupDelta, HostModel, OsRelease, Package, PackageDelta, PackageStatus, Password, Process,
    ProcessDelta, Unit, UnitDelta, UnitRuntime, User, UserDelta,
    accounts::{self, AccountError},
    os::{self, OsError},
    packages::{self, PackageError},
    paths::{self, PathError},
    units::unit_type_of,
};

use prost::Message;

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
    /// A package name, architecture or version outside Debian policy's character sets.
    #[error("{0}")]
    Package(#[from] PackageError),
    /// A user or group whose name, GECOS, home or shell the model may not hold.
    #[error("{0}")]
    Account(#[from] AccountError),
    /// An os-release field the model may not hold.
    #[error("{0}")]
    Os(#[from] OsError),
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

fn package_status_to_wire(s: PackageStatus) -> v1::PackageStatus {
    match s {
        PackageStatus::Installed => v1::PackageStatus::Installed,
        PackageStatus::ConfigFiles => v1::PackageStatus::ConfigFiles,
        PackageStatus::HalfInstalled => v1::PackageStatus::HalfInstalled,
        PackageStatus::Unpacked => v1::PackageStatus::Unpacked,
        PackageStatus::HalfConfigured => v1::PackageStatus::HalfConfigured,
        PackageStatus::TriggersAwaited => v1::PackageStatus::TriggersAwaited,
        PackageStatus::TriggersPending => v1::PackageStatus::TriggersPending,
    }
}

fn package_to_wire(p: &Package) -> v1::Package {
    v1::Package {
        name: p.name.clone(),
        arch: p.arch.clone(),
        version: p.version.clone(),
        status: package_status_to_wire(p.status).into(),
    }
}

fn package_from_wire(p: v1::Package) -> Result<Package, ConvertError> {
    let status = match v1::PackageStatus::try_from(p.status) {
        Ok(v1::PackageStatus::Installed) => PackageStatus::Installed,
        Ok(v1::PackageStatus::ConfigFiles) => PackageStatus::ConfigFiles,
        Ok(v1::PackageStatus::HalfInstalled) => PackageStatus::HalfInstalled,
        Ok(v1::PackageStatus::Unpacked) => PackageStatus::Unpacked,
        Ok(v1::PackageStatus::HalfConfigured) => PackageStatus::HalfConfigured,
        Ok(v1::PackageStatus::TriggersAwaited) => PackageStatus::TriggersAwaited,
        Ok(v1::PackageStatus::TriggersPending) => PackageStatus::TriggersPending,
        Ok(v1::PackageStatus::Unspecified) | Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "Package.status",
                value: p.status,
            });
        }
    };
    let p = Package {
        name: p.name,
        arch: p.arch,
        version: p.version,
        status,
    };
    packages::check(&p)?;
    Ok(p)
}

fn user_to_wire(u: &User) -> v1::User {
    let password = match u.password {
        Password::Set => v1::PasswordState::Set,
        Password::Locked => v1::PasswordState::Locked,
        Password::Empty => v1::PasswordState::Empty,
        Password::Unknown => v1::PasswordState::Unknown,
    };
    v1::User {
        name: u.name.clone(),
        uid: u.uid,
        gid: u.gid,
        gecos: u.gecos.clone(),
        home: u.home.clone(),
        shell: u.shell.clone(),
        password: password.into(),
    }
}

fn user_from_wire(u: v1::User) -> Result<User, ConvertError> {
    let password = match v1::PasswordState::try_from(u.password) {
        Ok(v1::PasswordState::Set) => Password::Set,
        Ok(v1::PasswordState::Locked) => Password::Locked,
        Ok(v1::PasswordState::Empty) => Password::Empty,
        Ok(v1::PasswordState::Unknown) => Password::Unknown,
        Ok(v1::PasswordState::Unspecified) | Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "User.password",
                value: u.password,
            });
        }
    };
    let u = User {
        name: u.name,
        uid: u.uid,
        gid: u.gid,
        gecos: u.gecos,
        home: u.home,
        shell: u.shell,
        password,
    };
    accounts::check_user(&u)?;
    Ok(u)
}

fn group_to_wire(g: &Group) -> v1::Group {
    v1::Group {
        name: g.name.clone(),
        gid: g.gid,
        members: g.members.clone(),
    }
}

fn group_from_wire(g: v1::Group) -> Result<Group, ConvertError> {
    let g = Group {
        name: g.name,
        gid: g.gid,
        members: g.members,
    };
    accounts::check_group(&g)?;
    Ok(g)
}

fn os_to_wire(o: &OsRelease) -> v1::OsRelease {
    v1::OsRelease {
        id: o.id.clone(),
        version_id: o.version_id.clone(),
        codename: o.codename.clone(),
    }
}

fn os_from_wire(o: v1::OsRelease) -> Result<OsRelease, ConvertError> {
    let o = OsRelease {
        id: o.id,
        version_id: o.version_id,
        codename: o.codename,
    };
    os::check(&o)?;
    Ok(o)
}

fn package_delta_to_wire(d: &PackageDelta) -> v1::PackageDelta {
    match d {
        PackageDelta::Upsert(p) => v1::PackageDelta {
            name: p.name.clone(),
            arch: p.arch.clone(),
            package: Some(package_to_wire(p)),
        },
        PackageDelta::Remove { name, arch } => v1::PackageDelta {
            name: name.clone(),
            arch: arch.clone(),
            package: None,
        },
    }
}

fn package_delta_from_wire(d: v1::PackageDelta) -> Result<PackageDelta, ConvertError> {
    match d.package {
        Some(p) if p.name != d.name || p.arch != d.arch => Err(ConvertError::Inconsistent(
            "package name or arch differs from the delta's",
        )),
        Some(p) => Ok(PackageDelta::Upsert(package_from_wire(p)?)),
        None => {
            // A removal names a package like an upsert does: checked the same way.
            packages::check(&Package {
                name: d.name.clone(),
                arch: d.arch.clone(),
                version: "0".into(),
                status: PackageStatus::Installed,
            })?;
            Ok(PackageDelta::Remove {
                name: d.name,
                arch: d.arch,
            })
        }
    }
}

fn user_delta_to_wire(d: &UserDelta) -> v1::UserDelta {
    match d {
        UserDelta::Upsert(u) => v1::UserDelta {
            name: u.name.clone(),
            user: Some(user_to_wire(u)),
        },
        UserDelta::Remove { name } => v1::UserDelta {
            name: name.clone(),
            user: None,
        },
    }
}

fn user_delta_from_wire(d: v1::UserDelta) -> Result<UserDelta, ConvertError> {
    match d.user {
        Some(u) if u.name != d.name => Err(ConvertError::Inconsistent(
            "user name differs from the delta's",
        )),
        Some(u) => Ok(UserDelta::Upsert(user_from_wire(u)?)),
        None => {
            accounts::check_name(&d.name)?;
            Ok(UserDelta::Remove { name: d.name })
        }
    }
}

fn group_delta_to_wire(d: &GroupDelta) -> v1::GroupDelta {
    match d {
        GroupDelta::Upsert(g) => v1::GroupDelta {
            name: g.name.clone(),
            group: Some(group_to_wire(g)),
        },
        GroupDelta::Remove { name } => v1::GroupDelta {
            name: name.clone(),
            group: None,
        },
    }
}

fn group_delta_from_wire(d: v1::GroupDelta) -> Result<GroupDelta, ConvertError> {
    match d.group {
        Some(g) if g.name != d.name => Err(ConvertError::Inconsistent(
            "group name differs from the delta's",
        )),
        Some(g) => Ok(GroupDelta::Upsert(group_from_wire(g)?)),
        None => {
            accounts::check_name(&d.name)?;
            Ok(GroupDelta::Remove { name: d.name })
        }
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
        more: h.more,
        packages: d.packages.iter().map(package_delta_to_wire).collect(),
        users: d.users.iter().map(user_delta_to_wire).collect(),
        groups: d.groups.iter().map(group_delta_to_wire).collect(),
        os: d.os.as_ref().map(os_to_wire),
    }
}

/// The part budget the daemon uses unless told otherwise: well below the replayer's default
/// message limit (64 MiB), so a part is never refused for its size, and small enough that one
/// part in memory on either side is cheap.
pub const DEFAULT_PART_BYTES: usize = 8 << 20;

/// What one entry adds to its batch on the wire: tag (fields 6 to 8: one byte), length, bytes.
fn entry_len(len: usize) -> usize {
    crate::wire::entry_len(len)
}

/// `b` on the wire, cut into parts of at most `budget` encoded bytes each (an entry larger
/// than that goes alone), so that a batch of any size fits the replayer's message limit.
///
/// The entries keep their order (files, units, processes, packages, users, groups) and fill
/// each part in
/// turn; the parts carry consecutive seqs from `b`'s and its window. Only the first carries
/// `resync`, only the last the activity and loss counters, and all but the last `more`, so
/// folding them in order gives `b`. A batch within the budget, an empty one included, is one
/// part: `batch_to_wire(b)` itself.
pub fn batch_to_wire_parts(b: &Batch, budget: usize) -> Vec<v1::DeltaBatch> {
    let mut whole = batch_to_wire(b);
    if whole.encoded_len() <= budget {
        return vec![whole];
    }
    let files = std::mem::take(&mut whole.files);
    let units = std::mem::take(&mut whole.units);
    let processes = std::mem::take(&mut whole.processes);
    let packages = std::mem::take(&mut whole.packages);
    let users = std::mem::take(&mut whole.users);
    let groups = std::mem::take(&mut whole.groups);
    // The largest header a part can have: every flag set, the longest seq, the last part's
    // activity and counters. Entries fill what the budget leaves.
    let header = v1::DeltaBatch {
        seq: u64::MAX,
        resync: true,
        more: true,
        ..whole.clone()
    }
    .encoded_len();
    let middle = v1::DeltaBatch {
        activity: Some(v1::Activity::default()),
        counters: Some(v1::LossCounters::default()),
        resync: false,
        ..whole.clone()
    };
    let mut parts = Vec::new();
    let mut part = middle.clone();
    let mut bytes = header;
    // Starts a new part when `len` more bytes would overflow one that already holds an entry.
    let mut make_room = |part: &mut v1::DeltaBatch, len: usize| {
        let empty = part.files.is_empty()
            && part.units.is_empty()
            && part.processes.is_empty()
            && part.packages.is_empty()
            && part.users.is_empty()
            && part.groups.is_empty();
        if !empty && bytes + entry_len(len) > budget {
            parts.push(std::mem::replace(part, middle.clone()));
            bytes = header;
        }
        bytes += entry_len(len);
    };
    for f in files {
        make_room(&mut part, f.encoded_len());
        part.files.push(f);
    }
    for u in units {
        make_room(&mut part, u.encoded_len());
        part.units.push(u);
    }
    for p in processes {
        make_room(&mut part, p.encoded_len());
        part.processes.push(p);
    }
    for p in packages {
        make_room(&mut part, p.encoded_len());
        part.packages.push(p);
    }
    for u in users {
        make_room(&mut part, u.encoded_len());
        part.users.push(u);
    }
    for g in groups {
        make_room(&mut part, g.encoded_len());
        part.groups.push(g);
    }
    parts.push(part);
    let last = parts.len() - 1;
    for (i, p) in parts.iter_mut().enumerate() {
        p.seq = whole.seq.saturating_add(i as u64);
        p.resync = whole.resync && i == 0;
        p.more = i < last;
    }
    parts[last].activity = whole.activity;
    parts[last].counters = whole.counters;
    parts
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
        .collect::<Result<_, ConvertError>>()?;
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
        .collect::<Result<_, ConvertError>>()?;
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
        .collect::<Result<_, ConvertError>>()?;
    let packages = w
        .packages
        .into_iter()
        .map(package_delta_from_wire)
        .collect::<Result<_, ConvertError>>()?;
    let users = w
        .users
        .into_iter()
        .map(user_delta_from_wire)
        .collect::<Result<_, ConvertError>>()?;
    let groups = w
        .groups
        .into_iter()
        .map(group_delta_from_wire)
        .collect::<Result<_, ConvertError>>()?;
    let os = w.os.map(os_from_wire).transpose()?;
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
            more: w.more,
        },
        delta: DeltaBatch {
            files,
            units,
            processes,
            packages,
            users,
            groups,
            os,
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
        packages: m.packages.values().map(package_to_wire).collect(),
        users: m.users.values().map(user_to_wire).collect(),
        groups: m.groups.values().map(group_to_wire).collect(),
        os: m.os.as_ref().map(os_to_wire),
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
    for p in w.packages {
        let p = package_from_wire(p)?;
        m.packages.insert(p.key(), p);
    }
    for u in w.users {
        let u = user_from_wire(u)?;
        m.users.insert(u.name.clone(), u);
    }
    for g in w.groups {
        let g = group_from_wire(g)?;
        m.groups.insert(g.name.clone(), g);
    }
    m.os = w.os.map(os_from_wire).transpose()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use safetytwin_model::fixtures;

    use super::*;

    /// Mode and owner off their defaults, so that a round trip that dropped them would show.
    fn text(s: &str) -> FileState {
        FileState {
            mode: 0o640,
            uid: 1,
            gid: 2,
            ..fixtures::text(s)
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
                more: false,
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
                packages: vec![
                    PackageDelta::Upsert(fixtures::package("openssh-server", "1:9.2p1-2+deb12u3")),
                    PackageDelta::Remove {
                        name: "telnetd".into(),
                        arch: "amd64".into(),
                    },
                ],
                users: vec![
                    UserDelta::Upsert(User {
                        name: "alice".into(),
                        uid: 1000,
                        gid: 1000,
                        gecos: "Alice,,,".into(),
                        home: "/home/alice".into(),
                        shell: "/bin/bash".into(),
                        password: Password::Locked,
                    }),
                    UserDelta::Remove { name: "bob".into() },
                ],
                groups: vec![
                    GroupDelta::Upsert(Group {
                        name: "sudo".into(),
                        gid: 27,
                        members: vec!["alice".into()],
                    }),
                    GroupDelta::Remove { name: "bob".into() },
                ],
                os: Some(OsRelease {
                    id: "debian".into(),
                    version_id: "12".into(),
                    codename: "bookworm".into(),
                }),
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

    /// Package names and versions become apt and dpkg arguments, account names `useradd`
    /// arguments: nothing that could be read as an option, or that Debian would not write,
    /// passes the edge, in an upsert or a removal.
    #[test]
    fn hostile_packages_and_accounts_are_refused() {
        let refused = |edit: &dyn Fn(&mut v1::DeltaBatch)| {
            let mut w = batch_to_wire(&sample());
            edit(&mut w);
            batch_from_wire(w).unwrap_err()
        };
        let pkg = |w: &mut v1::DeltaBatch| w.packages[0].package.as_mut().unwrap().clone();
        assert!(matches!(
            refused(&|w| {
                let mut p = pkg(w);
                p.version = "--force-all".into();
                w.packages[0].package = Some(p);
            }),
            ConvertError::Package(PackageError::Version(_))
        ));
        assert!(matches!(
            refused(&|w| w.packages[1].name = "-oDebug::pkgDPkgPM=1".into()),
            ConvertError::Package(PackageError::Name(_))
        ));
        assert!(matches!(
            refused(&|w| w.packages[0].name = "other".into()),
            ConvertError::Inconsistent(_)
        ));
        assert!(matches!(
            refused(&|w| w.packages[0].package.as_mut().unwrap().status = 0),
            ConvertError::UnknownEnum { .. }
        ));
        assert!(matches!(
            refused(&|w| w.users[1].name = "-r".into()),
            ConvertError::Account(AccountError::Name(_))
        ));
        assert!(matches!(
            refused(&|w| w.users[0].user.as_mut().unwrap().home = "/home/../root".into()),
            ConvertError::Account(AccountError::Path(_))
        ));
        assert!(matches!(
            refused(&|w| w.users[0].user.as_mut().unwrap().gecos = "\u{1b}[2J".into()),
            ConvertError::Account(AccountError::Gecos)
        ));
        assert!(matches!(
            refused(&|w| w.groups[0]
                .group
                .as_mut()
                .unwrap()
                .members
                .push("a b".into())),
            ConvertError::Account(AccountError::Name(_))
        ));
        // The release names an image and a build flag.
        assert!(matches!(
            refused(&|w| w.os.as_mut().unwrap().codename = "--release=x".into()),
            ConvertError::Os(_)
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

    /// A resync of `files` files of `size` bytes each, 3 units and 3 processes.
    fn large(files: usize, size: usize) -> Batch {
        let mut b = sample();
        b.header.resync = true;
        b.delta.files = (0..files)
            .map(|i| FileDelta::Upsert {
                path: format!("/etc/big/{i:05}.conf"),
                state: text(&"x".repeat(size)),
            })
            .collect();
        for pid in 1..=3 {
            b.delta
                .processes
                .push(ProcessDelta::Upsert(fixtures::process(pid, "/bin/p")));
        }
        b
    }

    /// What the replayer's store does with batches: a resync starts from nothing.
    fn fold(model: &HostModel, batches: impl IntoIterator<Item = Batch>) -> HostModel {
        let mut m = model.clone();
        for b in batches {
            if b.header.resync {
                m = HostModel::default();
            }
            m.apply_batch(&b.delta);
        }
        m
    }

    fn entries(w: &v1::DeltaBatch) -> usize {
        w.files.len()
            + w.units.len()
            + w.processes.len()
            + w.packages.len()
            + w.users.len()
            + w.groups.len()
    }

    #[test]
    fn parts_stay_within_the_budget_in_order_and_fold_to_the_whole() {
        let b = large(200, 1000);
        let whole = batch_to_wire(&b);
        for budget in [1, 3000, 10_000, 64 << 10, whole.encoded_len() - 1] {
            let parts = batch_to_wire_parts(&b, budget);
            assert!(parts.len() > 1, "budget {budget}: {} parts", parts.len());
            for p in &parts {
                assert!(
                    p.encoded_len() <= budget || entries(p) == 1,
                    "budget {budget}: a part of {} bytes and {} entries",
                    p.encoded_len(),
                    entries(p)
                );
                assert!(entries(p) > 0, "budget {budget}: an empty part");
                assert_eq!(
                    (p.window_start_unix_ns, p.window_end_unix_ns, &p.host_id),
                    (
                        whole.window_start_unix_ns,
                        whole.window_end_unix_ns,
                        &whole.host_id
                    )
                );
            }
            // Order kept: the parts' entries, joined, are the batch's.
            let joined = |f: fn(&v1::DeltaBatch) -> Vec<String>| -> Vec<String> {
                parts.iter().flat_map(f).collect()
            };
            assert_eq!(
                joined(|p| p.files.iter().map(|f| f.path.clone()).collect()),
                whole
                    .files
                    .iter()
                    .map(|f| f.path.clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                joined(|p| p.units.iter().map(|u| u.name.clone()).collect()),
                whole
                    .units
                    .iter()
                    .map(|u| u.name.clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                joined(|p| p.processes.iter().map(|p| p.pid.to_string()).collect()),
                whole
                    .processes
                    .iter()
                    .map(|p| p.pid.to_string())
                    .collect::<Vec<_>>()
            );
            // Flags, seqs, activity and counters.
            let last = parts.len() - 1;
            for (i, p) in parts.iter().enumerate() {
                assert_eq!(p.seq, b.header.seq + i as u64);
                assert_eq!(p.resync, i == 0, "budget {budget}: part {i}");
                assert_eq!(p.more, i < last, "budget {budget}: part {i}");
                let (activity, counters) = if i == last {
                    (whole.activity, whole.counters)
                } else {
                    (Some(Default::default()), Some(Default::default()))
                };
                assert_eq!((p.activity, p.counters), (activity, counters));
            }
            // Folding the parts gives what folding the whole gives, over any earlier state.
            let parts: Vec<Batch> = parts
                .into_iter()
                .map(|p| batch_from_wire(p).unwrap())
                .collect();
            let mut before = HostModel::default();
            before.apply_batch(&sample().delta);
            assert_eq!(
                fold(&before, parts.clone()),
                fold(&before, [b.clone()]),
                "budget {budget}"
            );
            // An ordinary batch in parts: no part resets the model.
            let mut plain = b.clone();
            plain.header.resync = false;
            let plain_parts = batch_to_wire_parts(&plain, budget);
            assert!(plain_parts.iter().all(|p| !p.resync));
            assert_eq!(
                fold(
                    &before,
                    plain_parts.into_iter().map(|p| batch_from_wire(p).unwrap())
                ),
                fold(&before, [plain]),
                "budget {budget}"
            );
        }
    }

    #[test]
    fn a_batch_within_the_budget_is_one_part_an_empty_one_too() {
        let b = large(10, 100);
        let whole = batch_to_wire(&b);
        assert_eq!(
            batch_to_wire_parts(&b, DEFAULT_PART_BYTES),
            vec![whole.clone()]
        );
        assert_eq!(batch_to_wire_parts(&b, whole.encoded_len()), vec![whole]);
        let mut empty = sample();
        empty.header.resync = true;
        empty.delta = DeltaBatch {
            activity: empty.delta.activity,
            ..DeltaBatch::default()
        };
        assert_eq!(batch_to_wire_parts(&empty, 1), vec![batch_to_wire(&empty)]);
    }

    #[test]
    fn an_entry_over_the_budget_goes_alone() {
        let mut b = large(6, 100);
        let huge = FileDelta::Upsert {
            path: "/etc/big/huge".into(),
            state: text(&"y".repeat(50_000)),
        };
        b.delta.files.insert(3, huge.clone());
        let parts = batch_to_wire_parts(&b, 10_000);
        let alone: Vec<_> = parts
            .iter()
            .filter(|p| p.files.iter().any(|f| f.path == "/etc/big/huge"))
            .collect();
        assert_eq!(alone.len(), 1);
        assert_eq!(entries(alone[0]), 1, "the large entry shares its part");
        assert!(alone[0].encoded_len() > 10_000);
        // What comes before and after it is packed around it, in order.
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].files.len(), 3);
        assert_eq!(
            batch_from_wire(parts[1].clone()).unwrap().delta.files,
            vec![huge]
        );
        assert!(parts[1].more && !parts[1].resync && parts[0].resync);
    }

    #[test]
    fn models_round_trip() {
        let mut m = HostModel::default();
        m.apply_batch(&sample().delta);
        assert!(!m.files.is_empty() && !m.units.is_empty());
        assert!(!m.packages.is_empty() && !m.users.is_empty() && !m.groups.is_empty());
        assert_eq!(model_from_wire(model_to_wire(&m)), Ok(m));
    }
}
