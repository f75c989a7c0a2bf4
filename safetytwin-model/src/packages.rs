//! The host's installed packages, as dpkg records them in `/var/lib/dpkg/status`: name,
//! architecture, version and dpkg's state of each package that is not `not-installed`.
//!
//! The status file is read on the host (by the daemon, only when it changed) and the names and
//! versions end up as arguments of apt and dpkg on the controller and in the twin. A name or a
//! version that could be read as an option, or that holds anything Debian policy does not allow,
//! is refused here, by the parser and by the wire's edge alike.

use std::{collections::BTreeMap, fmt};

/// Longest package name, architecture or version accepted (Debian has none near it).
pub const MAX_FIELD: usize = 256;

/// One installed (or half-installed, or removed with its config files kept) package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Its name (`openssh-server`).
    pub name: String,
    /// Its architecture (`amd64`, `all`; empty when dpkg recorded none).
    pub arch: String,
    /// Its version (`1:9.2p1-2+deb12u3`).
    pub version: String,
    /// What dpkg says of it.
    pub status: PackageStatus,
}

impl Package {
    /// Its key in the model: `name:arch`, as `dpkg-query -W -f '${binary:Package}'` would spell
    /// it for a foreign architecture; unique per host.
    pub fn key(&self) -> String {
        key(&self.name, &self.arch)
    }
}

/// The model's key of package `name` for `arch`.
pub fn key(name: &str, arch: &str) -> String {
    format!("{name}:{arch}")
}

/// dpkg's state of a package (the third word of its `Status:` field), `not-installed` left
/// out: such a package is not in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PackageStatus {
    /// Unpacked and configured.
    Installed,
    /// Removed; only its configuration files remain (a `remove` without `purge`).
    ConfigFiles,
    /// Its installation began and was not finished.
    HalfInstalled,
    /// Unpacked, not yet configured.
    Unpacked,
    /// Configuration began and was not finished.
    HalfConfigured,
    /// Waits for another package's trigger processing.
    TriggersAwaited,
    /// Its triggers are pending.
    TriggersPending,
}

impl PackageStatus {
    /// Every state, in the order above.
    pub const ALL: [PackageStatus; 7] = [
        PackageStatus::Installed,
        PackageStatus::ConfigFiles,
        PackageStatus::HalfInstalled,
        PackageStatus::Unpacked,
        PackageStatus::HalfConfigured,
        PackageStatus::TriggersAwaited,
        PackageStatus::TriggersPending,
    ];

    /// dpkg's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageStatus::Installed => "installed",
            PackageStatus::ConfigFiles => "config-files",
            PackageStatus::HalfInstalled => "half-installed",
            PackageStatus::Unpacked => "unpacked",
            PackageStatus::HalfConfigured => "half-configured",
            PackageStatus::TriggersAwaited => "triggers-awaited",
            PackageStatus::TriggersPending => "triggers-pending",
        }
    }

    /// The state dpkg calls `word`; `None` for `not-installed` and anything unknown.
    pub fn parse(word: &str) -> Option<PackageStatus> {
        PackageStatus::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// Why a package field is not one the model may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageError {
    /// The name is empty, too long, or not `[a-z0-9][a-z0-9+.-]+`.
    Name(String),
    /// The architecture is not `[a-z0-9][a-z0-9-]*` (or empty).
    Arch(String),
    /// The version is empty, too long, starts with `-` or holds a character outside
    /// `[A-Za-z0-9.+~:-]`.
    Version(String),
}

impl fmt::Display for PackageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, value) = match self {
            PackageError::Name(v) => ("package name", v),
            PackageError::Arch(v) => ("architecture", v),
            PackageError::Version(v) => ("version", v),
        };
        write!(f, "not a Debian {what}: {:?}", crate::escape::escape(value))
    }
}

