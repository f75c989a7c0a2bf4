//! Proving the twin: what it actually holds, read through the guest agent, compared with the
//! host's model at the seq the twin stands at. [`probes`] are the guest commands (pure, like
//! the plan: fixed argv, operands the model's checked paths and unit names), [`compare`] reads
//! their output against the model. What the twin does not hold by design (excluded paths,
//! secrets, content that never left the host, locked passwords, the image's own packages and
//! accounts) is counted apart from the differences; the twin is equal when there is no
//! difference.

use std::collections::BTreeMap;

use safetytwin_model::{
    Content, DeltaBatch, FileDelta, FileKind, FileState, Group, GroupDelta, HostModel, Package,
    PackageDelta, UnitDelta, User, UserDelta, accounts, packages,
};

use crate::vm::{ExecOutput, plan};

/// Most paths in one guest command (its argv stays far below `ARG_MAX`).
const PATHS_PER_COMMAND: usize = 512;

/// What a probe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `dpkg-query -W`: every package with its version and state.
    Packages,
    /// `getent passwd`.
    Users,
    /// `getent group`.
    Groups,
    /// `find … -printf`: kind, mode, owner and link target of paths.
    Files,
    /// `sha256sum`: the hashes of regular files.
    Hashes,
    /// `systemctl is-active`: one state per unit.
    Units,
}

/// One guest command of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What it reads.
    pub kind: ProbeKind,
    /// The command; absolute argv[0], operands the model's checked paths or unit names.
    pub argv: Vec<String>,
    /// The units of a [`ProbeKind::Units`] probe, in the order their states come back.
    pub units: Vec<String>,
}

/// A difference between the twin and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `package`, `user`, `group`, `file` or `unit`.
    pub kind: &'static str,
    /// What differs (`curl:amd64`, `/etc/app.conf`, `nginx.service`).
    pub item: String,
    /// What the host has (`-` for nothing).
    pub host: String,
    /// What the twin has (`-` for nothing).
    pub twin: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Everything that differs.
    pub differences: Vec<Difference>,
    /// What is not compared because the twin does not hold it by design, counted by reason.
    pub by_design: BTreeMap<String, usize>,
    /// Items compared and found equal.
    pub equal: usize,
}

impl Report {
    /// The twin holds what the host holds, all by-design exclusions aside.
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }

    fn differ(&mut self, kind: &'static str, item: &str, host: String, twin: String) {
        if host == twin {
            self.equal += 1;
        } else {
            self.differences.push(Difference {
                kind,
                item: item.to_owned(),
                host,
                twin,
            });
        }
    }

    fn by_design(&mut self, why: &str) {
        *self.by_design.entry(why.to_owned()).or_default() += 1;
    }
}

/// What a verification reads: everything, or only what one apply changed (the applier's
/// cheap check after every apply).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every package, account, applicable file and unit of the model.
    Full,
    /// Only the items these net changes touch; what they remove must be absent.
    Changed(&'a DeltaBatch),
}

/// Which of the host's packages the twin follows, per the applier's package mode.
#[derive(Debug, Clone, Copy)]
pub enum Followed<'a> {
    /// Every package (`--twin-packages all`).
    All,
    /// None: the twin keeps its image's packages (`off`, or no package pool).
    Off,
    /// Those that changed after the twin's first apply (`changes`): a package the host held
    /// then, unchanged since, stays as the image has it. The host's packages at that apply.
    Since(&'a BTreeMap<String, Package>),
}

/// One verification: the model at the twin's seq, the applier's exclusions, what is read and
/// which packages are followed.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The host's model at the seq the twin holds.
    pub model: &'a HostModel,
    /// Paths never applied (the applier's `exclude`).
    pub exclude: &'a [String],
    /// What is read.
    pub scope: Scope<'a>,
    /// Which packages the twin follows.
    pub packages: Followed<'a>,
}

