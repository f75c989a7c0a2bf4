//! The syscalls the file probe traces, in one table: each row is a tracepoint name, its number
//! (`libc::SYS_<name>`, written once by [`row!`] so the two cannot drift apart) and where its
//! arguments are. The tracer fills the `SYSCALLS` map from [`Syscall::entry`] and attaches
//! [`PROGRAM`] to every row's `sys_enter_<name>`; the kernel side knows no syscall number, it
//! looks up the `__syscall_nr` of each record. Pure.
//!
//! Every row changes a name or attributes, and these calls are rare. `open`, `openat` and
//! `openat2` are not here: they are the most frequent file syscalls of every host and nearly
//! all only read; a file they create or truncate has its inode dirtied, which the
//! `file_inode_dirty` probe sees. Nor is any syscall on an fd (`write`, `close`, …) but
//! `fchmod` and `fchown`. No row has an exit probe: a call is reported at entry and the daemon
//! reads what it named at two cuts (`held.rs`).

use safetytwin_common::events::file::{FileOp, FlagsFrom, MAX_SYSCALL, NO_ARG, SyscallEntry};

/// Where a syscall's open, rename or `AT_*` flags come from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flags {
    /// It takes none.
    None,
    /// Argument `i`.
    Arg(u8),
    /// None passed: `creat(2)` is `open(O_CREAT|O_WRONLY|O_TRUNC)`.
    Creat,
}

/// Where a syscall keeps the arguments its [`FileOp`] needs (argument indices).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SyscallSpec {
    /// The op it performs.
    pub op: FileOp,
    /// Argument index of the dirfd of `path`, or `None` for `AT_FDCWD`.
    pub dfd: Option<u8>,
    /// Argument index of `path`.
    pub path: u8,
    /// Argument index of the dirfd of `new_path`.
    pub new_dfd: Option<u8>,
    /// Argument index of `new_path`.
    pub new_path: Option<u8>,
    /// `new_path` is resolved like a path (rename, link) rather than kept as written (symlink).
    pub new_path_resolved: bool,
    /// Where the open/rename/at flags come from.
    pub flags: Flags,
    /// Argument index of the mode (open, mkdir, chmod).
    pub mode: Option<u8>,
    /// Argument index of the new owner uid (and gid in the next one).
    pub owner: Option<u8>,
    /// The file is the fd in argument `dfd` alone, with no path (fchmod, fchown).
    pub by_fd: bool,
}

/// One traced syscall.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// Its name in the tracepoints `syscalls/sys_enter_<name>` and `sys_exit_<name>`.
    pub name: &'static str,
    /// Its number on the target the daemon is built for, from `libc::SYS_<name>`.
    pub nr: u32,
    /// Where its arguments are.
    pub spec: SyscallSpec,
}

/// The program every row's `sys_enter_<name>` tracepoint runs.
pub const PROGRAM: &str = "file_sys_enter";

impl Syscall {
    /// The tracepoint of category `syscalls` the probe attaches to.
    pub fn tracepoint(&self) -> String {
        format!("sys_enter_{}", self.name)
    }

    /// This row as the kernel reads it from the `SYSCALLS` map, at index [`Syscall::nr`].
    pub const fn entry(&self) -> SyscallEntry {
        const fn idx(a: Option<u8>) -> u32 {
            match a {
                Some(i) => i as u32,
                None => NO_ARG,
            }
        }
        let s = &self.spec;
        let (flags_from, flags) = match s.flags {
            Flags::None => (FlagsFrom::None, NO_ARG),
            Flags::Arg(i) => (FlagsFrom::Arg, i as u32),
            Flags::Creat => (FlagsFrom::Creat, NO_ARG),
        };
        SyscallEntry {
            op: s.op as u32,
            dfd: idx(s.dfd),
            path: s.path as u32,
            new_dfd: idx(s.new_dfd),
            new_path: idx(s.new_path),
            new_path_resolved: s.new_path_resolved as u32,
            flags_from: flags_from as u32,
            flags,
            mode: idx(s.mode),
            owner: idx(s.owner),
            by_fd: s.by_fd as u32,
            _reserved: 0,
        }
    }
}

