//! The model's types, the changes folded into it, and the batch cut from a window.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    accounts::{Group, User},
    os::OsRelease,
    packages::Package,
    units::UnitType,
};

/// A live process.
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
    /// Executable path.
    pub exe: String,
    /// Arguments.
    pub argv: Vec<String>,
    /// cgroup v2 id.
    pub cgroup_id: u64,
}

/// What kind of file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// What of a regular file's bytes the model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Not a regular file.
    None,
    /// The whole file, valid UTF-8, within the size cap.
    Text(String),
    /// A secret: only metadata and hash leave the host.
    Redacted,
    /// Larger than the cap: hash only.
    TooLarge,
    /// Not UTF-8: hash only.
    Binary,
}

/// A file's state as observed at batch cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Kind.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of a regular file's bytes.
    pub sha256: Option<String>,
    /// The content, or why it is not carried.
    pub content: Content,
    /// A symlink's target.
    pub link_target: Option<String>,
}

/// What the daemon knows at run time about a unit, from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRuntime {
    /// Its own cgroup's path.
    pub cgroup: String,
    /// Its own cgroup's id (the directory's inode number), which processes carry.
    pub cgroup_id: u64,
    /// The cgroup has tasks.
    pub active: bool,
    /// The first process that entered the cgroup while it was empty.
    pub main_pid: Option<u32>,
}

/// A unit as the twin needs it: definition (from files) and state (from cgroups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Full name, e.g. `nginx.service`.
    pub name: String,
    /// Type, from the suffix.
    pub unit_type: Option<UnitType>,
    /// Running state, when the unit has (or had) a cgroup.
    pub runtime: Option<UnitRuntime>,
    /// The unit file in force (highest-precedence directory; a template for instances).
    pub fragment_path: Option<String>,
    /// Drop-in `*.conf` files, in precedence order.
    pub dropins: Vec<String>,
    /// The `*.wants/` and `*.requires/` symlinks that enable it.
    pub enabled_by: BTreeSet<String>,
}

impl Unit {
    /// Whether its cgroup has tasks.
    pub fn active(&self) -> bool {
        self.runtime.as_ref().is_some_and(|r| r.active)
    }
}

/// Something that happened on the host, as the engine folds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process appeared or ran a new program (fork, exec, or the start-up scan).
    ProcessStarted(Process),
    /// A process exited.
    ProcessExited {
        /// Its pid.
        pid: u32,
    },
    /// A cgroup of the unit hierarchy was created.
    CgroupCreated {
        /// Path relative to the hierarchy root.
        path: String,
        /// Its id.
        id: u64,
    },
    /// A cgroup of the unit hierarchy was removed.
    CgroupRemoved {
        /// Path relative to the hierarchy root.
        path: String,
    },
    /// A cgroup got its first task (`true`) or lost its last (`false`).
    CgroupPopulated {
        /// Path relative to the hierarchy root.
        path: String,
        /// Its id.
        id: u64,
        /// Whether it has tasks now.
        populated: bool,
    },
    /// A process moved into a cgroup.
    TaskAttached {
        /// Path relative to the hierarchy root.
        path: String,
        /// The process.
        pid: u32,
    },
    /// A path's state as read at batch cut (`None`: it does not exist).
    FileObserved {
        /// Absolute path.
        path: String,
        /// Its state.
        state: Option<FileState>,
    },
    /// The whole package set, read from dpkg's status file at batch cut (when it changed).
    PackagesObserved(BTreeMap<String, Package>),
    /// The host's distribution and release, read from `os-release` at batch cut (when it
    /// changed and holds one the model may hold).
    OsObserved(OsRelease),
    /// Every user and group, read from the account files at batch cut (when one changed).
    AccountsObserved {
        /// Users by name.
        users: BTreeMap<String, User>,
        /// Groups by name.
        groups: BTreeMap<String, Group>,
    },
}

/// The replicated state of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostModel {
    /// Live processes by pid.
    pub processes: BTreeMap<u32, Process>,
    /// Tracked files by absolute path.
    pub files: BTreeMap<String, FileState>,
    /// Units that have (or had, until their cgroup went away) a cgroup, by name.
    pub units: BTreeMap<String, UnitRuntime>,
    /// Packages dpkg knows (not `not-installed`), by `name:arch`.
    pub packages: BTreeMap<String, Package>,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
    /// The distribution and release, when known.
    pub os: Option<OsRelease>,
}

