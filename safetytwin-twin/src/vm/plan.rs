//! What applying one batch means inside the twin, decided without touching it (pure, no I/O).
//!
//! Files, directories and symlinks to create or replace travel as one tar archive, extracted
//! in the guest with their modes and numeric owners: one agent write and one exec, whatever the
//! number of files. Removals are one `rm`. `systemctl daemon-reload` runs only when a unit
//! file changed; then only the units whose state or definition changed are started, stopped
//! or restarted. The health check afterwards covers every unit the batch says is active.
//! Accounts come first, so that files and units find their owners: the host's groups and
//! users are created, or brought to the host's ids when the image has them (`groupadd` or
//! `groupmod`, `useradd` or `usermod`, non-unique ids allowed), always with the password
//! locked; then group members are set and removed accounts deleted. Each kind is one fixed
//! `/bin/sh -c` script that takes the accounts as its arguments (never as shell text) and
//! names on stderr each account the tools refuse, which is skipped and reported like a file.
//!
//! [`ApplyPlan::steps`] is the whole ordered list of guest actions of one apply, as data: each
//! [`Step`] uploads or runs [`Command`]s, and each command carries its argv and the [`Judge`]
//! of its exit and output ([`Judge::verdict`]); the applier only runs them. Nothing from the
//! wire reaches an argv unchecked: paths are normalized (`safetytwin_model::paths`), so
//! `/etc//passwd` cannot slip past an exclusion; unit names follow systemd's grammar and never
//! start with `-`; operands always follow `--`. A removal that would take an excluded path
//! with it (`/etc` holds `/etc/passwd`) and a write below a symlink the host defines are
//! skipped and reported: the guest would follow the link. An item the guest itself refuses
//! (one archive entry tar cannot extract, one path rm cannot remove) is skipped and reported
//! ([`Verdict::Refused`]) rather than failing, and so blocking, every later apply; a failed
//! stop is tolerated ([`Verdict::Tolerated`]).

use std::collections::{BTreeMap, BTreeSet};

use safetytwin_model::{
    Content, DeltaBatch, FileDelta, FileKind, FileState, Group, GroupDelta, HostModel, Package,
    PackageDelta, PackageStatus, UnitDelta, User, UserDelta, accounts, globs,
    packages::{self, Alternative},
    paths,
    unitfiles::{UNIT_DIRS, unit_for_path},
};

use super::ExecOutput;

/// Where the archive of written files lands in the guest (tmpfs, gone at reboot).
pub const GUEST_ARCHIVE: &str = "/run/safetytwin-apply.tar";

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` less the NUL).
const UNIT_NAME_MAX: usize = 255;

/// Unit types systemd knows (the suffix of every unit name).
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Host files never applied to the twin by default: they describe the host's hardware,
/// identity and accounts, and the twin keeps its own (it would not boot, or would lose its
/// system users, with the host's). Operators add more with `--twin-exclude`.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/mtab",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/etc/resolv.conf",
    "/etc/passwd",
    "/etc/passwd-",
    "/etc/group",
    "/etc/group-",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/subuid",
    "/etc/subgid",
    "/etc/ld.so.cache",
    "/etc/adjtime",
    "/etc/initramfs-tools/**",
    "/etc/kernel/**",
    "/etc/default/grub",
    "/etc/apt/**",
    "/etc/network/**",
    "/etc/udev/**",
    "/etc/modprobe.d/**",
    "/etc/modules-load.d/**",
    "/etc/systemd/system/getty.target.wants/**",
    "/etc/systemd/system/serial-getty@.service.d/**",
];

/// What to do with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// `systemctl start`
    Start,
    /// `systemctl restart` (its definition changed while it runs)
    Restart,
    /// `systemctl stop`
    Stop,
}

impl Verb {
    /// The `systemctl` verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Restart => "restart",
            Verb::Stop => "stop",
        }
    }
}

/// Why a changed path is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Matches an exclusion pattern.
    Excluded,
    /// Its content does not leave the host (a secret), so the twin cannot have it.
    Secret,
    /// Only its hash left the host (larger than the cap, or not UTF-8).
    ContentNotCarried,
    /// A fifo, socket or device.
    NotAFile,
    /// Not an absolute, normalized, printable path (refused at ingest; an older store may
    /// still hold one).
    BadPath,
    /// Removing it would remove an excluded path below it (or the root).
    HoldsExcluded,
    /// Below a path the host has as a symlink: the guest would write where the link points.
    BelowSymlink,
    /// A symlink without a target, or one no link may hold.
    BadLinkTarget,
    /// A unit name outside systemd's grammar, or one that could pass for an option.
    BadUnitName,
    /// A user or group the model may not hold (refused at ingest; an older store may still
    /// hold one).
    BadAccount,
    /// A package name, architecture or version outside Debian policy (refused at ingest; an
    /// older store may still hold one).
    BadPackage,
    /// A package in a state dpkg is still working on (half-installed, unpacked, triggers):
    /// the twin follows once it settles.
    PackageInFlux,
    /// The package pool cannot obtain this version (the sources no longer carry it).
    PackageUnavailable,
    /// A dependency the host held before the twin's first apply, at a version the sources
    /// no longer carry: the sources' version is installed in its place.
    NearestVersion,
}

impl Skip {
    /// A word for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Excluded => "excluded",
            Skip::Secret => "secret",
            Skip::ContentNotCarried => "content not carried",
            Skip::NotAFile => "not a regular file, directory or symlink",
            Skip::BadPath => "not a normalized absolute path",
            Skip::HoldsExcluded => "removing it would remove excluded paths",
            Skip::BelowSymlink => "below a symlink",
            Skip::BadLinkTarget => "bad link target",
            Skip::BadUnitName => "not a valid unit name",
            Skip::BadAccount => "not a valid user or group",
            Skip::BadPackage => "not a valid package",
            Skip::PackageInFlux => "package state in flux",
            Skip::PackageUnavailable => "package version cannot be obtained",
            Skip::NearestVersion => {
                "dependency's version cannot be obtained: the sources' version installed instead"
            }
        }
    }

    /// Whether this skip is a refusal operators should see in the twin's status, rather than
    /// the policy (exclusions, secrets, content not carried) working as meant.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Skip::BadPath
                | Skip::HoldsExcluded
                | Skip::BelowSymlink
                | Skip::BadLinkTarget
                | Skip::BadUnitName
                | Skip::BadAccount
                | Skip::BadPackage
                | Skip::PackageUnavailable
                | Skip::NearestVersion
        )
    }
}

/// The steps that bring the twin from the state before a batch to the state after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    /// Packages to install, remove and purge (decided against the guest's own package set,
    /// with the `.deb`s from the pool: [`packages`]).
    pub packages: PackagePlan,
    /// Users and groups to create, change and delete.
    pub accounts: AccountPlan,
    /// Paths to remove (recursively: a removed directory's children went with it).
    pub remove: Vec<String>,
    /// Upserted paths carried by `archive`, parents first.
    pub write: Vec<String>,
    /// The tar archive of `write` (empty when `write` is).
    pub archive: Vec<u8>,
    /// Changed paths and units left out, and why.
    pub skipped: Vec<(String, Skip)>,
    /// A unit file, drop-in or enablement link changed.
    pub daemon_reload: bool,
    /// Units to act on, by name.
    pub units: Vec<(String, Verb)>,
    /// Units that must be active afterwards (the health check).
    pub expect_active: Vec<String>,
}

impl ApplyPlan {
    /// Nothing to do in the guest: no guest call, no snapshot.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.accounts.is_empty()
            && self.remove.is_empty()
            && self.write.is_empty()
            && !self.daemon_reload
            && self.units.is_empty()
    }

    /// Number of things the plan changes in the guest (for per-item latency).
    pub fn items(&self) -> usize {
        self.packages.items()
            + self.accounts.items.len()
            + self.remove.len()
            + self.write.len()
            + self.units.len()
    }

    /// The guest command removing [`ApplyPlan::remove`].
    pub fn remove_argv(&self) -> Vec<String> {
        let mut argv = argv(&["/bin/rm", "-rf", "--"]);
        argv.extend(self.remove.iter().cloned());
        argv
    }

    /// The guest command checking that [`ApplyPlan::expect_active`] runs.
    pub fn health_argv(&self) -> Vec<String> {
        let mut argv = argv(&["/bin/systemctl", "is-active", "--"]);
        argv.extend(self.expect_active.iter().cloned());
        argv
    }

    /// The written paths tar names in `stderr` (one line per entry it could not extract, then
    /// going on with the others), with its message.
    pub fn refused_by_tar(&self, stderr: &str) -> Vec<(String, String)> {
        named_in(stderr, &self.write, tar_spelling)
    }

    /// The removed paths rm names in `stderr` (`cannot remove '/x': …`), with its message.
    pub fn refused_by_rm(&self, stderr: &str) -> Vec<(String, String)> {
        named_in(stderr, &self.remove, rm_spelling)
    }
}

/// The kind of a step, the label of its duration in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Installing, removing and purging packages.
    Packages,
    /// Stopping the units the host stopped, before anything else changes: as dpkg stops a
    /// service before it removes its files, so a stop never runs without its program.
    Stop,
    /// Creating, changing and deleting users and groups.
    Accounts,
    /// Removing paths.
    Remove,
    /// Uploading and extracting the archive of written files.
    Write,
    /// `systemctl daemon-reload`.
    DaemonReload,
    /// Starting and restarting units.
    Units,
    /// Checking that the units that should run are active.
    Health,
}

impl StepKind {
    /// Every kind, in the order of a plan.
    pub const ALL: [StepKind; 8] = [
        StepKind::Stop,
        StepKind::Packages,
        StepKind::Accounts,
        StepKind::Remove,
        StepKind::Write,
        StepKind::DaemonReload,
        StepKind::Units,
        StepKind::Health,
    ];
}

/// One timed step of an apply: what the twin's status lists and the metrics time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'p> {
    /// Its kind.
    pub kind: StepKind,
    /// Its description in the status (`write 3 paths`).
    pub label: String,
    /// The guest actions, run in order: all of them run unless the guest agent fails, then
    /// the step is judged by their verdicts.
    pub actions: Vec<Action<'p>>,
}

/// One guest call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'p> {
    /// Write `bytes` to `path` in the guest.
    Upload {
        /// Where in the guest.
        path: &'p str,
        /// What.
        bytes: &'p [u8],
    },
    /// Run one program and wait for it.
    Exec(Command<'p>),
    /// Run independent programs at once and wait for all of them.
    ExecAll(Vec<Command<'p>>),
}

/// A program to run in the guest and how its exit and output are judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'p> {
    /// argv[0] is an absolute path; operands follow `--`.
    pub argv: Vec<String>,
    /// How its result is judged.
    pub judge: Judge<'p>,
}

/// How a program's exit and output are judged ([`Judge::verdict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judge<'p> {
    /// Exit 0, or the step fails (`{what} failed (exit N): stderr`).
    Exit(&'static str),
    /// Like [`Judge::Exit`], except that a failing exit whose stderr names some of `items`
    /// (GNU tar and rm report each entry they cannot handle and go on with the others) skips
    /// and reports those items rather than failing: a failed batch would be retried, and fail,
    /// with every later change.
    Items {
        /// The program, for messages.
        what: &'static str,
        /// The items it was given.
        items: &'p [String],
        /// How it names one in its messages.
        named: Naming,
    },
    /// A unit's verb: a failing start or restart fails the step; a failing stop (of a unit
    /// the twin never had, say) is tolerated and only logged.
    Unit(&'p str, Verb),
    /// `systemctl is-active`: one state line per unit, every one `active`.
    Health(&'p [String]),
    /// Nothing fails it, not even the guest agent (deleting the archive).
    Ignore,
}

/// How a program names an item in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// tar: `tar: etc/x: Cannot open: …` (relative to `/`).
    Tar,
    /// rm: `rm: cannot remove '/etc/x': …`.
    Rm,
    /// The account scripts: `refused: user alice: …`.
    Account,
    /// dpkg: `dpkg: error processing package tree (--install):`, or `… archive /run/x.deb …`.
    Dpkg,
}

/// What a program's result means for the apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It did what it should.
    Ok,
    /// It did, except for these items (with the guest's message): skipped and reported.
    Refused(Vec<(String, String)>),
    /// It failed in a way that does not fail the apply: logged.
    Tolerated(String),
    /// It failed, and so does the step.
    Failed(String),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

impl Judge<'_> {
    /// Whether the guest agent failing to run it is fine.
    pub fn ignores_agent(&self) -> bool {
        matches!(self, Judge::Ignore)
    }

    /// What the program's exit code and output mean.
    pub fn verdict(&self, out: &ExecOutput) -> Verdict {
        let failed = |what: &str| {
            Verdict::Failed(format!(
                "{what} failed (exit {}): {}",
                out.code,
                text(&out.stderr)
            ))
        };
        match self {
            Judge::Ignore => Verdict::Ok,
            _ if out.success() && !matches!(self, Judge::Health(_)) => Verdict::Ok,
            Judge::Exit(what) => failed(what),
            Judge::Items { what, items, named } => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let refused = match named {
                    Naming::Tar => named_in(&stderr, items, tar_spelling),
                    Naming::Rm => named_in(&stderr, items, rm_spelling),
                    Naming::Account => named_in(&stderr, items, |i| format!("refused: {i}: ")),
                    Naming::Dpkg => named_in(&stderr, items, dpkg_spelling),
                };
                if refused.is_empty() {
                    failed(what)
                } else {
                    Verdict::Refused(refused)
                }
            }
            Judge::Unit(unit, verb) => {
                let why = format!("{} {unit}: {}", verb.as_str(), text(&out.stderr));
                if *verb == Verb::Stop {
                    Verdict::Tolerated(why)
                } else {
                    Verdict::Failed(why)
                }
            }
            Judge::Health(units) => {
                let states = String::from_utf8_lossy(&out.stdout);
                let bad: Vec<String> = units
                    .iter()
                    .zip(states.lines().chain(std::iter::repeat("unknown")))
                    .filter(|(_, s)| *s != "active")
                    .map(|(u, s)| format!("{u} is {s}"))
                    .collect();
                if bad.is_empty() {
                    Verdict::Ok
                } else {
                    Verdict::Failed(format!("health check: {}", bad.join(", ")))
                }
            }
        }
    }
}