/// What the twin's kind letter (`find -printf %y`) is for a model kind.
fn kind_letter(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "f",
        FileKind::Directory => "d",
        FileKind::Symlink => "l",
        FileKind::Other => "?",
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// How `verify` shows a package: its version and state, `-` for none.
fn shown(p: Option<&Package>) -> String {
    p.map_or("-".to_owned(), |p| {
        format!("{} {}", p.version, p.status.as_str())
    })
}

impl<'a> Check<'a> {
    /// Whether the scope reads what `changed` asks of the net changes.
    fn reads(&self, changed: impl Fn(&DeltaBatch) -> bool) -> bool {
        match self.scope {
            Scope::Full => true,
            Scope::Changed(delta) => changed(delta),
        }
    }

    /// Packages are read in full, or after an apply that changed one the twin follows.
    fn reads_packages(&self) -> bool {
        self.reads(|d| {
            d.packages.iter().any(|p| {
                let key = match p {
                    PackageDelta::Upsert(p) => p.key(),
                    PackageDelta::Remove { name, arch } => packages::key(name, arch),
                };
                self.follows(&key).is_ok()
            })
        })
    }

    fn reads_accounts(&self) -> bool {
        self.reads(|d| !d.users.is_empty() || !d.groups.is_empty())
    }

    /// The paths the twin should hold (and the reason of every other one in scope), by the
    /// same rules the plan applies them with; then, in a changed scope, the removed paths the
    /// plan removes, which the twin must not hold.
    #[allow(clippy::type_complexity)]
    fn files(&self, report: &mut Report) -> (Vec<(&'a String, &'a FileState)>, Vec<&'a String>) {
        let (mut held, mut gone) = (Vec::new(), Vec::new());
        let mut judge = |path: &'a String, state: Option<&'a FileState>| {
            let why = match state {
                Some(state) => plan::skip_reason(path, state, self.exclude, self.model),
                None => plan::remove_skip_reason(path, self.exclude),
            };
            match (why, state) {
                (Some(why), _) => report.by_design(&format!("file: {}", why.as_str())),
                (None, Some(state)) => held.push((path, state)),
                (None, None) => gone.push(path),
            }
        };
        match self.scope {
            Scope::Full => {
                for (path, state) in &self.model.files {
                    judge(path, Some(state));
                }
            }
            Scope::Changed(delta) => {
                for d in &delta.files {
                    let path = match d {
                        FileDelta::Upsert { path, .. } | FileDelta::Remove { path } => path,
                    };
                    match self.model.files.get_key_value(path) {
                        Some((path, state)) => judge(path, Some(state)),
                        None => judge(path, None),
                    }
                }
            }
        }
        (held, gone)
    }

    /// Units compared: the ones the plan starts and stops, in scope.
    fn units(&self) -> Vec<String> {
        let in_scope = |name: &String| match self.scope {
            Scope::Full => true,
            Scope::Changed(delta) => delta
                .units
                .iter()
                .any(|u| matches!(u, UnitDelta::Upsert(u) if &u.name == name)),
        };
        self.model
            .units
            .keys()
            .filter(|n| plan::valid_unit_name(n) && plan::actionable(n) && in_scope(n))
            .cloned()
            .collect()
    }

    /// The guest commands that read what [`Check::compare`] needs.
    pub fn probes(&self) -> Vec<Probe> {
        let probe = |kind, argv| Probe {
            kind,
            argv,
            units: Vec::new(),
        };
        let mut out = Vec::new();
        if self.reads_packages() {
            out.push(probe(ProbeKind::Packages, plan::packages_query_argv()));
        }
        if self.reads_accounts() {
            out.push(probe(
                ProbeKind::Users,
                argv(&["/usr/bin/getent", "passwd"]),
            ));
            out.push(probe(
                ProbeKind::Groups,
                argv(&["/usr/bin/getent", "group"]),
            ));
        }
        let (held, gone) = self.files(&mut Report::default());
        let paths: Vec<&String> = held.iter().map(|(p, _)| *p).chain(gone).collect();
        for chunk in paths.chunks(PATHS_PER_COMMAND) {
            // Every path is absolute (checked), so none can pass for one of find's options.
            let mut a = argv(&["/usr/bin/find"]);
            a.extend(chunk.iter().map(|p| (*p).clone()));
            a.extend(argv(&[
                "-maxdepth",
                "0",
                "-printf",
                "%p\t%y\t%m\t%U\t%G\t%l\n",
            ]));
            out.push(probe(ProbeKind::Files, a));
        }
        let regular: Vec<&String> = held
            .iter()
            .filter(|(_, s)| s.kind == FileKind::Regular)
            .map(|(p, _)| *p)
            .collect();
        for chunk in regular.chunks(PATHS_PER_COMMAND) {
            // `--zero`: records end in NUL and names are not escaped (a unit file called
            // `system-systemd\x2dcryptsetup.slice` comes back as it is).
            let mut a = argv(&["/usr/bin/sha256sum", "--zero", "--"]);
            a.extend(chunk.iter().map(|p| (*p).clone()));
            out.push(probe(ProbeKind::Hashes, a));
        }
        let units = self.units();
        if !units.is_empty() {
            let mut a = argv(&["/bin/systemctl", "is-active", "--"]);
            a.extend(units.iter().cloned());
            out.push(Probe {
                kind: ProbeKind::Units,
                argv: a,
                units,
            });
        }
        out
    }

    /// Compares the probes' output (in the order of [`Check::probes`]) with the model.
    pub fn compare(&self, outputs: &[(Probe, ExecOutput)]) -> Report {
        let mut report = Report::default();
        let stdout = |kind: ProbeKind| -> String {
            outputs
                .iter()
                .filter(|(p, _)| p.kind == kind)
                .map(|(_, o)| String::from_utf8_lossy(&o.stdout).into_owned())
                .collect()
        };
        if self.reads_packages() {
            self.compare_packages(&stdout(ProbeKind::Packages), &mut report);
        }
        if self.reads_accounts() {
            self.compare_accounts(
                &stdout(ProbeKind::Users),
                &stdout(ProbeKind::Groups),
                &mut report,
            );
        }
        self.compare_files(
            &stdout(ProbeKind::Files),
            &stdout(ProbeKind::Hashes),
            &mut report,
        );
        // Units: active on the host exactly when active in the twin.
        for (probe, out) in outputs.iter().filter(|(p, _)| p.kind == ProbeKind::Units) {
            let states = String::from_utf8_lossy(&out.stdout);
            let mut states = states.lines();
            for unit in &probe.units {
                let host = self.model.units.get(unit).is_some_and(|r| r.active);
                let twin = states.next().unwrap_or("unknown") == "active";
                let word = |a: bool| if a { "active" } else { "inactive" }.to_owned();
                report.differ("unit", unit, word(host), word(twin));
            }
        }
        report
    }

    /// Packages: the host's followed ones must be in the twin at their version and state; the
    /// image's own (its kernel, agent, init) and those not followed are there by design.
    fn compare_packages(&self, dpkg: &str, report: &mut Report) {
        let twin = plan::parse_dpkg_query(dpkg);
        let keys: Vec<&String> = match self.scope {
            Scope::Full => self.model.packages.keys().chain(twin.keys()).collect(),
            Scope::Changed(delta) => delta
                .packages
                .iter()
                .filter_map(|d| match d {
                    PackageDelta::Upsert(p) => self.model.packages.get_key_value(&p.key()),
                    PackageDelta::Remove { name, arch } => {
                        twin.get_key_value(&packages::key(name, arch)).or_else(|| {
                            self.model
                                .packages
                                .get_key_value(&packages::key(name, arch))
                        })
                    }
                })
                .map(|(k, _)| k)
                .collect(),
        };
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let (host, guest) = (self.model.packages.get(key), twin.get(key));
            let (host, guest, followed) = (shown(host), shown(guest), self.follows(key));
            match followed {
                Err(why) if host != guest => report.by_design(why),
                _ => report.differ("package", key, host, guest),
            }
        }
    }

    /// Whether the twin follows the host's package `key` (by the package mode and the scope),
    /// or why not.
    fn follows(&self, key: &str) -> Result<(), &'static str> {
        let gone = || match (self.scope, self.packages) {
            // Removed on the host: the twin removes it too, when it follows the removal.
            (_, Followed::Off) => Err("package: the image's own"),
            (Scope::Changed(_), _) => Ok(()),
            (Scope::Full, Followed::Since(base)) if base.contains_key(key) => Ok(()),
            (Scope::Full, _) => Err("package: the image's own"),
        };
        match (self.model.packages.get(key), self.packages) {
            (None, _) => gone(),
            (Some(_), Followed::All) => Ok(()),
            (Some(_), Followed::Off) => Err("package: not followed (--twin-packages off)"),
            (Some(p), Followed::Since(base)) if base.get(key) == Some(p) => {
                Err("package: not followed (unchanged on the host since the twin's first apply)")
            }
            (Some(_), Followed::Since(_)) => Ok(()),
        }
    }

    /// Accounts: ids, GECOS, home and shell; passwords are locked in the twin by design.
    fn compare_accounts(&self, passwd: &str, group: &str, report: &mut Report) {
        let twin = accounts::parse(passwd, group, None);
        let user = |u: &User| format!("{}:{} {} {} {}", u.uid, u.gid, u.gecos, u.home, u.shell);
        let group = |g: &Group| format!("{} {}", g.gid, g.members.join(","));
        let (users, groups): (Vec<&String>, Vec<&String>) = match self.scope {
            Scope::Full => (
                self.model.users.keys().chain(twin.users.keys()).collect(),
                self.model.groups.keys().chain(twin.groups.keys()).collect(),
            ),
            Scope::Changed(delta) => (
                delta
                    .users
                    .iter()
                    .map(|d| match d {
                        UserDelta::Upsert(u) => &u.name,
                        UserDelta::Remove { name } => name,
                    })
                    .collect(),
                delta
                    .groups
                    .iter()
                    .map(|d| match d {
                        GroupDelta::Upsert(g) => &g.name,
                        GroupDelta::Remove { name } => name,
                    })
                    .collect(),
            ),
        };
        let mut seen = std::collections::BTreeSet::new();
        for name in users {
            if !seen.insert(name) {
                continue;
            }
            match (self.model.users.get(name), twin.users.get(name)) {
                // A user the host never had: the image's own, unless the host removed it.
                (None, Some(_)) if matches!(self.scope, Scope::Full) => {
                    report.by_design("user: the image's own")
                }
                (host, guest) => {
                    if host.is_some() {
                        report.by_design("user: password locked");
                    }
                    report.differ(
                        "user",
                        name,
                        host.map_or("-".to_owned(), user),
                        guest.map_or("-".to_owned(), user),
                    );
                }
            }
        }
        seen.clear();
        for name in groups {
            if !seen.insert(name) {
                continue;
            }
            match (self.model.groups.get(name), twin.groups.get(name)) {
                (None, Some(_)) if matches!(self.scope, Scope::Full) => {
                    report.by_design("group: the image's own")
                }
                (host, guest) => report.differ(
                    "group",
                    name,
                    host.map_or("-".to_owned(), group),
                    guest.map_or("-".to_owned(), group),
                ),
            }
        }
    }

    /// Files: kind, mode, owner, link target, and a regular file's content hash; a removed
    /// path must be absent.
    fn compare_files(&self, find: &str, sha256sum: &str, report: &mut Report) {
        let mut found: BTreeMap<&str, &str> = BTreeMap::new();
        for line in find.lines() {
            if let Some((path, rest)) = line.split_once('\t') {
                found.insert(path, rest);
            }
        }
        let mut hashes: BTreeMap<&str, &str> = BTreeMap::new();
        for line in sha256sum.split('\0') {
            // `HASH  PATH`, NUL-terminated, the path as it is.
            if let Some((hash, path)) = line.split_once("  ") {
                hashes.insert(path, hash);
            }
        }
        let (held, gone) = self.files(report);
        for (path, state) in held {
            let expected = format!(
                "{}\t{:o}\t{}\t{}\t{}",
                kind_letter(state.kind),
                state.mode,
                state.uid,
                state.gid,
                state.link_target.as_deref().unwrap_or("")
            );
            let got = found.get(path.as_str()).copied().unwrap_or("-");
            let (host, twin) = match (&state.content, state.kind) {
                (Content::Text(_), FileKind::Regular) => (
                    format!("{expected}\t{}", state.sha256.as_deref().unwrap_or("")),
                    format!(
                        "{got}\t{}",
                        hashes.get(path.as_str()).copied().unwrap_or("")
                    ),
                ),
                _ => (expected, got.to_owned()),
            };
            report.differ(
                "file",
                path,
                host.replace('\t', " "),
                twin.replace('\t', " "),
            );
        }
        for path in gone {
            let twin = found.get(path.as_str()).copied().unwrap_or("-");
            report.differ("file", path, "-".to_owned(), twin.replace('\t', " "));
        }
    }
}

