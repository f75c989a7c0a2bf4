//! `file`: a change to a file under a watched tree, seen two ways.
//!
//! - **A syscall that changes a name or attributes** (rename, unlink, link, symlink, mkdir, rmdir,
//!   chmod, chown, truncate, creat): its `sys_enter_*` tracepoint resolves the path arguments and
//!   reports the call at entry, before it is known to succeed. The daemon reads each reported
//!   path at the cut after the call and once more at the next, so a call that failed changes
//!   nothing and one still in flight at the first cut is read at the second. These syscalls
//!   have no exit probe: with one, the exit of every syscall on the host would pay for it.
//! - **A file whose inode is dirtied** ([`FileOp::Write`]): `writeback_mark_inode_dirty` fires
//!   when a file's content, size, times or attributes change, never for a read. The probe names
//!   the inode by walking one of its dentries up to a watched tree's root directory
//!   ([`WatchedPrefix::dev`], [`WatchedPrefix::ino`]). Opens are not traced at all: they are the
//!   most frequent file syscall of every host, and nearly all of them only read.
//!
//! `write`, `ftruncate`, `close` and the other syscalls on an fd are not traced either; a write
//! dirties the inode, and the daemon also re-reads, at each cut, the files their writers still
//! hold open (`safetytwin-daemon/src/held.rs`).
//!
//! A relative path is resolved against its dirfd or the cwd in the kernel: `dir` holds that
//! directory's absolute path (walked up the dentry chain, across mounts) and `path` the string
//! the caller passed; userspace joins and normalises them. For an absolute `path`, `dir` is empty.
//! A dirtied inode's record has the watched tree in `dir` and the path below it in `path`.

use super::Event;

/// Bytes kept of each path string.
pub const PATH_LEN: usize = 256;
/// Watched tree prefixes the kernel filter compares against.
pub const MAX_WATCHED: usize = 8;
/// Longest watched prefix.
pub const WATCHED_LEN: usize = 64;
/// Name of the array map of [`WatchedPrefix`].
pub const WATCHED_MAP: &str = "WATCHED";

/// What the syscall did.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// creat (`open`, `openat` and `openat2` are not traced; see [`FileOp::Write`]).
    Open = 1,
    /// rename/renameat/renameat2: `path` moved to `new_path`.
    Rename = 2,
    /// unlink/unlinkat.
    Unlink = 3,
    /// link/linkat: `path` is the new link, `new_path` the existing file.
    Link = 4,
    /// symlink/symlinkat: `path` is the link, `new_path` its target as written.
    Symlink = 5,
    /// mkdir/mkdirat.
    Mkdir = 6,
    /// rmdir, unlinkat(AT_REMOVEDIR).
    Rmdir = 7,
    /// chmod/fchmodat/fchmodat2.
    Chmod = 8,
    /// chown/lchown/fchownat.
    Chown = 9,
    /// truncate.
    Truncate = 10,
    /// The file's inode was dirtied: its content, size, times or attributes changed.
    Write = 11,
}

impl FileOp {
    /// The op with this id.
    pub const fn from_u32(v: u32) -> Option<FileOp> {
        Some(match v {
            1 => FileOp::Open,
            2 => FileOp::Rename,
            3 => FileOp::Unlink,
            4 => FileOp::Link,
            5 => FileOp::Symlink,
            6 => FileOp::Mkdir,
            7 => FileOp::Rmdir,
            8 => FileOp::Chmod,
            9 => FileOp::Chown,
            10 => FileOp::Truncate,
            11 => FileOp::Write,
            _ => return None,
        })
    }
}

/// `AT_FDCWD`.
pub const AT_FDCWD: i64 = -100;
/// `AT_REMOVEDIR` (unlinkat removes a directory).
pub const AT_REMOVEDIR: u64 = 0x200;
/// `creat(2)` is `open(O_CREAT|O_WRONLY|O_TRUNC)`.
pub const CREAT_FLAGS: u64 = 0o100 | 0o1 | 0o1000;
/// Name of the array map of [`SyscallEntry`], indexed by syscall number.
pub const SYSCALLS_MAP: &str = "SYSCALLS";
/// Entries of [`SYSCALLS_MAP`]: every syscall number below this.
pub const MAX_SYSCALL: u32 = 512;
/// [`SyscallEntry`] argument index meaning "none".
pub const NO_ARG: u32 = u32::MAX;

