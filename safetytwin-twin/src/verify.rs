//! Proving the twin: what it actually holds, read through the guest agent, compared with the
//! host's model at the seq the twin stands at. [`probes`] are the guest commands (pure, like
//! the plan: fixed argv, operands the model's checked paths and unit names), [`compare`] reads
//! their output against the model. What the twin does not hold by design (excluded paths,
//! secrets, content that never left the host, locked passwords, the image's own packages and
//! accounts) is counted apart from the differences; the twin is equal when there is no
//! difference.

use std::collections::BTreeMap;

use safetytwin_model::{Content, FileKind, HostModel, Package, accounts};

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

/// The paths of `model` the twin should hold (and the reason of every other one), by the same
/// rules the plan applies them with.
fn applicable<'m>(
    model: &'m HostModel,
    exclude: &[String],
    report: &mut Report,
) -> Vec<(&'m String, &'m safetytwin_model::FileState)> {
    let mut out = Vec::new();
    for (path, state) in &model.files {
        match plan::skip_reason(path, state, exclude, model) {
            Some(why) => report.by_design(&format!("file: {}", why.as_str())),
            None => out.push((path, state)),
        }
    }
    out
}

/// Units compared: the ones the plan starts and stops, with a known state on the host.
fn compared_units(model: &HostModel) -> Vec<String> {
    model
        .units
        .keys()
        .filter(|n| plan::valid_unit_name(n) && plan::actionable(n))
        .cloned()
        .collect()
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The guest commands that read what [`compare`] needs for `model`.
pub fn probes(model: &HostModel, exclude: &[String]) -> Vec<Probe> {
    let probe = |kind, argv| Probe {
        kind,
        argv,
        units: Vec::new(),
    };
    let mut out = vec![
        probe(ProbeKind::Packages, plan::packages_query_argv()),
        probe(ProbeKind::Users, argv(&["/usr/bin/getent", "passwd"])),
        probe(ProbeKind::Groups, argv(&["/usr/bin/getent", "group"])),
    ];
    let files = applicable(model, exclude, &mut Report::default());
    let paths: Vec<&String> = files.iter().map(|(p, _)| *p).collect();
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
    let regular: Vec<&String> = files
        .iter()
        .filter(|(_, s)| s.kind == FileKind::Regular)
        .map(|(p, _)| *p)
        .collect();
    for chunk in regular.chunks(PATHS_PER_COMMAND) {
        let mut a = argv(&["/usr/bin/sha256sum", "--"]);
        a.extend(chunk.iter().map(|p| (*p).clone()));
        out.push(probe(ProbeKind::Hashes, a));
    }
    let units = compared_units(model);
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

/// What the twin's kind letter (`find -printf %y`) is for a model kind.
fn kind_letter(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "f",
        FileKind::Directory => "d",
        FileKind::Symlink => "l",
        FileKind::Other => "?",
    }
}

/// Compares the probes' output (in the order of [`probes`]) with `model`.
pub fn compare(model: &HostModel, exclude: &[String], outputs: &[(Probe, ExecOutput)]) -> Report {
    let mut report = Report::default();
    let stdout = |kind: ProbeKind| -> String {
        outputs
            .iter()
            .filter(|(p, _)| p.kind == kind)
            .map(|(_, o)| String::from_utf8_lossy(&o.stdout).into_owned())
            .collect()
    };

    // Packages: the host's must be in the twin at its version and state; the image's own
    // (its kernel, agent, init) are there by design.
    let twin_packages = plan::parse_dpkg_query(&stdout(ProbeKind::Packages));
    let shown = |p: Option<&Package>| {
        p.map_or("-".to_owned(), |p| {
            format!("{} {}", p.version, p.status.as_str())
        })
    };
    for (key, p) in &model.packages {
        report.differ(
            "package",
            key,
            shown(Some(p)),
            shown(twin_packages.get(key)),
        );
    }
    for key in twin_packages.keys() {
        if !model.packages.contains_key(key) {
            report.by_design("package: the image's own");
        }
    }

    // Accounts: ids, GECOS, home and shell; passwords are locked in the twin by design.
    let twin = accounts::parse(&stdout(ProbeKind::Users), &stdout(ProbeKind::Groups), None);
    for (name, u) in &model.users {
        let entry = |u: &safetytwin_model::User| {
            format!("{}:{} {} {} {}", u.uid, u.gid, u.gecos, u.home, u.shell)
        };
        report.differ(
            "user",
            name,
            entry(u),
            twin.users.get(name).map_or("-".to_owned(), entry),
        );
        report.by_design("user: password locked");
    }
    for (name, g) in &model.groups {
        let entry = |g: &safetytwin_model::Group| format!("{} {}", g.gid, g.members.join(","));
        report.differ(
            "group",
            name,
            entry(g),
            twin.groups.get(name).map_or("-".to_owned(), entry),
        );
    }
    for _ in twin.users.keys().filter(|n| !model.users.contains_key(*n)) {
        report.by_design("user: the image's own");
    }
    for _ in twin
        .groups
        .keys()
        .filter(|n| !model.groups.contains_key(*n))
    {
        report.by_design("group: the image's own");
    }

    // Files: kind, mode, owner, link target, and a regular file's content hash.
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for line in stdout(ProbeKind::Files).lines() {
        if let Some((path, rest)) = line.split_once('\t') {
            found.insert(path.to_owned(), rest.to_owned());
        }
    }
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    for line in stdout(ProbeKind::Hashes).lines() {
        // `HASH  PATH`; a path sha256sum had to escape starts the line with `\` and is left
        // unmatched (the file then shows as differing, never as equal).
        if let Some((hash, path)) = line.split_once("  ") {
            hashes.insert(path.to_owned(), hash.to_owned());
        }
    }
    for (path, state) in applicable(model, exclude, &mut report) {
        let expected = format!(
            "{}\t{:o}\t{}\t{}\t{}",
            kind_letter(state.kind),
            state.mode,
            state.uid,
            state.gid,
            state.link_target.as_deref().unwrap_or("")
        );
        let got = found.get(path).cloned().unwrap_or_else(|| "-".to_owned());
        let (host, twin) = match (&state.content, state.kind) {
            (Content::Text(_), FileKind::Regular) => (
                format!("{expected}\t{}", state.sha256.as_deref().unwrap_or("")),
                format!(
                    "{got}\t{}",
                    hashes.get(path).map(String::as_str).unwrap_or("")
                ),
            ),
            _ => (expected, got),
        };
        report.differ(
            "file",
            path,
            host.replace('\t', " "),
            twin.replace('\t', " "),
        );
    }

    // Units: active on the host exactly when active in the twin.
    for (probe, out) in outputs.iter().filter(|(p, _)| p.kind == ProbeKind::Units) {
        let states = String::from_utf8_lossy(&out.stdout);
        let mut states = states.lines();
        for unit in &probe.units {
            let host = model.units.get(unit).is_some_and(|r| r.active);
            let twin = states.next().unwrap_or("unknown") == "active";
            let word = |a: bool| if a { "active" } else { "inactive" }.to_owned();
            report.differ("unit", unit, word(host), word(twin));
        }
    }
    report
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
        let hash = fixtures::SHA256;
        let outputs = probes(&m, &exclude)
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
                    ProbeKind::Hashes => format!("{hash}  /etc/app.conf\n"),
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
        compare(&m, &exclude, &outputs)
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
            ProbeKind::Hashes => format!("{}  /etc/app.conf\n", "cd".repeat(32)),
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
        for p in probes(&model(), &plan::default_exclude()) {
            assert!(p.argv[0].starts_with('/'), "{:?}", p.argv);
            if p.kind == ProbeKind::Files {
                let operands = &p.argv[1..p.argv.len() - 4];
                assert!(operands.iter().all(|a| a.starts_with('/')), "{:?}", p.argv);
                assert!(!operands.contains(&"/etc/passwd".to_owned()));
            }
        }
    }
}