#[cfg(test)]
mod tests {
    use safetytwin_model::{FileState, Group, Password, UnitRuntime, User, fixtures};

    use super::*;

    fn model() -> HostModel {
        let mut m = HostModel::default();
        m.files
            .insert("/etc/app.conf".into(), fixtures::text("x=1"));
        m.files.insert("/etc/app".into(), fixtures::dir(0o755));
        m.files.insert(
            "/etc/app/current".into(),
            fixtures::symlink("/etc/app.conf"),
        );
        m.files.insert(
            "/etc/passwd".into(),
            fixtures::text("root:x:0:0::/root:/bin/sh"),
        );
        m.files.insert(
            "/etc/ssl/private/site.key".into(),
            FileState {
                mode: 0o600,
                content: Content::Redacted,
                ..fixtures::text("")
            },
        );
        let p = fixtures::package("curl", "7.88.1-10");
        m.packages.insert(p.key(), p);
        m.users.insert(
            "alice".into(),
            User {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                gecos: "Alice".into(),
                home: "/home/alice".into(),
                shell: "/bin/bash".into(),
                password: Password::Set,
            },
        );
        m.groups.insert(
            "alice".into(),
            Group {
                name: "alice".into(),
                gid: 1000,
                members: vec![],
            },
        );
        m.units.insert(
            "app.service".into(),
            UnitRuntime {
                cgroup: "/system.slice/app.service".into(),
                cgroup_id: 7,
                active: true,
                main_pid: Some(10),
            },
        );
        m
    }