/// `name` without its `SYS_` prefix (evaluated at compile time).
const fn strip_sys(name: &'static str) -> &'static str {
    match name.as_bytes() {
        [b'S', b'Y', b'S', b'_', rest @ ..] => match core::str::from_utf8(rest) {
            Ok(s) => s,
            Err(_) => panic!("not UTF-8"),
        },
        _ => panic!("not a libc::SYS_ constant"),
    }
}

/// A syscall number as the map index it is (evaluated at compile time, so a number that does
/// not fit the map fails the build).
const fn map_index(nr: libc::c_long) -> u32 {
    assert!(
        nr >= 0 && nr < MAX_SYSCALL as libc::c_long,
        "syscall number beyond the SYSCALLS map"
    );
    nr as u32
}

/// The row of `libc::$sys` (e.g. `SYS_openat`): name and number from the one identifier.
macro_rules! row {
    ($sys:ident, $spec:expr) => {
        Syscall {
            name: strip_sys(stringify!($sys)),
            nr: map_index(libc::$sys),
            spec: $spec,
        }
    };
}

const fn spec(op: FileOp, dfd: Option<u8>, path: u8) -> SyscallSpec {
    SyscallSpec {
        op,
        dfd,
        path,
        new_dfd: None,
        new_path: None,
        new_path_resolved: false,
        flags: Flags::None,
        mode: None,
        owner: None,
        by_fd: false,
    }
}

/// A syscall on the file an fd (argument 0) names. Only the rare metadata calls are traced this
/// way: `write`, `ftruncate` and `close` run on every host all the time, so they are not traced
/// at all (a write dirties the inode; see `held.rs` too).
const fn by_fd(op: FileOp) -> SyscallSpec {
    SyscallSpec {
        by_fd: true,
        ..spec(op, Some(0), 0)
    }
}

use FileOp::*;

/// The syscalls the file probes attach to.
pub static SYSCALLS: &[Syscall] = &[
    row!(
        SYS_creat,
        SyscallSpec {
            flags: Flags::Creat,
            mode: Some(1),
            ..spec(Open, None, 0)
        }
    ),
    row!(
        SYS_rename,
        SyscallSpec {
            new_path: Some(1),
            new_path_resolved: true,
            ..spec(Rename, None, 0)
        }
    ),
    row!(
        SYS_renameat,
        SyscallSpec {
            new_dfd: Some(2),
            new_path: Some(3),
            new_path_resolved: true,
            ..spec(Rename, Some(0), 1)
        }
    ),
    row!(
        SYS_renameat2,
        SyscallSpec {
            new_dfd: Some(2),
            new_path: Some(3),
            new_path_resolved: true,
            flags: Flags::Arg(4),
            ..spec(Rename, Some(0), 1)
        }
    ),
    row!(SYS_unlink, spec(Unlink, None, 0)),
    row!(
        SYS_unlinkat,
        SyscallSpec {
            flags: Flags::Arg(2),
            ..spec(Unlink, Some(0), 1)
        }
    ),
    row!(
        SYS_link,
        SyscallSpec {
            new_path: Some(0),
            new_path_resolved: true,
            ..spec(Link, None, 1)
        }
    ),
    row!(
        SYS_linkat,
        SyscallSpec {
            new_dfd: Some(0),
            new_path: Some(1),
            new_path_resolved: true,
            flags: Flags::Arg(4),
            ..spec(Link, Some(2), 3)
        }
    ),
    row!(
        SYS_symlink,
        SyscallSpec {
            new_path: Some(0),
            ..spec(Symlink, None, 1)
        }
    ),
    row!(
        SYS_symlinkat,
        SyscallSpec {
            new_path: Some(0),
            ..spec(Symlink, Some(1), 2)
        }
    ),
    row!(
        SYS_mkdir,
        SyscallSpec {
            mode: Some(1),
            ..spec(Mkdir, None, 0)
        }
    ),
    row!(
        SYS_mkdirat,
        SyscallSpec {
            mode: Some(2),
            ..spec(Mkdir, Some(0), 1)
        }
    ),
    row!(SYS_rmdir, spec(Rmdir, None, 0)),
    row!(
        SYS_chmod,
        SyscallSpec {
            mode: Some(1),
            ..spec(Chmod, None, 0)
        }
    ),
    row!(
        SYS_fchmodat,
        SyscallSpec {
            mode: Some(2),
            ..spec(Chmod, Some(0), 1)
        }
    ),
    row!(
        SYS_fchmodat2,
        SyscallSpec {
            mode: Some(2),
            flags: Flags::Arg(3),
            ..spec(Chmod, Some(0), 1)
        }
    ),
    row!(
        SYS_chown,
        SyscallSpec {
            owner: Some(1),
            ..spec(Chown, None, 0)
        }
    ),
    row!(
        SYS_lchown,
        SyscallSpec {
            owner: Some(1),
            ..spec(Chown, None, 0)
        }
    ),
    row!(
        SYS_fchownat,
        SyscallSpec {
            owner: Some(2),
            flags: Flags::Arg(4),
            ..spec(Chown, Some(0), 1)
        }
    ),
    row!(SYS_truncate, spec(Truncate, None, 0)),
    row!(
        SYS_fchmod,
        SyscallSpec {
            mode: Some(1),
            ..by_fd(Chmod)
        }
    ),
    row!(
        SYS_fchown,
        SyscallSpec {
            owner: Some(1),
            ..by_fd(Chown)
        }
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn row(name: &str) -> &'static Syscall {
        SYSCALLS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
    }

    #[test]
    fn numbers_fit_the_map_and_names_and_numbers_are_unique() {
        let mut names = HashSet::new();
        let mut nrs = HashSet::new();
        for s in SYSCALLS {
            assert!(s.nr < MAX_SYSCALL, "{}: {} >= {MAX_SYSCALL}", s.name, s.nr);
            assert!(names.insert(s.name), "{} twice", s.name);
            assert!(nrs.insert(s.nr), "{} ({}) twice", s.nr, s.name);
        }
    }

    #[test]
    fn names_and_numbers_come_from_libc() {
        let pins = [
            ("creat", libc::SYS_creat),
            ("renameat2", libc::SYS_renameat2),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("fchown", libc::SYS_fchown),
        ];
        for (name, nr) in pins {
            assert_eq!(row(name).nr as libc::c_long, nr, "{name}");
        }
        #[cfg(target_arch = "x86_64")]
        for (name, nr) in [("creat", 85), ("rename", 82), ("unlinkat", 263)] {
            assert_eq!(row(name).nr, nr, "{name} on x86_64");
        }
    }

    #[test]
    fn specs_are_those_of_the_hand_kept_table() {
        // As `safetytwin_common::events::file::syscall_spec` gave them; openat2's and creat's
        // flags were then chosen by syscall number in `SyscallEntry::for_syscall`.
        let creat = SyscallSpec {
            flags: Flags::Creat,
            mode: Some(1),
            ..spec(Open, None, 0)
        };
        let rename = SyscallSpec {
            new_path: Some(1),
            new_path_resolved: true,
            ..spec(Rename, None, 0)
        };
        let renameat2 = SyscallSpec {
            new_dfd: Some(2),
            new_path: Some(3),
            new_path_resolved: true,
            flags: Flags::Arg(4),
            ..spec(Rename, Some(0), 1)
        };
        let fchmod = SyscallSpec {
            mode: Some(1),
            by_fd: true,
            ..spec(Chmod, Some(0), 0)
        };
        for (name, want) in [
            ("creat", creat),
            ("rename", rename),
            ("renameat2", renameat2),
            ("fchmod", fchmod),
        ] {
            assert_eq!(row(name).spec, want, "{name}");
        }
        assert_eq!(SYSCALLS.len(), 22);
        for untraced in [
            "open",
            "openat",
            "openat2",
            "write",
            "pwrite64",
            "writev",
            "ftruncate",
            "fallocate",
            "close",
        ] {
            assert!(
                SYSCALLS.iter().all(|s| s.name != untraced),
                "{untraced} is traced: every such syscall on the host would pay for it"
            );
        }
    }

    #[test]
    fn entries_are_those_of_the_hand_kept_table() {
        // `SyscallEntry::for_syscall` of the old table, field by field.
        let n = NO_ARG;
        let entry = |op: FileOp,
                     [dfd, path, new_dfd, new_path, resolved]: [u32; 5],
                     flags_from: FlagsFrom,
                     [flags, mode, owner, by_fd]: [u32; 4]| SyscallEntry {
            op: op as u32,
            dfd,
            path,
            new_dfd,
            new_path,
            new_path_resolved: resolved,
            flags_from: flags_from as u32,
            flags,
            mode,
            owner,
            by_fd,
            _reserved: 0,
        };
        let pins = [
            (
                "creat",
                entry(Open, [n, 0, n, n, 0], FlagsFrom::Creat, [n, 1, n, 0]),
            ),
            (
                "rename",
                entry(Rename, [n, 0, n, 1, 1], FlagsFrom::None, [n, n, n, 0]),
            ),
            (
                "renameat2",
                entry(Rename, [0, 1, 2, 3, 1], FlagsFrom::Arg, [4, n, n, 0]),
            ),
            (
                "unlinkat",
                entry(Unlink, [0, 1, n, n, 0], FlagsFrom::Arg, [2, n, n, 0]),
            ),
            (
                "linkat",
                entry(Link, [2, 3, 0, 1, 1], FlagsFrom::Arg, [4, n, n, 0]),
            ),
            (
                "symlinkat",
                entry(Symlink, [1, 2, n, 0, 0], FlagsFrom::None, [n, n, n, 0]),
            ),
            (
                "fchownat",
                entry(Chown, [0, 1, n, n, 0], FlagsFrom::Arg, [4, n, 2, 0]),
            ),
            (
                "fchmod",
                entry(Chmod, [0, 0, n, n, 0], FlagsFrom::None, [n, 1, n, 1]),
            ),
            (
                "fchown",
                entry(Chown, [0, 0, n, n, 0], FlagsFrom::None, [n, n, 1, 1]),
            ),
        ];
        for (name, want) in pins {
            assert_eq!(row(name).entry(), want, "{name}");
        }
    }

    #[test]
    fn every_row_is_traced_at_its_entry_only() {
        let names: Vec<String> = SYSCALLS.iter().map(Syscall::tracepoint).collect();
        assert_eq!(names[0], "sys_enter_creat");
        assert!(names.iter().all(|t| t.starts_with("sys_enter_")));
        assert!(!names.contains(&"sys_enter_close".to_owned()));
    }
}
