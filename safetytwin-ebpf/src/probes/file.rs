//! Config-file changes through syscall tracepoints: `file_sys_enter` is attached to
//! `sys_enter_<name>` and `file_sys_exit` to `sys_exit_<name>` for every syscall in the daemon's
//! table (`safetytwin-daemon/src/syscalls.rs`); both dispatch on `__syscall_nr` through the
//! `SYSCALLS` map, so no syscall number is compiled in.
//!
//! On enter, what can be decided from the arguments is decided first (an open without a write
//! flag ends there, before any path is read). Then the path arguments are read and, when
//! relative, their directory (the dirfd's or the cwd's) is resolved to an absolute path by
//! walking the dentry chain across mounts. Only if the joined path falls under a watched prefix
//! is the record parked for this thread; on exit it is emitted if the syscall succeeded. The
//! exit probe of a syscall with nothing parked ends after one load (`PARKED`).
//!
//! `write`, `close` and the other syscalls on an fd opened for writing are not traced at all:
//! the open is the event, and the daemon re-reads files still held open at each cut.

use aya_ebpf::EbpfContext;
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use safetytwin_common::{
    events::{
        Type,
        file::{
            AT_FDCWD, AT_REMOVEDIR, CREAT_FLAGS, FileData, FileEvent, FileOp, FlagsFrom,
            MAX_WATCHED, NO_ARG, OPEN_WRITE_FLAGS, PATH_LEN, RET_AT_ENTRY, SyscallEntry,
            WATCHED_WORDS,
        },
    },
    offsets::{Offsets, SYS_ENTER_ARGS_OFFSET, SYS_EXIT_RET_OFFSET, SYSCALL_NR_OFFSET},
};

use crate::{
    kernel::{atomic_add, fill_info, read},
    maps::{
        FULL_SCRATCH, OFFSETS, PARKED, PATH_SCRATCH, PENDING, SCRATCH, SYSCALLS, WALK, WATCHED,
        WalkState, emit,
    },
};