impl ApplyPlan {
    /// Every guest step of this plan, in order: the units to stop (at once), packages,
    /// accounts, remove, write (upload the archive, extract it, delete it), daemon-reload, the
    /// units to start (at once), the health check. Steps with nothing to do are left out, so
    /// an empty plan has none.
    pub fn steps(&self) -> Vec<Step<'_>> {
        let mut steps = Vec::new();
        let unit_commands = |stop: bool| -> Vec<Command<'_>> {
            self.units
                .iter()
                .filter(|(_, verb)| (*verb == Verb::Stop) == stop)
                .map(|(unit, verb)| Command {
                    argv: unit_argv(unit, *verb),
                    judge: Judge::Unit(unit, *verb),
                })
                .collect()
        };
        let stops = unit_commands(true);
        if !stops.is_empty() {
            steps.push(Step {
                kind: StepKind::Stop,
                label: format!("stop {} units", stops.len()),
                actions: vec![Action::ExecAll(stops)],
            });
        }
        if !self.packages.is_empty() {
            steps.push(self.packages.step());
        }
        if !self.accounts.is_empty() {
            steps.push(Step {
                kind: StepKind::Accounts,
                label: format!("{} accounts", self.accounts.items.len()),
                // One after the other: the tools lock the account files.
                actions: self
                    .accounts
                    .commands()
                    .into_iter()
                    .map(|argv| {
                        Action::Exec(Command {
                            argv,
                            judge: Judge::Items {
                                what: "account script",
                                items: &self.accounts.items,
                                named: Naming::Account,
                            },
                        })
                    })
                    .collect(),
            });
        }
        if !self.remove.is_empty() {
            steps.push(Step {
                kind: StepKind::Remove,
                label: format!("remove {} paths", self.remove.len()),
                actions: vec![Action::Exec(Command {
                    argv: self.remove_argv(),
                    judge: Judge::Items {
                        what: "rm",
                        items: &self.remove,
                        named: Naming::Rm,
                    },
                })],
            });
        }
        if !self.write.is_empty() {
            steps.push(Step {
                kind: StepKind::Write,
                label: format!("write {} paths", self.write.len()),
                actions: vec![
                    Action::Upload {
                        path: GUEST_ARCHIVE,
                        bytes: &self.archive,
                    },
                    Action::Exec(Command {
                        argv: extract_argv(),
                        judge: Judge::Items {
                            what: "tar",
                            items: &self.write,
                            named: Naming::Tar,
                        },
                    }),
                    Action::Exec(Command {
                        argv: cleanup_argv(),
                        judge: Judge::Ignore,
                    }),
                ],
            });
        }
        if self.daemon_reload {
            steps.push(Step {
                kind: StepKind::DaemonReload,
                label: "daemon-reload".to_owned(),
                actions: vec![Action::Exec(Command {
                    argv: daemon_reload_argv(),
                    judge: Judge::Exit("systemctl daemon-reload"),
                })],
            });
        }
        let starts = unit_commands(false);
        if !starts.is_empty() {
            steps.push(Step {
                kind: StepKind::Units,
                label: format!("{} units", starts.len()),
                actions: vec![Action::ExecAll(starts)],
            });
        }
        if !self.expect_active.is_empty() {
            steps.push(Step {
                kind: StepKind::Health,
                label: "health check".to_owned(),
                actions: vec![Action::Exec(Command {
                    argv: self.health_argv(),
                    judge: Judge::Health(&self.expect_active),
                })],
            });
        }
        steps
    }
}

/// The package changes of one apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagePlan {
    /// Packages to install (or up- or downgrade) from the pool: each with its `.deb`'s guest
    /// path and bytes, filled by the applier ([`PackagePlan::add_deb`]).
    pub install: Vec<(Package, String, Vec<u8>)>,
    /// Packages the host removed keeping their configuration files (`dpkg --remove`).
    pub remove: Vec<String>,
    /// Packages the host purged (`dpkg --purge`).
    pub purge: Vec<String>,
    /// How dpkg may name each of the above in an error (name, `name:arch`, archive path).
    pub items: Vec<String>,
}

/// The guest directory of uploaded packages (tmpfs, gone at reboot).
const GUEST_DEBS: &str = "/run/safetytwin-debs";