    /// The guest's answers for `model()` as the twin holds it, `edit` applied to each output.
    fn run(edit: impl Fn(ProbeKind, String) -> String) -> Report {
        let m = model();
        let exclude = plan::default_exclude();
        check(
            &Check {
                model: &m,
                exclude: &exclude,
                scope: Scope::Full,
                packages: Followed::All,
            },
            edit,
        )
    }

    /// Runs `check`'s probes against the guest's answers for `model()`, `edit` applied to each.
    fn check(check: &Check<'_>, edit: impl Fn(ProbeKind, String) -> String) -> Report {
        let hash = fixtures::SHA256;
        let outputs = check
            .probes()
            .into_iter()
            .map(|p| {
                let out = match p.kind {
                    ProbeKind::Packages => "curl\tamd64\t7.88.1-10\tinstalled\n\
                                            systemd\tamd64\t252.38-1\tinstalled\n"
                        .to_owned(),
                    ProbeKind::Users => "root:x:0:0:root:/root:/bin/bash\n\
                                         alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
                        .to_owned(),
                    ProbeKind::Groups => "root:x:0:\nalice:x:1000:\n".to_owned(),
                    ProbeKind::Files => "/etc/app\td\t755\t0\t0\t\n\
                                         /etc/app.conf\tf\t644\t0\t0\t\n\
                                         /etc/app/current\tl\t777\t0\t0\t/etc/app.conf\n"
                        .to_owned(),
                    ProbeKind::Hashes => format!("{hash}  /etc/app.conf\0"),
                    ProbeKind::Units => "active\n".to_owned(),
                };
                let out = edit(p.kind, out);
                (
                    p,
                    ExecOutput {
                        code: 0,
                        stdout: out.into_bytes(),
                        stderr: Vec::new(),
                    },
                )
            })
            .collect::<Vec<_>>();
        check.compare(&outputs)
    }