/// `v & mask`, with the mask kept in the emitted code: the compiler may otherwise drop it on
/// facts it knows but the verifier, tracking another register, does not.
#[inline(always)]
fn bound(v: usize, mask: usize) -> usize {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

/// Steps of a walk (prefix segments, mount crossings and directories) before giving up; the
/// path is then marked truncated.
const MAX_STEPS: usize = 48;
const MASK: usize = PATH_LEN - 1;

#[tracepoint]
pub fn file_sys_enter(ctx: TracePointContext) -> u32 {
    match try_file_sys_enter(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[tracepoint]
pub fn file_open_enter(ctx: TracePointContext) -> u32 {
    match try_file_open_enter(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[tracepoint]
pub fn file_sys_exit(ctx: TracePointContext) -> u32 {
    match try_file_sys_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

/// The six syscall arguments of a `sys_enter_*` record. Read with a helper: a syscall with
/// fewer arguments has a shorter record, and the kernel refuses to attach a program whose
/// direct loads reach past the record of any tracepoint it is attached to.
#[inline(always)]
fn args(ctx: &TracePointContext) -> [u64; 8] {
    let mut args = [0u64; 8];
    // SAFETY: reads the record; zeroed on failure.
    unsafe {
        bpf_probe_read_kernel(
            args.as_mut_ptr().cast(),
            48,
            (ctx.as_ptr() as *const u8)
                .add(SYS_ENTER_ARGS_OFFSET)
                .cast(),
        )
    };
    args
}

/// A `T` at `offset` of the tracepoint record: a plain load, not a helper call. `offset` must
/// be a compile-time constant: the verifier only accepts immediate offsets into the context.
#[inline(always)]
fn ctx_load<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the offset is a compile-time constant the daemon checked against this kernel's
    // format files, and the kernel refuses to attach a program whose loads reach past a record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset).cast::<T>()) }
}

/// Argument `i` of a `sys_enter_*` record (0 for [`NO_ARG`]), read alone: this program's stack
/// adds to `park`'s and the walk's, and kernels before 6.8 refuse a chain above 512 bytes.
#[inline(always)]
fn read_arg(ctx: &TracePointContext, i: u32) -> u64 {
    if i >= 6 {
        return 0;
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes of the record; zeroed on failure.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut v).cast(),
            8,
            (ctx.as_ptr() as *const u8)
                .add(SYS_ENTER_ARGS_OFFSET + 8 * (i & 7) as usize)
                .cast(),
        )
    };
    v
}

/// Argument `i` (an index from the syscall table, [`NO_ARG`] for none) or `default`.
#[inline(always)]
fn arg(args: &[u64; 8], i: u32, default: u64) -> u64 {
    if i < 6 {
        args[(i & 7) as usize]
    } else {
        default
    }
}

/// The count of records parked in `PENDING`, so the exit probe of every other syscall (above
/// all the read-only opens) ends after one array load instead of a hash lookup.
#[inline(always)]
fn parked() -> Option<*mut u64> {
    PARKED.get_ptr_mut(0)
}

/// The flags of an open, rename or `*at` call: an argument, fixed (creat), or the first word of
/// openat2's `struct open_how`.
#[inline(always)]
fn flags_of(spec: &SyscallEntry, flags_arg: u64) -> u64 {
    match spec.flags_from {
        x if x == FlagsFrom::Arg as u32 => flags_arg,
        x if x == FlagsFrom::Creat as u32 => CREAT_FLAGS,
        // SAFETY: bpf_probe_read_user tolerates any address.
        x if x == FlagsFrom::OpenHow as u32 => {
            unsafe { bpf_probe_read_user(flags_arg as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    }
}

/// open, openat, openat2: decided from the record alone, with plain loads, before anything
/// else. Nearly every open on a host only reads, and ends here.
///
/// An open for writing under a watched tree is reported here, at entry, and these syscalls have
/// no exit probe: the exit of every open on the host would otherwise pay for the few that
/// write. The daemon reads the file at the cut after the open and once more at the next
/// (`held.rs`), so an open that failed changes nothing and one still in flight at the first
/// cut is read at the second.
fn try_file_open_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let nr: i32 = ctx_load(ctx, SYSCALL_NR_OFFSET);
    let Some(spec) = SYSCALLS.get(nr as u32) else {
        return Ok(0);
    };
    // The daemon attaches this program only to opens with their path in argument 0 or 1 and
    // their flags in 1 or 2, and every such record holds three arguments. All three are loaded,
    // then chosen: the compiler would otherwise pick the offset and load once, and the verifier
    // refuses a load from the record at a computed offset.
    let (arg0, arg1, arg2) = (
        ctx_load::<u64>(ctx, SYS_ENTER_ARGS_OFFSET),
        ctx_load::<u64>(ctx, SYS_ENTER_ARGS_OFFSET + 8),
        ctx_load::<u64>(ctx, SYS_ENTER_ARGS_OFFSET + 16),
    );
    let flags = flags_of(spec, if spec.flags == 1 { arg1 } else { arg2 });
    if spec.op != FileOp::Open as u32 || flags & OPEN_WRITE_FLAGS == 0 {
        return Ok(0);
    }
    let path = if spec.path == 0 { arg0 } else { arg1 };
    if !may_be_watched(path) {
        return Ok(0);
    }
    park(ctx, spec, flags, 1)
}

/// Whether the path at `user_path` may lie under a watched tree, from its first eight bytes: an
/// absolute path whose first word differs from every watched prefix's (where the prefix has
/// bytes) cannot match the full comparison either, which compares the same bytes. A relative
/// path, or one that cannot be read this way, may.
#[inline(always)]
fn may_be_watched(user_path: u64) -> bool {
    // SAFETY: bpf_probe_read_user tolerates any address.
    let Ok(first) = (unsafe { bpf_probe_read_user(user_path as *const u64) }) else {
        return true;
    };
    if first as u8 != b'/' {
        return true;
    }
    for k in 0..MAX_WATCHED as u32 {
        match WATCHED.get(k) {
            Some(w) if w.first_word_may_match(first) => return true,
            Some(_) => {}
            None => break,
        }
    }
    false
}

fn try_file_sys_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let nr: i32 = ctx_load(ctx, SYSCALL_NR_OFFSET);
    let Some(spec) = SYSCALLS.get(nr as u32) else {
        return Ok(0);
    };
    if spec.op == 0 {
        return Ok(0);
    }
    let flags = flags_of(spec, read_arg(ctx, spec.flags));
    if spec.op == FileOp::Open as u32 && flags & OPEN_WRITE_FLAGS == 0 {
        return Ok(0);
    }
    park(ctx, spec, flags, 0)
}

/// Resolves the paths of a call that may change a watched file and, if one lies under a watched
/// tree, parks the record until the exit says whether the call succeeded. One copy, called by
/// both enter programs.
#[inline(never)]
fn park(
    ctx: &TracePointContext,
    spec: &SyscallEntry,
    flags: u64,
    at_entry: u32,
) -> Result<u32, u32> {
    // Read again rather than passed: a BPF function takes at most five arguments.
    let nr: i32 = ctx_load(ctx, SYSCALL_NR_OFFSET);
    let args = args(ctx);
    let off = OFFSETS.load();
    let rec = SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU scratch slot, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    rec.truncated = 0;
    // An fd-based call (fchmod, fchown) names its file by the fd alone: no path string, and the
    // walk starts at the file itself.
    let (dfd, path) = if spec.by_fd != 0 {
        (arg(&args, spec.dfd, u64::MAX) as i32 as i64, 0)
    } else {
        (
            arg(&args, spec.dfd, AT_FDCWD as u64) as i32 as i64,
            arg(&args, spec.path, 0),
        )
    };
    let mut keep = resolve(
        task,
        &off,
        dfd,
        path,
        &mut rec.dir,
        &mut rec.dir_len,
        &mut rec.path,
        &mut rec.path_len,
        &mut rec.path_skip,
        &mut rec.truncated,
        false,
    );
    rec.new_dir_len = 0;
    rec.new_path_len = 0;
    rec.new_path_skip = 0;
    rec.fd = if spec.by_fd != 0 { dfd as i32 } else { -1 };
    if spec.new_path != NO_ARG {
        let new_path = arg(&args, spec.new_path, 0);
        if spec.new_path_resolved != 0 {
            let new_hit = resolve(
                task,
                &off,
                arg(&args, spec.new_dfd, AT_FDCWD as u64) as i32 as i64,
                new_path,
                &mut rec.new_dir,
                &mut rec.new_dir_len,
                &mut rec.new_path,
                &mut rec.new_path_len,
                &mut rec.new_path_skip,
                &mut rec.truncated,
                true,
            );
            // A rename into a watched tree is a change there; a link only adds `path`.
            keep |= spec.op == FileOp::Rename as u32 && new_hit;
        } else {
            // SAFETY: bpf_probe_read_user_str_bytes tolerates any address.
            rec.new_path_len =
                unsafe { bpf_probe_read_user_str_bytes(new_path as *const u8, &mut rec.new_path) }
                    .map(|s| s.len() as u32)
                    .unwrap_or(0);
        }
    }
    if !keep {
        return Ok(0);
    }
    rec.op = if spec.op == FileOp::Unlink as u32 && flags & AT_REMOVEDIR != 0 {
        FileOp::Rmdir as u32
    } else {
        spec.op
    };
    rec.syscall = nr as u32;
    rec.flags = flags;
    rec.mode = arg(&args, spec.mode, 0) as u32;
    rec.owner_uid = arg(&args, spec.owner, u32::MAX as u64) as u32;
    rec.owner_gid = if spec.owner < 5 {
        arg(&args, spec.owner + 1, u32::MAX as u64) as u32
    } else {
        u32::MAX
    };
    if at_entry != 0 {
        // An open: nothing waits for its exit (see `try_file_open_enter`).
        send(rec, RET_AT_ENTRY, &off);
        return Ok(0);
    }
    rec.ret = 0;
    let parked = parked().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    // A thread has one syscall in flight: an entry already there is a leftover (its exit was
    // never seen) and is already counted.
    let counted = PENDING.get_ptr(id).is_some();
    PENDING.insert(id, &*rec, 0).map_err(|_| 0u32)?;
    if !counted {
        atomic_add(parked, 1);
    }
    Ok(0)
}

/// Emits `rec` (a map value) with the current task's header and return value `ret`.
#[inline(always)]
fn send(rec: *const FileData, ret: i64, off: &Offsets) {
    // SAFETY: the helper has no preconditions; `fill_info` reads its BTF pointer directly.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let _ = emit::<FileEvent>(|ev| {
        // SAFETY: `ev` points into a live ring-buffer reservation of a FileEvent; `rec` is a
        // map value of the same data type.
        unsafe {
            fill_info(&raw mut (*ev).info, Type::File as u32, task, off);
            let data = &raw mut (*ev).data;
            bpf_probe_read_kernel(
                data.cast(),
                core::mem::size_of::<FileData>() as u32,
                rec.cast(),
            );
            (*data).ret = ret;
        }
    });
}

fn try_file_sys_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let parked = parked().ok_or(0u32)?;
    // SAFETY: a live array map value; a stale read only costs one hash lookup or, for a record
    // parked by another thread this very moment, nothing (that thread's own exit reads anew).
    if unsafe { core::ptr::read_volatile(parked) } == 0 {
        return Ok(0);
    }
    let id = bpf_get_current_pid_tgid();
    let Some(rec) = PENDING.get_ptr(id) else {
        return Ok(0);
    };
    let ret: i64 = ctx_load(ctx, SYS_EXIT_RET_OFFSET);
    if ret >= 0 {
        send(rec, ret, &OFFSETS.load());
    }
    if PENDING.remove(id).is_ok() {
        atomic_add(parked, -1);
    }
    Ok(0)
}

/// Reads `user_path` into `path` and, when it is relative, the absolute path of its directory
/// into `dir` (with `skip` leading bytes of `path`, `./` and `../`, already applied to it).
/// Returns whether the joined path falls under a watched prefix.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn resolve(
    task: u64,
    off: &Offsets,
    dfd: i64,
    user_path: u64,
    dir: &mut [u8; PATH_LEN],
    dir_len: &mut u32,
    path: &mut [u8; PATH_LEN],
    path_len: &mut u32,
    skip: &mut u32,
    truncated: &mut u32,
    second: bool,
) -> bool {
    // SAFETY: bpf_probe_read_user_str_bytes tolerates any address.
    let n = unsafe { bpf_probe_read_user_str_bytes(user_path as *const u8, path) }
        .map(|s| s.len())
        .unwrap_or(0);
    *path_len = n as u32;
    *dir_len = 0;
    *skip = 0;
    // No path: the fd itself is the file (fchmod, fchown, `AT_EMPTY_PATH`); the walk names it.
    if n == 0 && dfd < 0 {
        return false;
    }
    if n > 0 && path[0] == b'/' {
        // Full path = "" + "/" + path[1..].
        return watched(dir, 0, path, 1, n);
    }
    let Some((mnt, dentry)) = base_dir(task, off, dfd) else {
        return false;
    };
    let (dlen, rel) = walk(mnt, dentry, second, n, dir, truncated);
    *dir_len = dlen as u32;
    *skip = rel as u32;
    watched(dir, dlen, path, rel, n)
}