/// Where a syscall's flags come from.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FlagsFrom {
    /// No flags.
    None = 0,
    /// The argument `flags`.
    Arg = 1,
    /// Fixed: [`CREAT_FLAGS`].
    Creat = 2,
}

/// Where a traced syscall keeps the arguments its [`FileOp`] needs, as the kernel reads it from
/// [`SYSCALLS_MAP`]. Kept in a map rather than compiled into the probe, so the verifier explores
/// the probe once, not once per syscall. The daemon fills it from its syscall table
/// (`safetytwin-daemon/src/syscalls.rs`); this crate holds no syscall number.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallEntry {
    /// A [`FileOp`]; 0 (the map's zeroed entries) for syscalls that are not traced.
    pub op: u32,
    /// Argument index of the dirfd of `path`, or [`NO_ARG`] for `AT_FDCWD`.
    pub dfd: u32,
    /// Argument index of `path`.
    pub path: u32,
    /// Argument index of the dirfd of `new_path`, or [`NO_ARG`].
    pub new_dfd: u32,
    /// Argument index of `new_path`, or [`NO_ARG`].
    pub new_path: u32,
    /// 1 when `new_path` is resolved like a path, 0 when kept as written.
    pub new_path_resolved: u32,
    /// A [`FlagsFrom`].
    pub flags_from: u32,
    /// Argument index of the flags (or of the `open_how` pointer).
    pub flags: u32,
    /// Argument index of the mode, or [`NO_ARG`].
    pub mode: u32,
    /// Argument index of the new owner uid (gid follows), or [`NO_ARG`].
    pub owner: u32,
    /// 1 when the syscall names its file by the fd in argument `dfd` alone (fchmod, fchown):
    /// the probe walks that file's own path.
    pub by_fd: u32,
    /// Always zero.
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<SyscallEntry>() == 48);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], only u32 fields.
unsafe impl aya::Pod for SyscallEntry {}

/// u64 words of a watched prefix.
pub const WATCHED_WORDS: usize = WATCHED_LEN / 8;

/// One watched tree, e.g. `/etc` (no trailing slash), laid out for a word-wise comparison in
/// the kernel: byte `i` of the path must equal byte `i` of `words` wherever `masks` is 0xff.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchedPrefix {
    /// Length of the prefix in bytes; 0 marks an unused slot.
    pub len: u32,
    /// The kernel's device number (`super_block.s_dev`, `MAJOR << 20 | MINOR`) of the
    /// filesystem the tree's root directory is on.
    pub dev: u32,
    /// The inode number of the tree's root directory, which the dirtied-inode probe climbs to;
    /// 0 (never matched) when the tree did not exist when the daemon loaded the probes: files
    /// below a tree created later are seen through their syscalls only.
    pub ino: u64,
    /// The prefix bytes, zero-padded, as native-endian words.
    pub words: [u64; WATCHED_WORDS],
    /// 0xff for each byte of `words` that is part of the prefix.
    pub masks: [u64; WATCHED_WORDS],
}

const _: () = assert!(core::mem::size_of::<WatchedPrefix>() == 16 + 2 * WATCHED_LEN);

impl WatchedPrefix {
    /// The slot for `prefix`; `None` when it is longer than [`WATCHED_LEN`].
    pub fn new(prefix: &[u8]) -> Option<WatchedPrefix> {
        if prefix.len() > WATCHED_LEN {
            return None;
        }
        let mut bytes = [0u8; WATCHED_LEN];
        let mut mask = [0u8; WATCHED_LEN];
        bytes[..prefix.len()].copy_from_slice(prefix);
        mask[..prefix.len()].fill(0xff);
        let word = |b: &[u8; WATCHED_LEN], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let mut out = WatchedPrefix {
            len: prefix.len() as u32,
            ..WatchedPrefix::default()
        };
        for i in 0..WATCHED_WORDS {
            out.words[i] = word(&bytes, i);
            out.masks[i] = word(&mask, i);
        }
        Some(out)
    }