    #[test]
    fn an_exact_twin_is_equal_and_what_it_lacks_by_design_is_counted() {
        let r = run(|_, out| out);
        assert!(r.is_equal(), "{:?}", r.differences);
        // A package, a user, a group, three files, a unit.
        assert_eq!(r.equal, 7);
        assert_eq!(r.by_design["file: excluded"], 1);
        assert_eq!(r.by_design["file: secret"], 1);
        assert_eq!(r.by_design["package: the image's own"], 1);
        assert_eq!(r.by_design["user: the image's own"], 1);
        assert_eq!(r.by_design["user: password locked"], 1);
    }

    #[test]
    fn each_kind_of_difference_is_named() {
        let r = run(|kind, out| match kind {
            ProbeKind::Packages => out.replace("7.88.1-10", "7.88.1-9"),
            ProbeKind::Users => out.replace("/bin/bash\n", "/bin/sh\n"),
            ProbeKind::Groups => "root:x:0:\n".to_owned(),
            ProbeKind::Files => out.replace("/etc/app/current\tl\t777\t0\t0\t/etc/app.conf\n", ""),
            ProbeKind::Hashes => format!("{}  /etc/app.conf\0", "cd".repeat(32)),
            ProbeKind::Units => "inactive\n".to_owned(),
        });
        let items: Vec<(&str, &str)> = r
            .differences
            .iter()
            .map(|d| (d.kind, d.item.as_str()))
            .collect();
        assert_eq!(
            items,
            [
                ("package", "curl:amd64"),
                ("user", "alice"),
                ("group", "alice"),
                ("file", "/etc/app.conf"),
                ("file", "/etc/app/current"),
                ("unit", "app.service"),
            ]
        );
        assert_eq!(r.differences[0].host, "7.88.1-10 installed");
        assert_eq!(r.differences[0].twin, "7.88.1-9 installed");
        assert_eq!(r.differences[4].twin, "-");
        assert_eq!(r.equal, 1, "only /etc/app is still equal");
    }