/// What dpkg calls a package on its command line and in its messages: `name:arch`, or the
/// bare name for an architecture-independent one.
fn dpkg_name(name: &str, arch: &str) -> String {
    match arch {
        "" | "all" => name.to_owned(),
        arch => format!("{name}:{arch}"),
    }
}

fn dpkg_spelling(item: &str) -> String {
    if item.starts_with('/') {
        format!("processing archive {item} (")
    } else {
        format!("processing package {item} (")
    }
}

/// The guest's installed packages, from `dpkg-query -W -f` of [`PACKAGES_QUERY`]: by
/// [`Package::key`], `not-installed` left out; lines that are not a checked package skipped.
pub fn parse_dpkg_query(text: &str) -> BTreeMap<String, Package> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let [name, arch, version, status] = line.split('\t').collect::<Vec<_>>()[..] else {
            continue;
        };
        let Some(status) = PackageStatus::parse(status) else {
            continue;
        };
        let p = Package {
            name: name.to_owned(),
            arch: arch.to_owned(),
            version: version.to_owned(),
            status,
        };
        if packages::check(&p).is_ok() {
            out.insert(p.key(), p);
        }
    }
    out
}

/// The guest command listing its packages for [`parse_dpkg_query`].
pub fn packages_query_argv() -> Vec<String> {
    argv(&[
        "/usr/bin/dpkg-query",
        "-W",
        "-f",
        "${Package}\t${Architecture}\t${Version}\t${db:Status-Status}\n",
    ])
}

/// The package changes that bring a twin holding `guest` to what `batch` says the host holds
/// (what the guest already has is left alone). Installs come without their `.deb`s: the
/// applier adds each from the pool, or skips it as unavailable.
pub fn packages(
    batch: &DeltaBatch,
    guest: &BTreeMap<String, Package>,
    skipped: &mut Vec<(String, Skip)>,
) -> (PackagePlan, Vec<Package>) {
    let mut plan = PackagePlan::default();
    let mut wanted = Vec::new();
    let installed = |key: &str| {
        guest
            .get(key)
            .filter(|g| g.status != PackageStatus::ConfigFiles)
    };
    for d in &batch.packages {
        match d {
            PackageDelta::Upsert(p) if packages::check(p).is_err() => {
                skipped.push((format!("package {}", p.key()), Skip::BadPackage));
            }
            PackageDelta::Upsert(p) => match p.status {
                PackageStatus::Installed => {
                    if installed(&p.key()).is_none_or(|g| {
                        g.version != p.version || g.status != PackageStatus::Installed
                    }) {
                        wanted.push(p.clone());
                    }
                }
                PackageStatus::ConfigFiles => {
                    if installed(&p.key()).is_some() {
                        let n = dpkg_name(&p.name, &p.arch);
                        plan.items.push(n.clone());
                        plan.remove.push(n);
                    }
                }
                _ => skipped.push((format!("package {}", p.key()), Skip::PackageInFlux)),
            },
            PackageDelta::Remove { name, arch } => {
                let key = safetytwin_model::packages::key(name, arch);
                let probe = Package {
                    name: name.clone(),
                    arch: arch.clone(),
                    version: "0".into(),
                    status: PackageStatus::Installed,
                };
                if packages::check(&probe).is_err() {
                    skipped.push((format!("package {key}"), Skip::BadPackage));
                } else if guest.contains_key(&key) {
                    let n = dpkg_name(name, arch);
                    plan.items.push(n.clone());
                    plan.purge.push(n);
                }
            }
        }
    }
    (plan, wanted)
}

/// The host's package to install so that one dependency `group` of `of` holds in a guest that
/// satisfies none of the group (no alternative installed at a version its relation accepts):
/// the first alternative the host has installed, of `of`'s architecture if there is one.
/// `None` when the guest satisfies the group, or the host has none of it (a virtual package,
/// provided by one the guest holds).
pub fn unmet<'h>(
    group: &[Alternative],
    of: &Package,
    host: &'h BTreeMap<String, Package>,
    guest: &BTreeMap<String, Package>,
) -> Option<&'h Package> {
    fn installed<'m>(
        m: &'m BTreeMap<String, Package>,
        name: &str,
    ) -> impl Iterator<Item = &'m Package> + 'm {
        let prefix = format!("{name}:");
        m.range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, p)| p)
            .filter(|p| p.status == PackageStatus::Installed)
    }
    let accepts = |alt: &Alternative, p: &Package| {
        alt.version
            .as_ref()
            .is_none_or(|(op, v)| op.holds(deb_version::compare_versions(&p.version, v)))
    };
    if group
        .iter()
        .any(|alt| installed(guest, &alt.name).any(|p| accepts(alt, p)))
    {
        return None;
    }
    group.iter().find_map(|alt| {
        let mut candidates: Vec<&Package> = installed(host, &alt.name).collect();
        candidates.sort_by_key(|p| p.arch != of.arch);
        candidates.first().copied()
    })
}

impl PackagePlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty() && self.purge.is_empty()
    }

    /// Packages changed.
    pub fn items(&self) -> usize {
        self.install.len() + self.remove.len() + self.purge.len()
    }

    /// Adds `p`'s `.deb` (`bytes`, whose SHA-256 is `sha256`) to the install.
    pub fn add_deb(&mut self, p: Package, sha256: &str, bytes: Vec<u8>) {
        let path = format!("{GUEST_DEBS}/{sha256}.deb");
        self.items.push(dpkg_name(&p.name, &p.arch));
        self.items.push(p.name.clone());
        self.items.push(path.clone());
        self.install.push((p, path, bytes));
    }

    /// The step: upload the `.deb`s, install them in one dpkg run (which orders them by their
    /// dependencies), keeping the host's configuration files; remove, purge; delete the
    /// uploads. dpkg goes on past a package it cannot install; that one is skipped and reported.
    fn step(&self) -> Step<'_> {
        let dpkg = |args: &[&str]| {
            let mut a = argv(&[
                "/usr/bin/env",
                "DEBIAN_FRONTEND=noninteractive",
                "/usr/bin/dpkg",
                "--force-confold",
                "--force-confdef",
            ]);
            a.extend(argv(args));
            a
        };
        let judged = |argv| {
            Action::Exec(Command {
                argv,
                judge: Judge::Items {
                    what: "dpkg",
                    items: &self.items,
                    named: Naming::Dpkg,
                },
            })
        };
        let mut actions = Vec::new();
        if !self.install.is_empty() {
            actions.push(Action::Exec(Command {
                argv: argv(&["/bin/mkdir", "-p", "--", GUEST_DEBS]),
                judge: Judge::Exit("mkdir"),
            }));
            for (_, path, bytes) in &self.install {
                actions.push(Action::Upload { path, bytes });
            }
            let mut install = dpkg(&["--install", "--"]);
            install.extend(self.install.iter().map(|(_, path, _)| path.clone()));
            actions.push(judged(install));
            actions.push(Action::Exec(Command {
                argv: argv(&["/bin/rm", "-rf", "--", GUEST_DEBS]),
                judge: Judge::Ignore,
            }));
        }
        for (verb, names) in [("--remove", &self.remove), ("--purge", &self.purge)] {
            if !names.is_empty() {
                let mut a = dpkg(&[verb, "--"]);
                a.extend(names.iter().cloned());
                actions.push(judged(a));
            }
        }
        Step {
            kind: StepKind::Packages,
            label: format!(
                "packages: {} install, {} remove, {} purge",
                self.install.len(),
                self.remove.len(),
                self.purge.len()
            ),
            actions,
        }
    }
}

/// The account changes of one apply, by kind, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountPlan {
    /// Groups to create, or to bring to the host's gid when the image has them.
    pub groups: Vec<Group>,
    /// Users to create, or to bring to the host's entry; the password is locked either way.
    pub users: Vec<User>,
    /// Users to delete (their homes stay).
    pub delete_users: Vec<String>,
    /// Groups to delete.
    pub delete_groups: Vec<String>,
    /// Every account above as the scripts report it (`group sudo`, `user alice`).
    pub items: Vec<String>,
}

/// The most accounts one guest command takes (its argv stays far below `ARG_MAX`).
const ACCOUNTS_PER_COMMAND: usize = 256;

/// Shared by the account scripts: `fail ITEM OUTPUT` reports one account on one stderr line,
/// `refused: ITEM: what the tool said`, and makes the script exit 1 after the others.
const ACCOUNT_PRELUDE: &str = "r=0; fail() { printf 'refused: %s: %s\\n' \"$1\" \"$(printf %s \"$2\" | tr '\\n' ' ')\" >&2; r=1; }; ";

/// Creates or modifies groups: arguments `name gid`, repeated.
const GROUPS_SCRIPT: &str = "while [ $# -ge 2 ]; do n=$1; g=$2; shift 2; \
     if /usr/bin/getent group \"$n\" >/dev/null; then t=/usr/sbin/groupmod; else t=/usr/sbin/groupadd; fi; \
     out=$($t -o -g \"$g\" -- \"$n\" 2>&1) || fail \"group $n\" \"$out\"; done; exit $r";