    /// Whether `path` (with at least [`WATCHED_LEN`] readable bytes, `len` of them valid) is
    /// this prefix or lies below it: the same word-wise test the kernel runs.
    pub fn matches(&self, path: &[u64; WATCHED_WORDS + 1], len: usize) -> bool {
        let wl = self.len as usize;
        if wl == 0 || wl > WATCHED_LEN || len < wl {
            return false;
        }
        for ((word, mask), want) in path.iter().zip(&self.masks).zip(&self.words) {
            if word & mask != *want {
                return false;
            }
        }
        // No indexing that could panic: this also runs in the kernel.
        let next = path.get(wl / 8).copied().unwrap_or(0) >> ((wl % 8) * 8);
        len == wl || next as u8 == b'/'
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integer fields, no padding (size asserted).
unsafe impl aya::Pod for WatchedPrefix {}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_words(p: &str) -> [u64; WATCHED_WORDS + 1] {
        let mut bytes = [0u8; 8 * (WATCHED_WORDS + 1)];
        bytes[..p.len()].copy_from_slice(p.as_bytes());
        let mut words = [0u64; WATCHED_WORDS + 1];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_ne_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        }
        words
    }

    #[test]
    fn word_wise_prefix_match_respects_boundaries() {
        let etc = WatchedPrefix::new(b"/etc").unwrap();
        let check = |p: &str| etc.matches(&path_words(p), p.len());
        assert!(check("/etc"));
        assert!(check("/etc/hosts"));
        assert!(!check("/etcetera"));
        assert!(!check("/et"));
        assert!(!check("/usr/etc"));
        let long = WatchedPrefix::new(b"/usr/lib/systemd/system").unwrap();
        let p = "/usr/lib/systemd/system/foo.service";
        assert!(long.matches(&path_words(p), p.len()));
        let p = "/usr/lib/systemd/systemd-x";
        assert!(!long.matches(&path_words(p), p.len()));
        assert!(WatchedPrefix::new(&[b'x'; 65]).is_none());
    }
}

/// Data of a file event.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct FileData {
    /// A [`FileOp`].
    pub op: u32,
    /// The syscall number.
    pub syscall: u32,
    /// Open, rename or `AT_*` flags.
    pub flags: u64,
    /// Mode argument (creat, mkdir, chmod).
    pub mode: u32,
    /// New owner (chown); `u32::MAX` means unchanged.
    pub owner_uid: u32,
    /// New group (chown); `u32::MAX` means unchanged.
    pub owner_gid: u32,
    /// Valid bytes of `dir`.
    pub dir_len: u32,
    /// Valid bytes of `path`.
    pub path_len: u32,
    /// Valid bytes of `new_dir`.
    pub new_dir_len: u32,
    /// Valid bytes of `new_path`.
    pub new_path_len: u32,
    /// 1 when a directory walk hit its depth or length bound, else 0.
    pub truncated: u32,
    /// Leading bytes of `path` (`./`, `../`) already applied to `dir` by the kernel.
    pub path_skip: u32,
    /// Leading bytes of `new_path` already applied to `new_dir`.
    pub new_path_skip: u32,
    /// The fd an fd-based syscall used, or -1.
    pub fd: i32,
    /// [`FileOp::Write`]: the `I_DIRTY_*` flags the inode was dirtied with; else 0.
    pub dirty: u32,
    /// Absolute directory a relative `path` is relative to (empty: the root or an absolute path).
    pub dir: [u8; PATH_LEN],
    /// The path as passed to the syscall.
    pub path: [u8; PATH_LEN],
    /// Directory of a relative `new_path`.
    pub new_dir: [u8; PATH_LEN],
    /// The second path (rename destination, link source, symlink target).
    pub new_path: [u8; PATH_LEN],
}

/// A file record.
pub type FileEvent = Event<FileData>;

const _: () = assert!(core::mem::size_of::<FileData>() == 64 + 4 * PATH_LEN);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integer fields and byte arrays, no padding (size asserted).
unsafe impl aya::Pod for FileData {}