/// The `struct vfsmount *` and `struct dentry *` of the cwd (`AT_FDCWD`) or of fd `dfd`.
#[inline(always)]
fn base_dir(task: u64, off: &Offsets, dfd: i64) -> Option<(u64, u64)> {
    let path = if dfd == AT_FDCWD {
        let fs: u64 = read(task, off.task_fs);
        fs + off.fs_pwd as u64
    } else {
        let files: u64 = read(task, off.task_files);
        let fdt: u64 = read(files, off.files_fdt);
        let max: u32 = read(fdt, off.fdtable_max_fds);
        if dfd < 0 || dfd >= max as i64 {
            return None;
        }
        let fds: u64 = read(fdt, off.fdtable_fd);
        let file: u64 = read(fds + 8 * dfd as u64, 0);
        if file == 0 {
            return None;
        }
        file + off.file_f_path as u64
    };
    let mnt: u64 = read(path, off.path_mnt);
    let dentry: u64 = read(path, off.path_dentry);
    (mnt != 0 && dentry != 0).then_some((mnt, dentry))
}

/// One step, as a `bpf_loop` callback: first consume one leading `./` or `../` of the path,
/// then go one directory up, recording its name unless a `../` cancels it. Returns 1 to stop.
///
/// The walk's state lives in the per-CPU `WALK` map, not on the stack: the verifier does not
/// track map contents, so this body is verified once instead of once per distinct state.
extern "C" fn walk_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(w), Some(rec), Some(buf)) = (
        WALK.get_ptr_mut(0),
        SCRATCH.get_ptr(0),
        PATH_SCRATCH.get_ptr_mut(0),
    ) else {
        return 1;
    };
    // SAFETY: per-CPU slots, not shared while this program runs.
    let (w, rec) = unsafe { (&mut *w, &*rec) };
    if w.parsing != 0 {
        let path = if w.second == 0 {
            &rec.path
        } else {
            &rec.new_path
        };
        let at = |i: u64| path[bound((w.rel + i) as usize, MASK)];
        if w.rel + 1 < w.n && at(0) == b'.' && at(1) == b'/' {
            w.rel += 2;
        } else if w.rel + 2 < w.n && at(0) == b'.' && at(1) == b'.' && at(2) == b'/' {
            w.rel += 3;
            w.ups += 1;
        } else {
            w.parsing = 0;
        }
        return 0;
    }
    let off = OFFSETS.load();
    let mnt_root: u64 = read(w.mnt, off.vfsmount_mnt_root);
    if w.dentry == mnt_root {
        let mount = w.mnt - off.mount_mnt as u64;
        let parent: u64 = read(mount, off.mount_mnt_parent);
        if parent == mount || parent == 0 {
            w.complete = 1;
            return 1;
        }
        w.dentry = read(mount, off.mount_mnt_mountpoint);
        w.mnt = parent + off.mount_mnt as u64;
        return 0;
    }
    let parent: u64 = read(w.dentry, off.dentry_d_parent);
    if parent == w.dentry || parent == 0 {
        w.complete = 1;
        return 1;
    }
    if w.ups > 0 {
        w.ups -= 1;
        w.dentry = parent;
        return 0;
    }
    let name: u64 = read(w.dentry, off.dentry_d_name + off.qstr_name);
    let len = read::<u32>(w.dentry, off.dentry_d_name + off.qstr_len) as u64;
    if len == 0 || len + 1 >= w.pos {
        return 1;
    }
    let pos = w.pos - len - 1;
    // SAFETY: offsets are masked below PATH_LEN and sizes below PATH_LEN in a 2*PATH_LEN buffer.
    unsafe {
        let base = buf.cast::<u8>();
        *base.add(bound(pos as usize, MASK)) = b'/';
        bpf_probe_read_kernel(
            base.add(bound(pos as usize + 1, MASK)).cast(),
            bound(len as usize, MASK) as u32,
            name as *const core::ffi::c_void,
        );
    }
    w.pos = pos;
    w.dentry = parent;
    0
}