    /// Every probe is a fixed program with the model's checked paths and unit names as its
    /// operands: a path never sits where an option could.
    #[test]
    fn probes_pass_only_checked_operands() {
        let (m, exclude) = (model(), plan::default_exclude());
        let full = Check {
            model: &m,
            exclude: &exclude,
            scope: Scope::Full,
            packages: Followed::All,
        };
        for p in full.probes() {
            assert!(p.argv[0].starts_with('/'), "{:?}", p.argv);
            if p.kind == ProbeKind::Files {
                let operands = &p.argv[1..p.argv.len() - 4];
                assert!(operands.iter().all(|a| a.starts_with('/')), "{:?}", p.argv);
                assert!(!operands.contains(&"/etc/passwd".to_owned()));
            }
        }
    }

    fn items(r: &Report) -> Vec<(&str, &str)> {
        r.differences
            .iter()
            .map(|d| (d.kind, d.item.as_str()))
            .collect()
    }

    /// After an apply only what it changed is read: a removed file or user the twin still
    /// holds is a difference, the untouched rest is not read at all.
    #[test]
    fn the_check_after_an_apply_reads_only_what_changed() {
        let (m, exclude) = (model(), plan::default_exclude());
        let delta = DeltaBatch {
            files: vec![
                FileDelta::Upsert {
                    path: "/etc/app.conf".into(),
                    state: m.files["/etc/app.conf"].clone(),
                },
                FileDelta::Remove {
                    path: "/etc/gone.conf".into(),
                },
            ],
            users: vec![UserDelta::Remove {
                name: "root".into(),
            }],
            ..DeltaBatch::default()
        };
        let changed = Check {
            model: &m,
            exclude: &exclude,
            scope: Scope::Changed(&delta),
            packages: Followed::All,
        };
        let kinds: Vec<ProbeKind> = changed.probes().iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                ProbeKind::Users,
                ProbeKind::Groups,
                ProbeKind::Files,
                ProbeKind::Hashes
            ]
        );
        let r = check(&changed, |kind, out| match kind {
            ProbeKind::Files => format!("{out}/etc/gone.conf\tf\t644\t0\t0\t\n"),
            _ => out,
        });
        assert_eq!(items(&r), [("user", "root"), ("file", "/etc/gone.conf")]);
        assert_eq!(r.equal, 1, "/etc/app.conf");
        // Removed as the host removed them: equal.
        let r = check(&changed, |kind, out| match kind {
            ProbeKind::Users => out.replace("root:x:0:0:root:/root:/bin/bash\n", ""),
            _ => out,
        });
        assert!(r.is_equal(), "{:?}", r.differences);
        assert_eq!(r.equal, 3);
    }

    /// In `changes` mode a package the host held at the twin's first apply, unchanged since,
    /// stays the image's; one changed after it must match; `off` follows none.
    #[test]
    fn packages_are_compared_as_the_mode_follows_them() {
        let mut m = model();
        let exim = fixtures::package("exim4", "4.96-15");
        m.packages.insert(exim.key(), exim.clone());
        let exclude = plan::default_exclude();
        let base = m.packages.clone();
        let mut later = base.clone();
        later.remove(&exim.key());
        let r = |packages| {
            check(
                &Check {
                    model: &m,
                    exclude: &exclude,
                    scope: Scope::Full,
                    packages,
                },
                |_, out| out,
            )
        };
        let by_design = "package: not followed (unchanged on the host since the twin's first \
                         apply)";
        // exim4 was on the host at the first apply: the image (which lacks it) keeps its own.
        let since = r(Followed::Since(&base));
        assert!(since.is_equal(), "{:?}", since.differences);
        assert_eq!(since.by_design[by_design], 1);
        // Installed on the host after the first apply: followed, and missing.
        let since = r(Followed::Since(&later));
        assert_eq!(items(&since), [("package", "exim4:amd64")]);
        assert_eq!(since.differences[0].twin, "-");
        assert_eq!(items(&r(Followed::All)), [("package", "exim4:amd64")]);
        let off = r(Followed::Off);
        assert!(off.is_equal());
        assert_eq!(
            off.by_design["package: not followed (--twin-packages off)"],
            1
        );
        assert_eq!(off.equal, 7, "curl is equal whatever the mode");
    }

    /// A name sha256sum would escape (systemd's `\x2d`) is read back as it is.
    #[test]
    fn a_name_with_a_backslash_is_compared_as_it_is() {
        let path = "/etc/systemd/system/system-systemd\\x2dcryptsetup.slice";
        let mut m = HostModel::default();
        m.files.insert(path.into(), fixtures::text("[Slice]\n"));
        let exclude = plan::default_exclude();
        let c = Check {
            model: &m,
            exclude: &exclude,
            scope: Scope::Full,
            packages: Followed::All,
        };
        let outputs: Vec<(Probe, ExecOutput)> = c
            .probes()
            .into_iter()
            .map(|p| {
                let out = match p.kind {
                    ProbeKind::Files => format!("{path}\tf\t644\t0\t0\t\n"),
                    ProbeKind::Hashes => format!("{}  {path}\0", fixtures::SHA256),
                    _ => String::new(),
                };
                let out = ExecOutput {
                    code: 0,
                    stdout: out.into_bytes(),
                    stderr: Vec::new(),
                };
                (p, out)
            })
            .collect();
        let r = c.compare(&outputs);
        assert!(r.is_equal(), "{:?}", r.differences);
        assert_eq!(r.equal, 1);
    }
}