impl std::error::Error for PackageError {}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks `p`'s name, architecture and version against Debian policy's character sets (what
/// apt and dpkg accept, and nothing they would read as an option).
pub fn check(p: &Package) -> Result<(), PackageError> {
    let n = p.name.as_bytes();
    let name_ok = (2..=MAX_FIELD).contains(&n.len())
        && (n[0].is_ascii_lowercase() || n[0].is_ascii_digit())
        && n.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c));
    if !name_ok {
        return Err(PackageError::Name(shown(&p.name)));
    }
    let a = p.arch.as_bytes();
    let arch_ok = a.is_empty()
        || (a.len() <= MAX_FIELD
            && (a[0].is_ascii_lowercase() || a[0].is_ascii_digit())
            && a.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
    if !arch_ok {
        return Err(PackageError::Arch(shown(&p.arch)));
    }
    let v = p.version.as_bytes();
    let version_ok = (1..=MAX_FIELD).contains(&v.len())
        && v[0] != b'-'
        && v.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b".+~:-".contains(&c));
    if !version_ok {
        return Err(PackageError::Version(shown(&p.version)));
    }
    Ok(())
}

/// What [`parse_status`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFile {
    /// The packages, by [`Package::key`].
    pub packages: BTreeMap<String, Package>,
    /// Stanzas left out because a field was missing or refused by [`check`] (a damaged or
    /// hostile status file; dpkg itself would not have written them).
    pub refused: usize,
}

/// Reads dpkg's status file: one stanza per package, separated by blank lines; continuation
/// lines (starting with a space) belong to the field above and are skipped. A package whose
/// state is `not-installed` is left out.
pub fn parse_status(text: &str) -> StatusFile {
    let mut out = StatusFile::default();
    for stanza in text.split("\n\n") {
        let (mut name, mut arch, mut version, mut status) = (None, "", None, None);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match field {
                "Package" => name = Some(value),
                "Architecture" => arch = value,
                "Version" => version = Some(value),
                // `want flag status`, e.g. `install ok installed`.
                "Status" => status = Some(value.rsplit(' ').next().unwrap_or("")),
                _ => {}
            }
        }
        let Some(name) = name else {
            continue;
        };
        if status == Some("not-installed") {
            continue;
        }
        let (Some(version), Some(status)) = (version, status.and_then(PackageStatus::parse)) else {
            out.refused += 1;
            continue;
        };
        let p = Package {
            name: name.to_owned(),
            arch: arch.to_owned(),
            version: version.to_owned(),
            status,
        };
        if check(&p).is_err() {
            out.refused += 1;
            continue;
        }
        out.packages.insert(p.key(), p);
    }
    out
}

/// A version relation of a dependency (`>=` in `libc6 (>= 2.34)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOp {
    /// `<<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>>`
    Gt,
}

impl VersionOp {
    /// Whether a version that compares to the relation's as `ord` satisfies it.
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            VersionOp::Lt => ord == Less,
            VersionOp::Le => ord != Greater,
            VersionOp::Eq => ord == Equal,
            VersionOp::Ge => ord != Less,
            VersionOp::Gt => ord == Greater,
        }
    }
}

/// One alternative of a dependency: a package name and, if given, the versions it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// The package (or virtual package) name.
    pub name: String,
    /// The relation and version, when the dependency names one.
    pub version: Option<(VersionOp, String)>,
}

fn alternative(text: &str) -> Option<Alternative> {
    // `[arch]` restrictions; build profiles (`<…>`) only appear in source packages.
    let text = text.split('[').next()?;
    let (name, rest) = text.split_once('(').unwrap_or((text, ""));
    let name = name.trim().split(':').next()?.trim().to_owned();
    let rest = rest.trim().trim_end_matches(')').trim();
    let version = if rest.is_empty() {
        None
    } else {
        let (op, v) = [
            ("<<", VersionOp::Lt),
            ("<=", VersionOp::Le),
            (">=", VersionOp::Ge),
            (">>", VersionOp::Gt),
            ("=", VersionOp::Eq),
        ]
        .into_iter()
        .find_map(|(word, op)| rest.strip_prefix(word).map(|v| (op, v.trim())))?;
        Some((op, v.to_owned()))
    };
    let probe = Package {
        name: name.clone(),
        arch: String::new(),
        version: version.as_ref().map_or("0".into(), |(_, v)| v.clone()),
        status: PackageStatus::Installed,
    };
    check(&probe)
        .is_ok()
        .then_some(Alternative { name, version })
}

