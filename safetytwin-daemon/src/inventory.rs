//! The host's package set and accounts, read at batch cut only when their files changed.
//!
//! dpkg rewrites `/var/lib/dpkg/status` (a new file renamed over the old one) at the end of
//! every package operation; `useradd`, `passwd` and friends do the same to `/etc/passwd`,
//! `/etc/group` and `/etc/shadow`. One `fstat` of each per cut (four syscalls every interval)
//! tells whether any of them changed since the last read: a changed identity, size, mtime or
//! ctime. Only then is the file read and parsed (`safetytwin_model::packages`,
//! `safetytwin_model::accounts`), and the whole set folded in as one change; the engine keeps
//! only what differs. Of the shadow file nothing but each password's state is kept.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use safetytwin_model::{Change, accounts, os, packages};

/// dpkg's database of installed packages.
pub const DPKG_STATUS: &str = "var/lib/dpkg/status";
/// The host's release (os-release(5)): `/etc/os-release`, or where the standard falls back.
const OS_RELEASE: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];
/// The account files, relative to the root.
const PASSWD: &str = "etc/passwd";
const GROUP: &str = "etc/group";
const SHADOW: &str = "etc/shadow";

/// The most bytes read of one file: a status file of 10,000 packages is ~30 MiB.
const MAX_BYTES: u64 = 128 << 20;

/// What identifies one version of a file: a rename gives a new inode, an edit in place a new
/// mtime and ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// A file opened without following a final symlink, with its stamp; `None` when it does not
/// exist or cannot be opened (the daemon then knows nothing of it, which is also a state).
fn open(path: &Path) -> Option<(File, Stamp)> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = file.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    let stamp = Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    };
    Some((file, stamp))
}