/// Writes the absolute path of the directory a relative path is relative to (`dentry` on
/// `mnt`, moved up by the path's leading `../`) into `dir`, `/a/b` style; the root is the empty
/// string. `second` picks `new_path` over `path` of the record being built. Returns the length
/// and how many leading bytes of the path were consumed. Components are gathered right to left
/// in a per-CPU buffer twice the path size, so every masked write is verifiably in bounds.
#[inline(always)]
fn walk(
    mnt: u64,
    dentry: u64,
    second: bool,
    n: usize,
    dir: &mut [u8; PATH_LEN],
    truncated: &mut u32,
) -> (usize, usize) {
    let (Some(w), Some(buf)) = (WALK.get_ptr_mut(0), PATH_SCRATCH.get_ptr_mut(0)) else {
        return (0, 0);
    };
    // SAFETY: per-CPU slot, not shared while this program runs.
    unsafe {
        *w = WalkState {
            mnt,
            dentry,
            pos: PATH_LEN as u64,
            complete: 0,
            n: n as u64,
            rel: 0,
            parsing: 1,
            ups: 0,
            second: second as u64,
        };
    }
    // SAFETY: walk_step has the callback signature and uses no context.
    unsafe {
        bpf_loop(
            MAX_STEPS as u32,
            walk_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let w = unsafe { &*w };
    if w.complete == 0 {
        *truncated = 1;
    }
    let rel = bound(w.rel as usize, MASK);
    let len = bound(PATH_LEN.wrapping_sub(w.pos as usize), MASK);
    if len > 0 {
        // SAFETY: copies `len` bytes from inside the scratch buffer into `dir`.
        unsafe {
            bpf_probe_read_kernel(
                dir.as_mut_ptr().cast(),
                len as u32,
                buf.cast::<u8>().add(bound(w.pos as usize, MASK)).cast(),
            )
        };
    }
    (len, rel)
}

/// Whether `dir + "/" + path[rel..n]` equals a watched prefix or lies below one. The joined
/// path is assembled in a per-CPU buffer with two copies, then compared word-wise.
#[inline(always)]
fn watched(dir: &[u8; PATH_LEN], dlen: usize, path: &[u8; PATH_LEN], rel: usize, n: usize) -> bool {
    let Some(full) = FULL_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let bytes = full.cast::<u8>();
    let dlen = bound(dlen, MASK);
    let plen = bound(n.saturating_sub(rel), MASK);
    // SAFETY: offsets are masked below 512 and sizes below 256 in a 1024-byte buffer.
    unsafe {
        if dlen > 0 {
            bpf_probe_read_kernel(bytes.cast(), dlen as u32, dir.as_ptr().cast());
        }
        *bytes.add(dlen) = b'/';
        bpf_probe_read_kernel(
            bytes.add(bound(dlen + 1, 0x1ff)).cast(),
            plen as u32,
            path.as_ptr().add(bound(rel, MASK)).cast(),
        );
    }
    let total = dlen + 1 + plen;
    // SAFETY: the buffer holds more than WATCHED_WORDS + 1 words.
    let words = unsafe { &*full.cast::<[u64; WATCHED_WORDS + 1]>() };
    for k in 0..MAX_WATCHED as u32 {
        match WATCHED.get(k) {
            Some(w) if w.matches(words, total) => return true,
            Some(_) => {}
            None => break,
        }
    }
    false
}