/// The dependencies of a package from its control fields (as `dpkg-deb --field DEB
/// Pre-Depends Depends` prints them): one group per comma-separated relation, each its
/// alternatives in order, without architecture qualifiers (`libc6 (>= 2.34), awk | mawk` →
/// `[[libc6 >= 2.34], [awk, mawk]]`). Other fields are ignored; an alternative Debian policy
/// would not allow (name or version) is left out.
pub fn parse_depends(control: &str) -> Vec<Vec<Alternative>> {
    let mut fields = String::new();
    let mut wanted = false;
    for line in control.lines() {
        if line.starts_with([' ', '\t']) {
            if wanted {
                fields.push_str(line);
            }
            continue;
        }
        wanted = false;
        if let Some((field, value)) = line.split_once(':')
            && matches!(field, "Depends" | "Pre-Depends")
        {
            wanted = true;
            fields.push(',');
            fields.push_str(value);
        }
    }
    fields
        .split(',')
        .map(|relation| {
            relation
                .split('|')
                .filter_map(alternative)
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: openssh-server
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 1:9.2p1-2+deb12u3
Description: secure shell (SSH) server
 a continuation line: with a colon
 .

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u9

Package: nginx-common
Status: deinstall ok config-files
Architecture: all
Version: 1.22.1-9

Package: gone
Status: purge ok not-installed
Architecture: amd64
";

    #[test]
    fn reads_installed_and_config_files_leaves_out_not_installed() {
        let s = parse_status(STATUS);
        assert_eq!(s.refused, 0);
        assert_eq!(
            s.packages.keys().collect::<Vec<_>>(),
            ["libc6:amd64", "nginx-common:all", "openssh-server:amd64"]
        );
        let ssh = &s.packages["openssh-server:amd64"];
        assert_eq!(ssh.version, "1:9.2p1-2+deb12u3");
        assert_eq!(ssh.status, PackageStatus::Installed);
        assert_eq!(
            s.packages["nginx-common:all"].status,
            PackageStatus::ConfigFiles
        );
    }

    /// Whatever the file says, nothing that apt or dpkg would take for an option, or that is
    /// not a Debian name or version, reaches the model.
    #[test]
    fn hostile_stanzas_are_refused_and_counted() {
        let text = "\
Package: -oAPT::Get::AllowUnauthenticated=true
Status: install ok installed
Architecture: amd64
Version: 1.0

Package: ok-pkg
Status: install ok installed
Architecture: amd64
Version: --force-all

Package: spaced
Status: install ok installed
Architecture: amd64
Version: 1.0 2.0

Package: nostatus
Architecture: amd64
Version: 1.0

Package: Upper
Status: install ok installed
Version: 1.0

Package: fine
Status: install ok unpacked
Version: 0.1~rc1+dfsg-1
";
        let s = parse_status(text);
        assert_eq!(s.refused, 5);
        assert_eq!(s.packages.keys().collect::<Vec<_>>(), ["fine:"]);
        assert_eq!(s.packages["fine:"].status, PackageStatus::Unpacked);
    }

    #[test]
    fn every_state_round_trips_through_its_word() {
        for s in PackageStatus::ALL {
            assert_eq!(PackageStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PackageStatus::parse("not-installed"), None);
    }

    #[test]
    fn dependencies_are_read_as_groups_of_alternatives() {
        let control = "Pre-Depends: init-system-helpers (>= 1.54~)\n\
                       Depends: libc6 (>= 2.34), perl-base (= 5.36.0-7+deb12u4),\n \
                       adduser | passwd:any, lsb-base [amd64], ;rm -rf, xz (<< 2)\n\
                       Recommends: libcache-memcached-perl\n";
        let alt = |name: &str, v: Option<(VersionOp, &str)>| Alternative {
            name: name.into(),
            version: v.map(|(op, v)| (op, v.to_owned())),
        };
        assert_eq!(
            parse_depends(control),
            [
                vec![alt("init-system-helpers", Some((VersionOp::Ge, "1.54~")))],
                vec![alt("libc6", Some((VersionOp::Ge, "2.34")))],
                vec![alt("perl-base", Some((VersionOp::Eq, "5.36.0-7+deb12u4")))],
                vec![alt("adduser", None), alt("passwd", None)],
                vec![alt("lsb-base", None)],
                vec![alt("xz", Some((VersionOp::Lt, "2")))],
            ]
        );
        assert!(parse_depends("Recommends: curl\n").is_empty());
        assert!(parse_depends("Depends: a (>= -rf)\n").is_empty());
        assert!(parse_depends("").is_empty());
    }
}