/// Creates or modifies users, password locked: arguments `name uid gid gecos home shell`,
/// repeated.
const USERS_SCRIPT: &str = "while [ $# -ge 6 ]; do n=$1; u=$2; g=$3; c=$4; d=$5; s=$6; shift 6; \
     if /usr/bin/getent passwd \"$n\" >/dev/null; then t=/usr/sbin/usermod; else t='/usr/sbin/useradd -M'; fi; \
     out=$($t -o -u \"$u\" -g \"$g\" -c \"$c\" -d \"$d\" -s \"$s\" -p '!' -- \"$n\" 2>&1) \
     || fail \"user $n\" \"$out\"; done; exit $r";

/// Sets group members: arguments `name members` (comma-separated), repeated.
const MEMBERS_SCRIPT: &str = "while [ $# -ge 2 ]; do n=$1; m=$2; shift 2; \
     out=$(/usr/bin/gpasswd -M \"$m\" -- \"$n\" 2>&1) || fail \"group $n\" \"$out\"; done; exit $r";

/// Deletes users, then groups, that exist: arguments `user|group name`, repeated.
const DELETE_SCRIPT: &str = "while [ $# -ge 2 ]; do k=$1; n=$2; shift 2; \
     /usr/bin/getent $([ $k = user ] && echo passwd || echo group) \"$n\" >/dev/null || continue; \
     out=$(/usr/sbin/${k}del -- \"$n\" 2>&1) || fail \"$k $n\" \"$out\"; done; exit $r";

impl AccountPlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Leaves out what `guest` (its `getent passwd` and `group`) already holds as the host
    /// does: a user with the same ids, GECOS, home and shell (its password is locked in the
    /// twin either way), a group with the same gid and members. Under TCG every useradd or
    /// usermod costs about half a second; a first apply mostly restates the image's own
    /// system accounts.
    pub fn keep_differing(&mut self, guest: &accounts::Accounts) {
        self.users.retain(|u| {
            guest.users.get(&u.name).is_none_or(|g| {
                (g.uid, g.gid, &g.gecos, &g.home, &g.shell)
                    != (u.uid, u.gid, &u.gecos, &u.home, &u.shell)
            })
        });
        self.groups.retain(|h| {
            guest
                .groups
                .get(&h.name)
                .is_none_or(|g| (g.gid, &g.members) != (h.gid, &h.members))
        });
        self.itemize();
    }

    /// Names every account of the plan as the scripts report it.
    fn itemize(&mut self) {
        let groups = self.groups.iter().map(|g| &g.name);
        let users = self.users.iter().map(|u| &u.name);
        self.items = groups
            .map(|n| format!("group {n}"))
            .chain(users.map(|n| format!("user {n}")))
            .chain(self.delete_users.iter().map(|n| format!("user {n}")))
            .chain(self.delete_groups.iter().map(|n| format!("group {n}")))
            .collect();
    }

    /// The guest commands, in order: groups, users, members, deletions. Each is a fixed script
    /// for `/bin/sh -c` whose data arrive as its arguments, never as shell text, and which
    /// goes on past an account the tools refuse, naming it on stderr.
    pub fn commands(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut emit = |script: &str, records: Vec<Vec<String>>| {
            for chunk in records.chunks(ACCOUNTS_PER_COMMAND) {
                let mut a = argv(&["/bin/sh", "-c"]);
                a.push(format!("{ACCOUNT_PRELUDE}{script}"));
                a.push("safetytwin-accounts".to_owned());
                a.extend(chunk.iter().flatten().cloned());
                out.push(a);
            }
        };
        emit(
            GROUPS_SCRIPT,
            self.groups
                .iter()
                .map(|g| vec![g.name.clone(), g.gid.to_string()])
                .collect(),
        );
        emit(
            USERS_SCRIPT,
            self.users
                .iter()
                .map(|u| {
                    let shell = if u.shell.is_empty() {
                        "/bin/sh"
                    } else {
                        &u.shell
                    };
                    vec![
                        u.name.clone(),
                        u.uid.to_string(),
                        u.gid.to_string(),
                        u.gecos.clone(),
                        u.home.clone(),
                        shell.to_owned(),
                    ]
                })
                .collect(),
        );
        emit(
            MEMBERS_SCRIPT,
            self.groups
                .iter()
                .map(|g| vec![g.name.clone(), g.members.join(",")])
                .collect(),
        );
        emit(
            DELETE_SCRIPT,
            self.delete_users
                .iter()
                .map(|n| vec!["user".to_owned(), n.clone()])
                .chain(
                    self.delete_groups
                        .iter()
                        .map(|n| vec!["group".to_owned(), n.clone()]),
                )
                .collect(),
        );
        out
    }
}

/// The account changes of `batch`. Accounts the model may not hold are skipped.
fn account_plan(batch: &DeltaBatch, skipped: &mut Vec<(String, Skip)>) -> AccountPlan {
    let mut plan = AccountPlan::default();
    for d in &batch.groups {
        match d {
            GroupDelta::Upsert(g) if accounts::check_group(g).is_ok() => {
                plan.groups.push(g.clone());
            }
            GroupDelta::Remove { name } if accounts::check_name(name).is_ok() => {
                plan.delete_groups.push(name.clone());
            }
            GroupDelta::Upsert(Group { name, .. }) | GroupDelta::Remove { name } => {
                skipped.push((format!("group {name}"), Skip::BadAccount));
            }
        }
    }
    for d in &batch.users {
        match d {
            UserDelta::Upsert(u) if accounts::check_user(u).is_ok() => {
                plan.users.push(u.clone());
            }
            UserDelta::Remove { name } if accounts::check_name(name).is_ok() => {
                plan.delete_users.push(name.clone());
            }
            UserDelta::Upsert(User { name, .. }) | UserDelta::Remove { name } => {
                skipped.push((format!("user {name}"), Skip::BadAccount));
            }
        }
    }
    plan.itemize();
    plan
}

/// The `items` that a line of `stderr` names (as `spelled` spells them), with that line.
fn named_in(
    stderr: &str,
    items: &[String],
    spelled: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for item in items {
        let needle = spelled(item);
        if let Some(line) = stderr.lines().find(|l| l.contains(&needle)) {
            found.push((item.clone(), line.trim().to_owned()));
        }
    }
    found
}

/// How tar names an archive entry: relative, between colons.
fn tar_spelling(path: &str) -> String {
    format!(": {}: ", path.trim_start_matches('/'))
}

/// How rm names a path: quoted.
fn rm_spelling(path: &str) -> String {
    format!("'{path}'")
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The guest command extracting [`GUEST_ARCHIVE`] over `/`, modes and numeric owners included.
pub fn extract_argv() -> Vec<String> {
    argv(&[
        "/bin/tar",
        "--extract",
        "--preserve-permissions",
        "--same-owner",
        "--numeric-owner",
        "--file",
        GUEST_ARCHIVE,
        "--directory",
        "/",
    ])
}

/// The guest command deleting [`GUEST_ARCHIVE`].
pub fn cleanup_argv() -> Vec<String> {
    argv(&["/bin/rm", "-f", "--", GUEST_ARCHIVE])
}

/// The guest command reloading systemd's unit definitions.
pub fn daemon_reload_argv() -> Vec<String> {
    argv(&["/bin/systemctl", "daemon-reload"])
}

/// The guest command acting on a unit whose name [`valid_unit_name`] accepted.
pub fn unit_argv(unit: &str, verb: Verb) -> Vec<String> {
    argv(&["/bin/systemctl", verb.as_str(), "--", unit])
}

/// systemd's unit name grammar (`unit_name_is_valid`): `prefix[@instance].type`, at most 255
/// bytes of `[A-Za-z0-9:_.\\-]` (and the one `@`), a known type; and, stricter than systemd,
/// no leading `-` or `.` so a name can never pass for an option (`-.slice` is never acted on).
pub fn valid_unit_name(name: &str) -> bool {
    let Some((stem, unit_type)) = name.rsplit_once('.') else {
        return false;
    };
    let (prefix, instance) = match stem.split_once('@') {
        Some((p, i)) => (p, Some(i)),
        None => (stem, None),
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '-');
    name.len() <= UNIT_NAME_MAX
        && UNIT_TYPES.contains(&unit_type)
        && !prefix.is_empty()
        && !name.starts_with(['-', '.'])
        && prefix.chars().all(allowed)
        && instance.is_none_or(|i| i.chars().all(allowed))
}

/// Unit types the twin starts and stops; scopes, slices, mounts and swaps belong to whatever
/// created them on the host.
pub(crate) fn actionable(name: &str) -> bool {
    name.ends_with(".service") || name.ends_with(".socket")
}

fn in_unit_dir(path: &str) -> bool {
    UNIT_DIRS.iter().any(|d| {
        path.strip_prefix(d)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    })
}

/// The unit whose definition (fragment or drop-in, not an enablement link) `path` is.
fn defines(path: &str) -> Option<String> {
    let parent = path.rsplit_once('/')?.0;
    if parent.ends_with(".wants") || parent.ends_with(".requires") {
        return None;
    }
    unit_for_path(path)
}

/// Whether removing `path` (recursively) would remove what an exclusion protects.
fn holds_excluded(path: &str, exclude: &[String]) -> bool {
    path == "/"
        || exclude.iter().any(|pattern| {
            // The fixed part of an anchored pattern; `*.key` has none and matches anywhere.
            let fixed = pattern.split(['*', '?', '[']).next().unwrap_or_default();
            let fixed = fixed.trim_end_matches('/');
            fixed.starts_with('/') && paths::beneath(fixed, path)
        })
}

/// Whether a proper ancestor of `path` is a symlink in the host's model.
fn below_symlink(path: &str, after: &HostModel) -> bool {
    let mut at = path;
    while let Some((parent, _)) = at.rsplit_once('/') {
        if parent.is_empty() {
            return false;
        }
        if after
            .files
            .get(parent)
            .is_some_and(|s| s.kind == FileKind::Symlink)
        {
            return true;
        }
        at = parent;
    }
    false
}

/// Why the removal of `path` is not applied to the twin, if it is not.
pub(crate) fn remove_skip_reason(path: &str, exclude: &[String]) -> Option<Skip> {
    if paths::check(path).is_err() {
        Some(Skip::BadPath)
    } else if globs::any_matches(exclude, path) {
        Some(Skip::Excluded)
    } else {
        holds_excluded(path, exclude).then_some(Skip::HoldsExcluded)
    }
}

pub(crate) fn skip_reason(
    path: &str,
    state: &FileState,
    exclude: &[String],
    after: &HostModel,
) -> Option<Skip> {
    if paths::check(path).is_err() || path == "/" {
        return Some(Skip::BadPath);
    }
    if globs::any_matches(exclude, path) {
        return Some(Skip::Excluded);
    }
    if below_symlink(path, after) {
        return Some(Skip::BelowSymlink);
    }
    match (state.kind, &state.content) {
        (FileKind::Other, _) => Some(Skip::NotAFile),
        (FileKind::Symlink, _)
            if state
                .link_target
                .as_deref()
                .is_none_or(|t| paths::check_link_target(t).is_err()) =>
        {
            Some(Skip::BadLinkTarget)
        }
        (FileKind::Regular, Content::Redacted) => Some(Skip::Secret),
        (FileKind::Regular, Content::TooLarge | Content::Binary | Content::None) => {
            Some(Skip::ContentNotCarried)
        }
        _ => None,
    }
}

/// Appends one entry; the caller has checked that its content is carried.
fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    state: &FileState,
    mtime: u64,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(state.mode);
    header.set_uid(state.uid.into());
    header.set_gid(state.gid.into());
    header.set_mtime(mtime);
    let name = path.trim_start_matches('/');
    match (state.kind, &state.content) {
        (FileKind::Directory, _) => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, name, std::io::empty())
        }
        (FileKind::Symlink, _) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(
                &mut header,
                name,
                state.link_target.as_deref().unwrap_or_default(),
            )
        }
        (_, Content::Text(text)) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(text.len() as u64);
            tar.append_data(&mut header, name, text.as_bytes())
        }
        _ => unreachable!("skip_reason filters entries without content"),
    }
}

