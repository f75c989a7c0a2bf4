//! Config-file changes through syscall tracepoints: `file_sys_enter` is attached to
//! `sys_enter_<name>` and `file_sys_exit` to `sys_exit_<name>` for every syscall in the daemon's
//! table (`safetytwin-daemon/src/syscalls.rs`); both dispatch on `__syscall_nr` through the
//! `SYSCALLS` map, so no syscall number is compiled in.
//!
//! On enter, the path arguments are read and, when relative, their directory (the dirfd's or
//! the cwd's) is resolved to an absolute path by walking the dentry chain across mounts. Only if
//! the joined path falls under a watched prefix is the record parked for this thread; on exit it
//! is emitted if the syscall succeeded. Unwatched calls cost a string read and a comparison.

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
            MAX_WATCHED, NO_ARG, OPEN_WRITE_FLAGS, PATH_LEN, SyscallEntry, WATCHED_WORDS,
        },
    },
    offsets::Offsets,
};

use crate::{
    kernel::{fill_info, read},
    maps::{
        FULL_SCRATCH, GENERATION, OFFSETS, OPEN_FILES, OPEN_SCRATCH, PATH_SCRATCH, PENDING,
        SCRATCH, SYSCALLS, WALK, WATCHED, WalkState, emit,
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
pub fn file_sys_exit(ctx: TracePointContext) -> u32 {
    match try_file_sys_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

/// The six syscall arguments of a `sys_enter_*` record.
#[inline(always)]
fn args(ctx: &TracePointContext, off: &Offsets) -> [u64; 8] {
    let mut args = [0u64; 8];
    // SAFETY: reads the record at the offset its format file gives; zeroed on failure.
    unsafe {
        bpf_probe_read_kernel(
            args.as_mut_ptr().cast(),
            48,
            (ctx.as_ptr() as *const u8)
                .add(off.sys_enter_args as usize)
                .cast(),
        )
    };
    args
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

fn try_file_sys_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let off = OFFSETS.load();
    // SAFETY: reads the record at the offset its format file gives.
    let nr: i32 = unsafe { ctx.read_at(off.syscall_nr as usize) }.map_err(|_| 0u32)?;
    let Some(spec) = SYSCALLS.get(nr as u32) else {
        return Ok(0);
    };
    if spec.op == 0 {
        return Ok(0);
    }
    let args = args(ctx, &off);
    let tgid = bpf_get_current_pid_tgid() >> 32;
    if spec.op == FileOp::Close as u32 {
        let _ = OPEN_FILES.remove(tgid << 32 | (args[0] & 0xffff_ffff));
        return Ok(0);
    }
    if spec.fd != NO_ARG {
        return park_fd_op(spec, &args, tgid, nr as u32);
    }
    let flags = match spec.flags_from {
        x if x == FlagsFrom::Arg as u32 => arg(&args, spec.flags, 0),
        x if x == FlagsFrom::Creat as u32 => CREAT_FLAGS,
        // SAFETY: bpf_probe_read_user tolerates any address.
        x if x == FlagsFrom::OpenHow as u32 => {
            unsafe { bpf_probe_read_user(arg(&args, spec.flags, 0) as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    };
    if spec.op == FileOp::Open as u32 && flags & OPEN_WRITE_FLAGS == 0 {
        return Ok(0);
    }

    let rec = SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU scratch slot, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    rec.truncated = 0;
    let mut keep = resolve(
        task,
        &off,
        arg(&args, spec.dfd, AT_FDCWD as u64) as i32 as i64,
        arg(&args, spec.path, 0),
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
    rec.fd = -1;
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
    rec.ret = 0;
    PENDING
        .insert(bpf_get_current_pid_tgid(), &*rec, 0)
        .map_err(|_| 0u32)?;
    Ok(0)
}

/// A write, truncate, chmod or chown through an fd: reported when the fd was opened for writing
/// under a watched tree (see `OPEN_FILES`) and not yet reported in this batch generation. One
/// hash lookup is all an unrelated write costs.
fn park_fd_op(spec: &SyscallEntry, args: &[u64; 8], tgid: u64, nr: u32) -> Result<u32, u32> {
    let fd = arg(args, spec.fd, u64::MAX) as u32;
    let Some(open) = OPEN_FILES.get_ptr(tgid << 32 | fd as u64) else {
        return Ok(0);
    };
    // SAFETY: a live map value; a racing close at worst drops this one report.
    let open = unsafe { &*open };
    if open.generation == current_generation() {
        return Ok(0);
    }
    let rec = SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: per-CPU scratch slot, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    rec.op = spec.op;
    rec.syscall = nr;
    rec.flags = 0;
    rec.mode = arg(args, spec.mode, 0) as u32;
    rec.owner_uid = arg(args, spec.owner, u32::MAX as u64) as u32;
    rec.owner_gid = if spec.owner < 5 {
        arg(args, spec.owner + 1, u32::MAX as u64) as u32
    } else {
        u32::MAX
    };
    rec.dir_len = open.dir_len;
    rec.path_len = open.path_len;
    rec.path_skip = open.path_skip;
    rec.new_dir_len = 0;
    rec.new_path_len = 0;
    rec.new_path_skip = 0;
    rec.truncated = 0;
    rec.fd = fd as i32;
    rec.ret = 0;
    // SAFETY: both are PATH_LEN arrays in map values.
    unsafe {
        bpf_probe_read_kernel(
            rec.dir.as_mut_ptr().cast(),
            PATH_LEN as u32,
            open.dir.as_ptr().cast(),
        );
        bpf_probe_read_kernel(
            rec.path.as_mut_ptr().cast(),
            PATH_LEN as u32,
            open.path.as_ptr().cast(),
        );
    }
    PENDING
        .insert(bpf_get_current_pid_tgid(), &*rec, 0)
        .map_err(|_| 0u32)?;
    Ok(0)
}

/// The batch generation the daemon is in (it bumps it at every cut).
#[inline(always)]
fn current_generation() -> u64 {
    GENERATION.get(0).copied().unwrap_or(0)
}

/// After a successful open for writing, remembers the fd with the resolved path, so later writes
/// through it are seen; after a reported fd-based change, marks the fd reported for this batch.
#[inline(always)]
fn remember_fd(rec: &FileData, tgid: u64, ret: i64) {
    let generation = current_generation();
    if rec.fd >= 0 {
        if let Some(open) = OPEN_FILES.get_ptr_mut(tgid << 32 | rec.fd as u32 as u64) {
            // SAFETY: a live map value.
            unsafe { (*open).generation = generation };
        }
        return;
    }
    if rec.op != FileOp::Open as u32 {
        return;
    }
    let Some(open) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot; the copies stay within PATH_LEN arrays of map values.
    unsafe {
        (*open).generation = generation;
        (*open).dir_len = rec.dir_len;
        (*open).path_len = rec.path_len;
        (*open).path_skip = rec.path_skip;
        (*open)._reserved = 0;
        bpf_probe_read_kernel(
            (*open).dir.as_mut_ptr().cast(),
            PATH_LEN as u32,
            rec.dir.as_ptr().cast(),
        );
        bpf_probe_read_kernel(
            (*open).path.as_mut_ptr().cast(),
            PATH_LEN as u32,
            rec.path.as_ptr().cast(),
        );
        let _ = OPEN_FILES.insert(tgid << 32 | (ret as u64 & 0xffff_ffff), &*open, 0);
    }
}

fn try_file_sys_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let Some(rec) = PENDING.get_ptr(id) else {
        return Ok(0);
    };
    let off = OFFSETS.load();
    // SAFETY: reads the record at the offset its format file gives.
    let ret: i64 = unsafe { ctx.read_at(off.sys_exit_ret as usize) }.unwrap_or(-1);
    if ret >= 0 {
        // SAFETY: the helper has no preconditions; `fill_info` reads its BTF pointer directly.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        let _ = emit::<FileEvent>(|ev| {
            // SAFETY: `ev` points into a live ring-buffer reservation of a FileEvent; `rec` is a
            // map value of the same data type.
            unsafe {
                fill_info(&raw mut (*ev).info, Type::File as u32, task, &off);
                let data = &raw mut (*ev).data;
                bpf_probe_read_kernel(
                    data.cast(),
                    core::mem::size_of::<FileData>() as u32,
                    rec.cast(),
                );
                (*data).ret = ret;
            }
        });
        // SAFETY: `rec` is a live map value until the remove below.
        remember_fd(unsafe { &*rec }, id >> 32, ret);
    }
    let _ = PENDING.remove(id);
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
    if n == 0 {
        return false;
    }
    if path[0] == b'/' {
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
