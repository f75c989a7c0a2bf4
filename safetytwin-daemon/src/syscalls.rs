//! The syscalls the file probes trace, in one table: each row is a tracepoint name, its number
//! (`libc::SYS_<name>`, written once by [`row!`] so the two cannot drift apart) and where its
//! arguments are. The tracer fills the `SYSCALLS` map from [`Syscall::entry`] and attaches the
//! probes to [`tracepoints`]; the kernel side knows no syscall number, it looks up the
//! `__syscall_nr` of each record. Pure.

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
    /// The first u64 of the `struct open_how` argument `i` points to (openat2).
    OpenHow(u8),
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

/// The hook of a syscall tracepoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `sys_enter_<name>`: the arguments.
    Enter,
    /// `sys_exit_<name>`: the return value.
    Exit,
}

impl Hook {
    /// The tracepoint name's prefix.
    pub const fn prefix(self) -> &'static str {
        match self {
            Hook::Enter => "sys_enter",
            Hook::Exit => "sys_exit",
        }
    }
}

/// The programs the rows attach to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `file_sys_enter`: any row; reads the arguments with a helper call.
    Enter,
    /// `file_open_enter`: opens whose flags are among the first three arguments, decided with
    /// plain loads from the record and reported at entry. The program reads up to the third
    /// argument, so the kernel attaches it only to records that have one (every row it serves).
    OpenEnter,
    /// `file_sys_exit`: every row `Enter` serves.
    Exit,
}

impl Probe {
    /// Every program, in the order the tracer attaches them.
    pub const ALL: [Probe; 3] = [Probe::Enter, Probe::OpenEnter, Probe::Exit];

    /// The program's name in the object.
    pub const fn program(self) -> &'static str {
        match self {
            Probe::Enter => "file_sys_enter",
            Probe::OpenEnter => "file_open_enter",
            Probe::Exit => "file_sys_exit",
        }
    }

    /// The tracepoint it attaches to.
    pub const fn hook(self) -> Hook {
        match self {
            Probe::Enter | Probe::OpenEnter => Hook::Enter,
            Probe::Exit => Hook::Exit,
        }
    }
}

impl Syscall {
    /// The programs this row attaches to: an open decided from its record is reported at entry
    /// and has no exit probe; every other row parks at its enter and is reported at its exit.
    pub fn probes(&self) -> &'static [Probe] {
        // What `file_open_enter` can read from the first three arguments: path in 0 or 1,
        // flags (or openat2's `open_how`) in 1 or 2.
        let fast = self.spec.op == FileOp::Open
            && self.spec.path <= 1
            && matches!(self.spec.flags, Flags::Arg(1 | 2) | Flags::OpenHow(2));
        if fast {
            &[Probe::OpenEnter]
        } else {
            &[Probe::Enter, Probe::Exit]
        }
    }

    /// The tracepoint of category `syscalls` that `hook` attaches to.
    pub fn tracepoint(&self, hook: Hook) -> String {
        format!("{}_{}", hook.prefix(), self.name)
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
            Flags::OpenHow(i) => (FlagsFrom::OpenHow, i as u32),
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

/// Every tracepoint `probe` attaches to, with its row, in table order.
pub fn tracepoints(probe: Probe) -> impl Iterator<Item = (&'static Syscall, String)> {
    SYSCALLS
        .iter()
        .filter(move |s| s.probes().contains(&probe))
        .map(move |s| (s, s.tracepoint(probe.hook())))
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
/// at all (the open for writing is the event; see `held.rs`).
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
        SYS_open,
        SyscallSpec {
            flags: Flags::Arg(1),
            mode: Some(2),
            ..spec(Open, None, 0)
        }
    ),
    row!(
        SYS_openat,
        SyscallSpec {
            flags: Flags::Arg(2),
            mode: Some(3),
            ..spec(Open, Some(0), 1)
        }
    ),
    row!(
        SYS_openat2,
        SyscallSpec {
            flags: Flags::OpenHow(2),
            ..spec(Open, Some(0), 1)
        }
    ),
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
            ("open", libc::SYS_open),
            ("openat", libc::SYS_openat),
            ("openat2", libc::SYS_openat2),
            ("creat", libc::SYS_creat),
            ("renameat2", libc::SYS_renameat2),
            ("fchmodat2", libc::SYS_fchmodat2),
            ("fchown", libc::SYS_fchown),
        ];
        for (name, nr) in pins {
            assert_eq!(row(name).nr as libc::c_long, nr, "{name}");
        }
        #[cfg(target_arch = "x86_64")]
        for (name, nr) in [
            ("open", 2),
            ("openat", 257),
            ("openat2", 437),
            ("creat", 85),
        ] {
            assert_eq!(row(name).nr, nr, "{name} on x86_64");
        }
    }

    #[test]
    fn specs_are_those_of_the_hand_kept_table() {
        // As `safetytwin_common::events::file::syscall_spec` gave them; openat2's and creat's
        // flags were then chosen by syscall number in `SyscallEntry::for_syscall`.
        let open = SyscallSpec {
            flags: Flags::Arg(1),
            mode: Some(2),
            ..spec(Open, None, 0)
        };
        let openat = SyscallSpec {
            flags: Flags::Arg(2),
            mode: Some(3),
            ..spec(Open, Some(0), 1)
        };
        let openat2 = SyscallSpec {
            flags: Flags::OpenHow(2),
            ..spec(Open, Some(0), 1)
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
            ("open", open),
            ("openat", openat),
            ("openat2", openat2),
            ("rename", rename),
            ("renameat2", renameat2),
            ("fchmod", fchmod),
        ] {
            assert_eq!(row(name).spec, want, "{name}");
        }
        assert_eq!(SYSCALLS.len(), 25);
        for untraced in [
            "write",
            "pwrite64",
            "writev",
            "ftruncate",
            "fallocate",
            "close",
        ] {
            assert!(
                SYSCALLS.iter().all(|s| s.name != untraced),
                "{untraced} is traced: every fd syscall on the host would pay for it"
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
                "open",
                entry(Open, [n, 0, n, n, 0], FlagsFrom::Arg, [1, 2, n, 0]),
            ),
            (
                "openat",
                entry(Open, [0, 1, n, n, 0], FlagsFrom::Arg, [2, 3, n, 0]),
            ),
            (
                "openat2",
                entry(Open, [0, 1, n, n, 0], FlagsFrom::OpenHow, [2, n, n, 0]),
            ),
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
    fn opens_are_decided_at_entry_and_every_other_row_at_its_exit() {
        let names = |p: Probe| -> Vec<String> { tracepoints(p).map(|(_, t)| t).collect() };
        let (enter, open, exit) = (
            names(Probe::Enter),
            names(Probe::OpenEnter),
            names(Probe::Exit),
        );
        assert_eq!(enter.len() + open.len(), SYSCALLS.len());
        assert_eq!(exit.len(), enter.len());
        assert_eq!(
            open,
            ["sys_enter_open", "sys_enter_openat", "sys_enter_openat2"]
        );
        assert!(enter.contains(&"sys_enter_creat".to_owned()));
        assert_eq!(exit[0], "sys_exit_creat");
        assert!(!enter.contains(&"sys_enter_close".to_owned()));
    }
}