/// The plan for `batch`, given the host's model after it (for unit states) and the patterns
/// excluded from the twin. `mtime` (seconds since the epoch) stamps the written files.
pub fn plan(batch: &DeltaBatch, after: &HostModel, exclude: &[String], mtime: u64) -> ApplyPlan {
    let mut plan = ApplyPlan::default();
    plan.accounts = account_plan(batch, &mut plan.skipped);
    let mut redefined = BTreeSet::new();
    let mut upserts: Vec<(&String, &FileState)> = Vec::new();
    for delta in &batch.files {
        let path = match delta {
            FileDelta::Upsert { path, .. } | FileDelta::Remove { path } => path,
        };
        let reason = match delta {
            FileDelta::Upsert { state, .. } => skip_reason(path, state, exclude, after),
            FileDelta::Remove { .. } => remove_skip_reason(path, exclude),
        };
        if let Some(reason) = reason {
            plan.skipped.push((path.clone(), reason));
            continue;
        }
        if in_unit_dir(path) {
            plan.daemon_reload = true;
            redefined.extend(defines(path));
        }
        match delta {
            FileDelta::Upsert { path, state } => upserts.push((path, state)),
            FileDelta::Remove { path } => plan.remove.push(path.clone()),
        }
    }
    // Parents before children, so tar never creates a directory with default modes first.
    upserts.sort_by(|a, b| a.0.cmp(b.0));
    if !upserts.is_empty() {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, state) in &upserts {
            // Writing into a Vec cannot fail, and paths and targets were checked above.
            if let Err(e) = append(&mut tar, path, state, mtime) {
                plan.skipped.push(((*path).clone(), Skip::NotAFile));
                tracing::warn!(path = %path, "not archived: {e}");
                continue;
            }
            plan.write.push((*path).clone());
        }
        plan.archive = tar.into_inner().unwrap_or_default();
    }

    let mut acted = BTreeSet::new();
    for delta in &batch.units {
        let (name, verb) = match delta {
            UnitDelta::Upsert(unit) if unit.active() => (
                unit.name.clone(),
                if redefined.contains(&unit.name) {
                    Verb::Restart
                } else {
                    Verb::Start
                },
            ),
            UnitDelta::Upsert(unit) if unit.runtime.is_some() => (unit.name.clone(), Verb::Stop),
            UnitDelta::Upsert(_) => continue,
            UnitDelta::Remove { name } => (name.clone(), Verb::Stop),
        };
        if !valid_unit_name(&name) {
            plan.skipped.push((name, Skip::BadUnitName));
        } else if actionable(&name) && acted.insert(name.clone()) {
            plan.units.push((name, verb));
        }
    }
    // A running unit whose definition changed, with no state change of its own.
    for name in redefined {
        if actionable(&name)
            && valid_unit_name(&name)
            && after.units.get(&name).is_some_and(|r| r.active)
            && acted.insert(name.clone())
        {
            plan.units.push((name, Verb::Restart));
        }
    }
    plan.units.sort();
    plan.expect_active = plan
        .units
        .iter()
        .filter(|(_, v)| *v != Verb::Stop)
        .map(|(n, _)| n.clone())
        .collect();
    plan
}