/// Reads `file` as text, at most [`MAX_BYTES`]; invalid UTF-8 is replaced (the parsers then
/// refuse the lines it spoils).
fn text(file: File, path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_BYTES).read_to_end(&mut bytes) {
        tracing::warn!(path = %path.display(), "cannot read: {e}");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The package set and the accounts, each re-read when one of its files changed.
#[derive(Debug)]
pub struct Inventory {
    root: PathBuf,
    os: Option<Option<Stamp>>,
    packages: Option<Option<Stamp>>,
    accounts: Option<[Option<Stamp>; 3]>,
}

impl Inventory {
    /// The inventory of the host whose root directory is `root` (`/`; a directory in tests).
    pub fn new(root: impl Into<PathBuf>) -> Inventory {
        Inventory {
            root: root.into(),
            os: None,
            packages: None,
            accounts: None,
        }
    }

    /// Pushes the package set if dpkg's status file changed since the last call (or on the
    /// first call), and the accounts if one of their files did.
    pub fn observe(&mut self, out: &mut Vec<Change>) {
        // `/etc/os-release` is a link on Debian: it is not followed; the file the standard
        // names next is read instead.
        let release = OS_RELEASE.into_iter().find_map(|f| {
            let path = self.root.join(f);
            open(&path).map(|o| (o, path))
        });
        let stamp = release.as_ref().map(|((_, s), _)| *s);
        if self.os != Some(stamp) {
            self.os = Some(stamp);
            match release.and_then(|((f, _), path)| os::parse(&text(f, &path))) {
                Some(os) => out.push(Change::OsObserved(os)),
                None => {
                    tracing::warn!("no os-release with a valid ID: the host's release is unknown")
                }
            }
        }
        let path = self.root.join(DPKG_STATUS);
        let status = open(&path);
        let stamp = status.as_ref().map(|(_, s)| *s);
        if self.packages != Some(stamp) {
            self.packages = Some(stamp);
            let read = status
                .map(|(f, _)| packages::parse_status(&text(f, &path)))
                .unwrap_or_default();
            if read.refused > 0 {
                tracing::warn!(
                    refused = read.refused,
                    "dpkg status: stanzas left out (a field missing or not a Debian one)"
                );
            }
            out.push(Change::PackagesObserved(read.packages));
        }

        let files = [PASSWD, GROUP, SHADOW].map(|f| {
            let path = self.root.join(f);
            (open(&path), path)
        });
        let stamps = files.each_ref().map(|(o, _)| o.as_ref().map(|(_, s)| *s));
        if self.accounts == Some(stamps) {
            return;
        }
        self.accounts = Some(stamps);
        let [passwd, group, shadow] = files.map(|(o, path)| o.map(|(f, _)| text(f, &path)));
        let read = accounts::parse(
            passwd.as_deref().unwrap_or(""),
            group.as_deref().unwrap_or(""),
            shadow.as_deref(),
        );
        if read.refused > 0 {
            tracing::warn!(
                refused = read.refused,
                "account files: lines left out (malformed, or not names useradd would take)"
            );
        }
        out.push(Change::AccountsObserved {
            users: read.users,
            groups: read.groups,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use safetytwin_model::{PackageStatus, Password};

    use super::*;

    fn host() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join(DPKG_STATUS),
            "Package: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10\n",
        )
        .unwrap();
        fs::write(dir.path().join(PASSWD), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::write(dir.path().join(GROUP), "root:x:0:\n").unwrap();
        fs::write(dir.path().join(SHADOW), "root:$y$secret-hash:1::::::\n").unwrap();
        // As on Debian: /etc/os-release links to the file in /usr/lib.
        fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        fs::write(
            dir.path().join("usr/lib/os-release"),
            "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", dir.path().join("etc/os-release"))
            .unwrap();
        dir
    }

    /// As dpkg and the shadow utilities write: a new file renamed over the old one.
    fn replace(dir: &Path, rel: &str, text: &str) {
        let tmp = dir.join(format!("{rel}-new"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, dir.join(rel)).unwrap();
    }

    #[test]
    fn reads_at_first_then_only_what_changed() {
        let dir = host();
        let mut inv = Inventory::new(dir.path());
        let mut out = Vec::new();
        inv.observe(&mut out);
        let [
            Change::OsObserved(os),
            Change::PackagesObserved(p),
            Change::AccountsObserved { users, .. },
        ] = &out[..]
        else {
            panic!("{out:?}");
        };
        assert_eq!(os.codename, "bookworm");
        assert_eq!(p["curl:amd64"].status, PackageStatus::Installed);
        assert_eq!(users["root"].password, Password::Set);
        assert!(!format!("{out:?}").contains("secret-hash"));

        out.clear();
        inv.observe(&mut out);
        assert!(out.is_empty(), "nothing changed: {out:?}");

        replace(
            dir.path(),
            PASSWD,
            "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n",
        );
        inv.observe(&mut out);
        let [Change::AccountsObserved { users, .. }] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(users["bob"].password, Password::Unknown);

        out.clear();
        replace(
            dir.path(),
            DPKG_STATUS,
            "Package: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10+deb12u5\n",
        );
        inv.observe(&mut out);
        let [Change::PackagesObserved(p)] = &out[..] else {
            panic!("{out:?}");
        };
        assert_eq!(p["curl:amd64"].version, "7.88.1-10+deb12u5");
    }

    /// A status file replaced by a link is not followed: the daemon reads no file it did not
    /// open itself, and reports no packages rather than another file's.
    #[test]
    fn a_symlinked_status_file_is_not_followed() {
        let dir = host();
        fs::remove_file(dir.path().join(DPKG_STATUS)).unwrap();
        fs::write(
            dir.path().join("elsewhere"),
            "Package: evil\nStatus: install ok installed\nVersion: 1\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join(DPKG_STATUS))
            .unwrap();
        let mut out = Vec::new();
        Inventory::new(dir.path()).observe(&mut out);
        let Change::PackagesObserved(p) = &out[1] else {
            panic!("{out:?}");
        };
        assert!(p.is_empty(), "{p:?}");
    }
}