/// The entries of `files` below directory `dir` (not `dir` itself), in path order: one range
/// of the sorted map, not a scan.
pub fn files_below<'a>(
    files: &'a BTreeMap<String, FileState>,
    dir: &str,
) -> impl Iterator<Item = (&'a String, &'a FileState)> + 'a {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    files
        .range(prefix.clone()..)
        .take_while(move |(p, _)| p.starts_with(&prefix))
}

/// A net change to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDelta {
    /// The path now has this state.
    Upsert {
        /// Absolute path.
        path: String,
        /// New state.
        state: FileState,
    },
    /// The path no longer exists.
    Remove {
        /// Absolute path.
        path: String,
    },
}

/// A net change to one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitDelta {
    /// The unit now looks like this.
    Upsert(Unit),
    /// The unit is gone (no cgroup and no unit file).
    Remove {
        /// Its name.
        name: String,
    },
}

/// A net change to one long-lived process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessDelta {
    /// Started (or changed program) and still running at the cut.
    Upsert(Process),
    /// Was running before the window and exited in it.
    Remove {
        /// Its pid.
        pid: u32,
    },
}

/// A net change to one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageDelta {
    /// The package is now installed (or in another state) at this version.
    Upsert(Package),
    /// The package is gone (purged, or removed without config files left).
    Remove {
        /// Its name.
        name: String,
        /// Its architecture.
        arch: String,
    },
}

/// A net change to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDelta {
    /// The user now looks like this.
    Upsert(User),
    /// The user is gone.
    Remove {
        /// Its name.
        name: String,
    },
}

/// A net change to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupDelta {
    /// The group now looks like this.
    Upsert(Group),
    /// The group is gone.
    Remove {
        /// Its name.
        name: String,
    },
}

/// Process activity of a window, including what left no net change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Process starts (forks and execs of new pids) seen.
    pub started: u64,
    /// Process exits seen.
    pub exited: u64,
    /// Processes that started and exited inside the window.
    pub short_lived: u64,
    /// Changes folded in the window.
    pub changes: u64,
}

/// The net changes of one window. Empty deltas make a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaBatch {
    /// File changes, by path.
    pub files: Vec<FileDelta>,
    /// Unit changes, by name.
    pub units: Vec<UnitDelta>,
    /// Long-lived process changes, by pid.
    pub processes: Vec<ProcessDelta>,
    /// Package changes, by `name:arch`.
    pub packages: Vec<PackageDelta>,
    /// User changes, by name.
    pub users: Vec<UserDelta>,
    /// Group changes, by name.
    pub groups: Vec<GroupDelta>,
    /// The host's distribution and release, when it changed (the first batch has it).
    pub os: Option<OsRelease>,
    /// What happened, net or not.
    pub activity: Activity,
}

impl DeltaBatch {
    /// True when the window left no net change.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.units.is_empty()
            && self.processes.is_empty()
            && self.packages.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.os.is_none()
    }
}

/// Where a batch comes from and where it sits in its host's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchHeader {
    /// The host it describes.
    pub host_id: String,
    /// The host's boot (a reboot changes it).
    pub boot_id: String,
    /// 1, 2, 3, … per host.
    pub seq: u64,
    /// Start of the window, nanoseconds since the Unix epoch.
    pub window_start_unix_ns: i64,
    /// End of the window (the cut), nanoseconds since the Unix epoch.
    pub window_end_unix_ns: i64,
    /// The daemon's loss counters at the cut.
    pub produced: u64,
    /// Records the daemon received.
    pub received: u64,
    /// Records lost to a full ring buffer.
    pub dropped: u64,
    /// The daemon lost history and this batch restates the whole model (on a batch sent in
    /// parts, only the first part says so; the others are upserts that complete it).
    pub resync: bool,
    /// This batch is one part of a larger one, continued at the next seq; false on a batch
    /// sent whole and on the last part. A state at a seq with `more` is only partly restated
    /// or changed, so a twin never stops there.
    pub more: bool,
}

/// A batch with its header, as it is sent and stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Provenance and position.
    pub header: BatchHeader,
    /// The net changes.
    pub delta: DeltaBatch,
}