/// The default exclusions as owned patterns.
pub fn default_exclude() -> Vec<String> {
    DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use safetytwin_model::{Password, Unit, UnitRuntime, fixtures, packages::VersionOp};

    use super::*;

    /// dpkg goes on past a package it cannot install and names it; that package is skipped
    /// and reported, the others stay installed, and the apply is not failed for it.
    #[test]
    fn packages_dpkg_refuses_are_named_and_only_what_differs_is_installed() {
        let pkg = |name: &str, version: &str, status| Package {
            status,
            ..fixtures::package(name, version)
        };
        let guest = parse_dpkg_query(
            "curl\tamd64\t1.0\tinstalled\nold\tamd64\t1\tconfig-files\n\
             kept\tamd64\t2\tinstalled\n-bad\tamd64\t1\tinstalled\n",
        );
        assert_eq!(guest.len(), 3, "{guest:?}");
        let batch = DeltaBatch {
            packages: vec![
                PackageDelta::Upsert(pkg("curl", "1.0", PackageStatus::Installed)),
                PackageDelta::Upsert(pkg("tree", "2.1.0-1", PackageStatus::Installed)),
                PackageDelta::Upsert(pkg("kept", "2", PackageStatus::ConfigFiles)),
                PackageDelta::Upsert(pkg("busy", "1", PackageStatus::HalfConfigured)),
                PackageDelta::Remove {
                    name: "old".into(),
                    arch: "amd64".into(),
                },
            ],
            ..Default::default()
        };
        let mut skipped = Vec::new();
        let (mut p, wanted) = packages(&batch, &guest, &mut skipped);
        assert_eq!(wanted, [pkg("tree", "2.1.0-1", PackageStatus::Installed)]);
        assert_eq!(p.remove, ["kept:amd64"]);
        assert_eq!(
            p.purge,
            ["old:amd64"],
            "a package with only its config files is purged"
        );
        assert_eq!(
            skipped,
            [("package busy:amd64".into(), Skip::PackageInFlux)]
        );
        p.add_deb(wanted[0].clone(), "ab12", b"deb".to_vec());
        let stderr = "dpkg: dependency problems prevent configuration of tree:\n \
                      tree depends on libfoo; however:\n  Package libfoo is not installed.\n\n\
                      dpkg: error processing package tree (--install):\n \
                      dependency problems - leaving unconfigured\n\
                      Errors were encountered while processing:\n tree\n";
        let verdict = Judge::Items {
            what: "dpkg",
            items: &p.items,
            named: Naming::Dpkg,
        }
        .verdict(&ExecOutput {
            code: 1,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        });
        assert_eq!(
            verdict,
            Verdict::Refused(vec![(
                "tree".into(),
                "dpkg: error processing package tree (--install):".into()
            )])
        );
    }

    fn account_batch() -> DeltaBatch {
        let user = |name: &str, uid: u32| User {
            name: name.into(),
            uid,
            gid: 100,
            gecos: "A \"quoted\" $(name); `x`".into(),
            home: format!("/home/{name}"),
            shell: String::new(),
            password: safetytwin_model::Password::Set,
        };
        DeltaBatch {
            groups: vec![
                GroupDelta::Upsert(Group {
                    name: "users".into(),
                    gid: 100,
                    members: vec!["alice".into(), "bad".into()],
                }),
                GroupDelta::Upsert(Group {
                    name: "-oops".into(),
                    gid: 5,
                    members: vec![],
                }),
                GroupDelta::Remove { name: "old".into() },
            ],
            users: vec![
                UserDelta::Upsert(user("alice", 1000)),
                UserDelta::Upsert(user("bad", 1001)),
                UserDelta::Remove {
                    name: "gone".into(),
                },
            ],
            ..Default::default()
        }
    }

    /// Accounts run before files, groups before the users that need them and deletions last,
    /// passwords locked; a name that could be an option never reaches the guest.
    #[test]
    fn accounts_come_first_in_order_and_hostile_names_are_skipped() {
        let p = plan(
            &account_batch(),
            &HostModel::default(),
            &default_exclude(),
            0,
        );
        assert_eq!(
            p.accounts.items,
            [
                "group users",
                "user alice",
                "user bad",
                "user gone",
                "group old"
            ]
        );
        assert!(
            p.skipped
                .contains(&("group -oops".into(), Skip::BadAccount))
        );
        let steps = p.steps();
        assert_eq!(steps[0].kind, StepKind::Accounts);
        let argvs = p.accounts.commands();
        assert_eq!(argvs.len(), 4, "groups, users, members, deletions");
        for a in &argvs {
            assert_eq!(&a[..2], ["/bin/sh", "-c"]);
            assert_eq!(a[3], "safetytwin-accounts");
            assert!(!a.iter().any(|w| w.starts_with("-o")), "{a:?}");
        }
        assert_eq!(&argvs[0][4..], ["users", "100"]);
        assert_eq!(&argvs[2][4..], ["users", "alice,bad"]);
        assert_eq!(&argvs[3][4..], ["user", "gone", "group", "old"]);
    }

    /// The scripts run for real against stand-in account tools (the real ones would change
    /// this machine): every field arrives as one argument whatever its characters, existing
    /// accounts are modified and new ones added, the password is locked, and an account a
    /// tool refuses is named on stderr while the others go on.
    #[test]
    fn account_scripts_pass_fields_whole_and_name_what_the_tools_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let log = dir.join("log");
        // getent knows `users` and `alice` (the image has them); every tool logs its argv,
        // one argument per line, and fails for the account `bad`.
        let tool = format!(
            "#!/bin/sh\nfor a in \"$(basename $0)\" \"$@\"; do printf '%s\\n' \"$a\" >> {log}; done\n\
             echo END >> {log}\n\
             case \"$(basename $0)\" in getent) case \"$2\" in users|alice) exit 0;; *) exit 2;; esac;; esac\n\
             for a in \"$@\"; do [ \"$a\" = bad ] && {{ echo \"$(basename $0): bad is busy\" >&2; exit 8; }}; done\n\
             exit 0\n",
            log = log.display()
        );
        for name in [
            "getent", "groupadd", "groupmod", "useradd", "usermod", "gpasswd", "userdel",
            "groupdel",
        ] {
            let path = dir.join(name);
            std::fs::write(&path, &tool).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let p = plan(&account_batch(), &HostModel::default(), &[], 0);
        let mut stderr = String::new();
        let mut codes = Vec::new();
        for mut argv in p.accounts.commands() {
            let d = format!("{}/", dir.display());
            argv[2] = argv[2].replace("/usr/sbin/", &d).replace("/usr/bin/", &d);
            let out = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .unwrap();
            codes.push(out.status.code());
            stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        let log = std::fs::read_to_string(&log).unwrap();
        let calls: Vec<&str> = log.split("END\n").collect();
        let has = |call: &[&str]| calls.iter().any(|c| c.lines().eq(call.iter().copied()));
        assert!(
            has(&["groupmod", "-o", "-g", "100", "--", "users"]),
            "{log}"
        );
        let gecos = "A \"quoted\" $(name); `x`";
        assert!(
            has(&[
                "usermod",
                "-o",
                "-u",
                "1000",
                "-g",
                "100",
                "-c",
                gecos,
                "-d",
                "/home/alice",
                "-s",
                "/bin/sh",
                "-p",
                "!",
                "--",
                "alice"
            ]),
            "{log}"
        );
        assert!(
            has(&[
                "useradd",
                "-M",
                "-o",
                "-u",
                "1001",
                "-g",
                "100",
                "-c",
                gecos,
                "-d",
                "/home/bad",
                "-s",
                "/bin/sh",
                "-p",
                "!",
                "--",
                "bad"
            ]),
            "{log}"
        );
        assert!(has(&["gpasswd", "-M", "alice,bad", "--", "users"]), "{log}");
        assert_eq!(codes, [Some(0), Some(1), Some(0), Some(0)], "{stderr}");
        let judged = Judge::Items {
            what: "account script",
            items: &p.accounts.items,
            named: Naming::Account,
        }
        .verdict(&ExecOutput {
            code: 1,
            stdout: Vec::new(),
            stderr: stderr.into_bytes(),
        });
        let Verdict::Refused(refused) = judged else {
            panic!("{judged:?}");
        };
        let names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["user bad"]);
        assert!(refused[0].1.contains("bad is busy"), "{refused:?}");
        // `gone` and `old` do not exist: nothing to delete, nothing refused.
        assert!(
            !log.contains("userdel") && !log.contains("groupdel"),
            "{log}"
        );
    }

    /// The demo batch of the acceptance test: a config file, a unit, its enablement.
    fn demo() -> DeltaBatch {
        DeltaBatch {
            files: vec![
                fixtures::upsert(
                    "/etc/demo/app.conf",
                    FileState {
                        mode: 0o640,
                        ..fixtures::text("port=1\n")
                    },
                ),
                fixtures::upsert("/etc/demo", fixtures::dir(0o750)),
                fixtures::upsert(
                    "/etc/systemd/system/demo.service",
                    fixtures::text("[Service]\nExecStart=/bin/sleep infinity\n"),
                ),
                fixtures::upsert(
                    "/etc/systemd/system/multi-user.target.wants/demo.service",
                    fixtures::symlink("/etc/systemd/system/demo.service"),
                ),
            ],
            units: vec![UnitDelta::Upsert(fixtures::unit("demo.service", true))],
            ..DeltaBatch::default()
        }
    }

    #[test]
    fn demo_batch_writes_reloads_and_starts() {
        let p = plan(&demo(), &HostModel::default(), &default_exclude(), 1);
        assert_eq!(
            p.write,
            [
                "/etc/demo",
                "/etc/demo/app.conf",
                "/etc/systemd/system/demo.service",
                "/etc/systemd/system/multi-user.target.wants/demo.service"
            ]
        );
        assert!(p.daemon_reload);
        // Its definition changed, so it is restarted; for a unit not running yet that starts it.
        assert_eq!(p.units, [("demo.service".to_owned(), Verb::Restart)]);
        assert_eq!(p.expect_active, ["demo.service"]);
        let mut archive = tar::Archive::new(p.archive.as_slice());
        let entries: Vec<(String, u32, tar::EntryType, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.entry_type(),
                    h.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            entries[0],
            ("etc/demo".into(), 0o750, tar::EntryType::Directory, None)
        );
        assert_eq!(entries[1].0, "etc/demo/app.conf");
        assert_eq!(entries[1].1, 0o640);
        assert_eq!(
            entries[3].3.as_deref(),
            Some("/etc/systemd/system/demo.service")
        );
    }

    #[test]
    fn stop_remove_and_restart_on_redefinition() {
        let mut after = HostModel::default();
        after.units.insert(
            "web.service".into(),
            UnitRuntime {
                cgroup: "/system.slice/web.service".into(),
                cgroup_id: 9,
                active: true,
                main_pid: Some(10),
            },
        );
        let batch = DeltaBatch {
            files: vec![
                fixtures::upsert(
                    "/etc/systemd/system/web.service.d/limits.conf",
                    fixtures::text("[Service]\n"),
                ),
                FileDelta::Remove {
                    path: "/etc/demo/app.conf".into(),
                },
            ],
            units: vec![
                UnitDelta::Upsert(fixtures::unit("demo.service", false)),
                UnitDelta::Upsert(fixtures::unit("session-1.scope", true)),
                UnitDelta::Upsert(Unit {
                    runtime: None,
                    ..fixtures::unit("never-ran.service", false)
                }),
                UnitDelta::Remove {
                    name: "old.service".into(),
                },
            ],
            ..DeltaBatch::default()
        };
        let p = plan(&batch, &after, &default_exclude(), 1);
        assert_eq!(p.remove, ["/etc/demo/app.conf"]);
        assert!(p.daemon_reload);
        assert_eq!(
            p.units,
            [
                ("demo.service".to_owned(), Verb::Stop),
                ("old.service".to_owned(), Verb::Stop),
                ("web.service".to_owned(), Verb::Restart),
            ]
        );
        assert_eq!(p.expect_active, ["web.service"]);
    }

    #[test]
    fn exclusions_secrets_and_uncarried_content_are_skipped() {
        let batch = DeltaBatch {
            files: vec![
                fixtures::upsert("/etc/fstab", fixtures::text("x")),
                fixtures::upsert(
                    "/etc/shadow",
                    FileState {
                        mode: 0o640,
                        content: Content::Redacted,
                        ..fixtures::text("")
                    },
                ),
                fixtures::upsert(
                    "/etc/big.bin",
                    FileState {
                        content: Content::TooLarge,
                        ..fixtures::text("")
                    },
                ),
                FileDelta::Remove {
                    path: "/etc/hostname".into(),
                },
            ],
            ..DeltaBatch::default()
        };
        let p = plan(&batch, &HostModel::default(), &default_exclude(), 1);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            p.skipped,
            [
                ("/etc/fstab".to_owned(), Skip::Excluded),
                ("/etc/shadow".to_owned(), Skip::Excluded),
                ("/etc/big.bin".to_owned(), Skip::ContentNotCarried),
                ("/etc/hostname".to_owned(), Skip::Excluded),
            ]
        );
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        let p = plan(&DeltaBatch::default(), &HostModel::default(), &[], 1);
        assert!(p.is_empty());
        assert_eq!(p.items(), 0);
        assert!(p.archive.is_empty());
    }

    /// The argv of every command of `steps`, in order, with how it is judged.
    fn commands<'p>(steps: &[Step<'p>]) -> Vec<(StepKind, Option<Vec<String>>, Option<Judge<'p>>)> {
        let mut out = Vec::new();
        for step in steps {
            for action in &step.actions {
                match action {
                    Action::Upload { path, bytes } => {
                        assert_eq!(*path, GUEST_ARCHIVE);
                        assert!(!bytes.is_empty());
                        out.push((step.kind, None, None));
                    }
                    Action::Exec(c) => {
                        out.push((step.kind, Some(c.argv.clone()), Some(c.judge.clone())));
                    }
                    Action::ExecAll(cs) => out.extend(
                        cs.iter()
                            .map(|c| (step.kind, Some(c.argv.clone()), Some(c.judge.clone()))),
                    ),
                }
            }
        }
        out
    }

    fn words(argv: &[&str]) -> Option<Vec<String>> {
        Some(argv.iter().map(|w| (*w).to_owned()).collect())
    }

    /// A typical batch: a removal, a written file, a unit file, a unit to start and one to
    /// stop. The steps come in order (the stop first, before its files can go; rm, upload +
    /// tar + cleanup, daemon-reload, the start, health), with today's argv and each with its
    /// tolerance.
    #[test]
    fn a_typical_batch_is_one_ordered_list_of_guest_steps() {
        let mut batch = demo();
        batch.files.push(FileDelta::Remove {
            path: "/etc/demo/old.conf".into(),
        });
        batch
            .units
            .push(UnitDelta::Upsert(fixtures::unit("gone.service", false)));
        let p = plan(&batch, &HostModel::default(), &default_exclude(), 1);
        let steps = p.steps();
        let labels: Vec<(StepKind, &str)> =
            steps.iter().map(|s| (s.kind, s.label.as_str())).collect();
        assert_eq!(
            labels,
            [
                (StepKind::Stop, "stop 1 units"),
                (StepKind::Remove, "remove 1 paths"),
                (StepKind::Write, "write 4 paths"),
                (StepKind::DaemonReload, "daemon-reload"),
                (StepKind::Units, "1 units"),
                (StepKind::Health, "health check"),
            ]
        );
        assert!(matches!(steps[0].actions[..], [Action::ExecAll(_)]));
        assert!(matches!(steps[4].actions[..], [Action::ExecAll(_)]));
        let remove = p.remove.as_slice();
        let write = p.write.as_slice();
        assert_eq!(
            commands(&steps),
            [
                (
                    StepKind::Stop,
                    words(&["/bin/systemctl", "stop", "--", "gone.service"]),
                    Some(Judge::Unit("gone.service", Verb::Stop))
                ),
                (
                    StepKind::Remove,
                    words(&["/bin/rm", "-rf", "--", "/etc/demo/old.conf"]),
                    Some(Judge::Items {
                        what: "rm",
                        items: remove,
                        named: Naming::Rm
                    })
                ),
                (StepKind::Write, None, None),
                (
                    StepKind::Write,
                    words(&[
                        "/bin/tar",
                        "--extract",
                        "--preserve-permissions",
                        "--same-owner",
                        "--numeric-owner",
                        "--file",
                        "/run/safetytwin-apply.tar",
                        "--directory",
                        "/",
                    ]),
                    Some(Judge::Items {
                        what: "tar",
                        items: write,
                        named: Naming::Tar
                    })
                ),
                (
                    StepKind::Write,
                    words(&["/bin/rm", "-f", "--", "/run/safetytwin-apply.tar"]),
                    Some(Judge::Ignore)
                ),
                (
                    StepKind::DaemonReload,
                    words(&["/bin/systemctl", "daemon-reload"]),
                    Some(Judge::Exit("systemctl daemon-reload"))
                ),
                (
                    StepKind::Units,
                    words(&["/bin/systemctl", "restart", "--", "demo.service"]),
                    Some(Judge::Unit("demo.service", Verb::Restart))
                ),
                (
                    StepKind::Health,
                    words(&["/bin/systemctl", "is-active", "--", "demo.service"]),
                    Some(Judge::Health(&["demo.service".to_owned()]))
                ),
            ]
        );
        let Action::Upload { bytes, .. } = &steps[2].actions[0] else {
            panic!("the write step starts with the upload");
        };
        assert_eq!(*bytes, p.archive.as_slice());
    }

    #[test]
    fn an_empty_batch_has_no_steps() {
        let p = plan(&DeltaBatch::default(), &HostModel::default(), &[], 1);
        assert!(p.steps().is_empty());
        // Only skipped items: still nothing to run.
        let batch = DeltaBatch {
            files: vec![FileDelta::Remove {
                path: "/etc/hostname".into(),
            }],
            ..DeltaBatch::default()
        };
        let p = plan(&batch, &HostModel::default(), &default_exclude(), 1);
        assert!(p.is_empty() && p.steps().is_empty(), "{p:?}");
    }

    /// What each command's exit and output mean: refused entries are skipped and reported, a
    /// failed stop is tolerated, the health check reads one state per unit.
    #[test]
    fn verdicts_judge_exit_and_output() {
        let out = |code: i32, stdout: &str, stderr: &str| ExecOutput {
            code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let written = ["/etc/a".to_owned(), "/etc/b".to_owned()];
        let tar = Judge::Items {
            what: "tar",
            items: &written,
            named: Naming::Tar,
        };
        assert_eq!(tar.verdict(&out(0, "", "")), Verdict::Ok);
        assert_eq!(
            tar.verdict(&out(
                2,
                "",
                "tar: etc/b: Cannot open: Operation not permitted\n"
            )),
            Verdict::Refused(vec![(
                "/etc/b".into(),
                "tar: etc/b: Cannot open: Operation not permitted".into()
            )])
        );
        assert_eq!(
            tar.verdict(&out(2, "", "tar: This does not look like a tar archive\n")),
            Verdict::Failed(
                "tar failed (exit 2): tar: This does not look like a tar archive".into()
            )
        );
        assert_eq!(
            Judge::Exit("systemctl daemon-reload").verdict(&out(1, "", " no bus \n")),
            Verdict::Failed("systemctl daemon-reload failed (exit 1): no bus".into())
        );
        assert_eq!(
            Judge::Unit("a.service", Verb::Start).verdict(&out(1, "", "boom\n")),
            Verdict::Failed("start a.service: boom".into())
        );
        assert_eq!(
            Judge::Unit("a.service", Verb::Stop).verdict(&out(5, "", "not loaded")),
            Verdict::Tolerated("stop a.service: not loaded".into())
        );
        let units = [
            "a.service".to_owned(),
            "b.service".to_owned(),
            "c.service".to_owned(),
        ];
        // The exit code is not trusted; every unit needs its `active` line.
        assert_eq!(
            Judge::Health(&units).verdict(&out(0, "active\nfailed\n", "")),
            Verdict::Failed("health check: b.service is failed, c.service is unknown".into())
        );
        assert_eq!(
            Judge::Health(&units).verdict(&out(3, "active\nactive\nactive\n", "")),
            Verdict::Ok
        );
        assert!(Judge::Ignore.ignores_agent());
        assert_eq!(Judge::Ignore.verdict(&out(1, "", "x")), Verdict::Ok);
    }

    #[test]
    fn wire_names_never_become_options() {
        for ok in [
            "demo.service",
            "getty@tty1.service",
            "foo@.service",
            "dev-disk-by\\x2duuid-1.device",
            "a:b_c.socket",
        ] {
            assert!(valid_unit_name(ok), "{ok}");
        }
        for bad in [
            "-Hroot@evil.service",
            "--now.service",
            "-.slice",
            ".hidden.service",
            "a b.service",
            "a;reboot.service",
            "a/b.service",
            "demo",
            "demo.exe",
            "@x.service",
            "a@b@c.service",
            "",
            "ünï.service",
        ] {
            assert!(!valid_unit_name(bad), "{bad}");
        }
        let long = format!("{}.service", "a".repeat(UNIT_NAME_MAX));
        assert!(!valid_unit_name(&long));

        let batch = DeltaBatch {
            units: vec![
                UnitDelta::Upsert(fixtures::unit("-Hroot@evil.service", true)),
                UnitDelta::Upsert(fixtures::unit("--no-block.service", false)),
                UnitDelta::Upsert(fixtures::unit("ok.service", true)),
            ],
            ..DeltaBatch::default()
        };
        let p = plan(&batch, &HostModel::default(), &default_exclude(), 1);
        assert_eq!(p.units, [("ok.service".to_owned(), Verb::Start)]);
        assert_eq!(
            p.skipped,
            [
                ("-Hroot@evil.service".to_owned(), Skip::BadUnitName),
                ("--no-block.service".to_owned(), Skip::BadUnitName),
            ]
        );
        assert!(p.skipped.iter().all(|(_, s)| s.is_refusal()));
        // Operands always follow `--`, whatever they are.
        assert_eq!(
            unit_argv("ok.service", Verb::Start),
            ["/bin/systemctl", "start", "--", "ok.service"]
        );
        assert_eq!(p.health_argv()[..3], ["/bin/systemctl", "is-active", "--"]);
        let p = ApplyPlan {
            remove: vec!["/etc/-rf".into()],
            ..ApplyPlan::default()
        };
        assert_eq!(p.remove_argv(), ["/bin/rm", "-rf", "--", "/etc/-rf"]);
    }

    #[test]
    fn paths_that_would_bypass_exclusions_are_skipped() {
        let conf = || fixtures::text("x");
        let batch = DeltaBatch {
            files: vec![
                fixtures::upsert("/etc//passwd", conf()),
                fixtures::upsert("/etc/./shadow", conf()),
                fixtures::upsert("/etc/apt/../passwd", conf()),
                fixtures::upsert("/", fixtures::dir(0o755)),
                FileDelta::Remove {
                    path: "/etc//fstab".into(),
                },
                FileDelta::Remove { path: "/".into() },
                FileDelta::Remove {
                    path: "/etc".into(),
                },
                FileDelta::Remove {
                    path: "/etc/apt".into(),
                },
                FileDelta::Remove {
                    path: "/etc/demo".into(),
                },
            ],
            ..DeltaBatch::default()
        };
        let p = plan(&batch, &HostModel::default(), &default_exclude(), 1);
        assert!(p.write.is_empty() && p.archive.is_empty(), "{p:?}");
        assert_eq!(p.remove, ["/etc/demo"]);
        let skipped: Vec<(&str, Skip)> = p.skipped.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        assert_eq!(
            skipped,
            [
                ("/etc//passwd", Skip::BadPath),
                ("/etc/./shadow", Skip::BadPath),
                ("/etc/apt/../passwd", Skip::BadPath),
                ("/", Skip::BadPath),
                ("/etc//fstab", Skip::BadPath),
                ("/", Skip::HoldsExcluded),
                ("/etc", Skip::HoldsExcluded),
                ("/etc/apt", Skip::HoldsExcluded),
            ]
        );
    }

    /// `/etc/x -> /etc`, then `/etc/x/passwd`: tar in the guest would follow the link and
    /// write the excluded `/etc/passwd`.
    #[test]
    fn nothing_is_written_below_a_symlink() {
        let link = fixtures::symlink("/etc");
        let batch = DeltaBatch {
            files: vec![
                fixtures::upsert("/etc/x", link.clone()),
                fixtures::upsert("/etc/x/passwd", fixtures::text("r::0:0")),
                fixtures::upsert("/etc/x/sub", fixtures::dir(0o755)),
                fixtures::upsert(
                    "/etc/empty-link",
                    FileState {
                        link_target: None,
                        ..fixtures::symlink("")
                    },
                ),
            ],
            ..DeltaBatch::default()
        };
        let mut after = HostModel::default();
        after.apply_batch(&batch);
        let p = plan(&batch, &after, &default_exclude(), 1);
        assert_eq!(p.write, ["/etc/x"]);
        assert_eq!(
            p.skipped,
            [
                ("/etc/x/passwd".to_owned(), Skip::BelowSymlink),
                ("/etc/x/sub".to_owned(), Skip::BelowSymlink),
                ("/etc/empty-link".to_owned(), Skip::BadLinkTarget),
            ]
        );
    }

    #[test]
    fn items_the_guest_refuses_are_found_in_its_messages() {
        let p = ApplyPlan {
            write: vec!["/etc/a".into(), "/etc/ab".into(), "/etc/b".into()],
            remove: vec!["/etc/busy".into(), "/etc/gone".into()],
            ..ApplyPlan::default()
        };
        let tar = "/bin/tar: etc/ab: Cannot open: Operation not permitted\n\
                   tar: etc/b: Cannot create symlink to 'x': File exists\n\
                   /bin/tar: Exiting with failure status due to previous errors\n";
        assert_eq!(
            p.refused_by_tar(tar),
            [
                (
                    "/etc/ab".to_owned(),
                    "/bin/tar: etc/ab: Cannot open: Operation not permitted".to_owned()
                ),
                (
                    "/etc/b".to_owned(),
                    "tar: etc/b: Cannot create symlink to 'x': File exists".to_owned()
                ),
            ]
        );
        assert!(
            p.refused_by_tar("tar: This does not look like a tar archive")
                .is_empty()
        );
        let rm = "/bin/rm: cannot remove '/etc/busy': Device or resource busy\n";
        assert_eq!(p.refused_by_rm(rm).len(), 1);
        assert_eq!(p.refused_by_rm(rm)[0].0, "/etc/busy");
    }

    /// A dependency the guest lacks, or holds at a version its relation refuses, is the host's
    /// package, of the dependent's architecture first; one the guest satisfies, or that only a
    /// virtual package names, is not.
    #[test]
    fn an_unmet_dependency_is_the_hosts_package() {
        let pkg = |name: &str, arch: &str, version: &str| Package {
            arch: arch.into(),
            ..fixtures::package(name, version)
        };
        let map = |ps: &[Package]| -> BTreeMap<String, Package> {
            ps.iter().map(|p| (p.key(), p.clone())).collect()
        };
        let host = map(&[
            pkg("libevent-2.1-7", "amd64", "2.1.12-stable-8"),
            pkg("libevent-2.1-7", "i386", "2.1.12-stable-8"),
            pkg("mawk", "amd64", "1.3.4"),
            Package {
                status: PackageStatus::ConfigFiles,
                ..pkg("gawk", "amd64", "1")
            },
            pkg("libc6", "amd64", "2.36-9+deb12u4"),
            pkg("perl-base", "amd64", "5.36.0-7+deb12u2"),
        ]);
        let guest = map(&[
            pkg("libc6", "amd64", "2.36-9+deb12u9"),
            pkg("lib", "amd64", "1"),
            pkg("perl-base", "amd64", "5.36.0-7+deb12u3"),
        ]);
        let of = pkg("memcached", "amd64", "1.6.18-1");
        let any = |name: &str| Alternative {
            name: name.into(),
            version: None,
        };
        let rel = |name: &str, op, v: &str| Alternative {
            name: name.into(),
            version: Some((op, v.into())),
        };
        let got = |g: &[Alternative]| unmet(g, &of, &host, &guest).map(Package::key);
        assert_eq!(
            got(&[any("libevent-2.1-7")]),
            Some("libevent-2.1-7:amd64".into())
        );
        assert_eq!(got(&[any("gawk"), any("mawk")]), Some("mawk:amd64".into()));
        assert_eq!(got(&[any("libc6")]), None, "the guest has it");
        assert_eq!(got(&[rel("libc6", VersionOp::Ge, "2.34")]), None);
        assert_eq!(
            got(&[rel("libc6", VersionOp::Ge, "2.37")]),
            Some("libc6:amd64".into()),
            "too old in the guest"
        );
        assert_eq!(
            got(&[rel("perl-base", VersionOp::Eq, "5.36.0-7+deb12u4")]),
            Some("perl-base:amd64".into()),
            "another version in the guest"
        );
        assert_eq!(
            got(&[any("mawk"), any("libc6")]),
            None,
            "an alternative holds"
        );
        assert_eq!(
            got(&[any("perlapi-5.36.0")]),
            None,
            "virtual: nothing to install"
        );
        // `lib:amd64` in the guest is no `libc6`: names match whole.
        assert_eq!(got(&[any("li")]), None);
    }

    /// Accounts the guest holds as the host does are not run again; one that differs in any
    /// field, or that the guest lacks, is.
    #[test]
    fn accounts_the_guest_already_holds_are_left_out() {
        let user = |name: &str, uid: u32, shell: &str| User {
            name: name.into(),
            uid,
            gid: uid,
            gecos: String::new(),
            home: format!("/home/{name}"),
            shell: shell.into(),
            password: Password::Set,
        };
        let group = |name: &str, gid: u32, members: &[&str]| Group {
            name: name.into(),
            gid,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        };
        let batch = DeltaBatch {
            users: vec![
                UserDelta::Upsert(user("daemon", 1, "/usr/sbin/nologin")),
                UserDelta::Upsert(user("alice", 1000, "/bin/bash")),
                UserDelta::Upsert(user("bob", 1001, "/bin/bash")),
            ],
            groups: vec![
                GroupDelta::Upsert(group("daemon", 1, &[])),
                GroupDelta::Upsert(group("sudo", 27, &["alice"])),
            ],
            ..DeltaBatch::default()
        };
        let mut plan = account_plan(&batch, &mut Vec::new());
        assert_eq!(plan.items.len(), 5);
        let guest = accounts::parse(
            "daemon:x:1:1::/home/daemon:/usr/sbin/nologin\n\
             alice:x:1000:1000::/home/alice:/bin/sh\n",
            "daemon:x:1:\nsudo:x:27:\n",
            None,
        );
        plan.keep_differing(&guest);
        assert_eq!(plan.items, ["group sudo", "user alice", "user bob"]);
    }
}
