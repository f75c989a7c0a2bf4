//! Config-file changes, two ways (see `safetytwin_common::events::file`).
//!
//! `file_sys_enter` is attached to `sys_enter_<name>` of every syscall in the daemon's table
//! (`safetytwin-daemon/src/syscalls.rs`), all of which change a name or attributes; it dispatches
//! on `__syscall_nr` through the `SYSCALLS` map, so no syscall number is compiled in. It reads
//! the path arguments and, when relative, resolves their directory (the dirfd's or the cwd's) to
//! an absolute path by walking the dentry chain across mounts; only a path under a watched
//! prefix is reported, at entry. There is no exit probe.
//!
//! `file_inode_dirty` is attached to `writeback_mark_inode_dirty` (tp_btf): a file's content,
//! size, times or attributes changed. It ends after two loads for an inode on a filesystem no
//! watched tree is on; otherwise it walks one of the inode's dentries up, towards a watched
//! tree's root directory, and reports the path below it. Opens, reads and the syscalls on an fd
//! are not traced at all.

use aya_ebpf::EbpfContext;
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use safetytwin_common::{
    events::{
        Type,
        file::{
            AT_FDCWD, AT_REMOVEDIR, CREAT_FLAGS, FileData, FileEvent, FileOp, FlagsFrom,
            MAX_WATCHED, NO_ARG, PATH_LEN, SyscallEntry, WATCHED_LEN, WATCHED_WORDS,
        },
    },
    offsets::{Offsets, SYS_ENTER_ARGS_OFFSET, SYSCALL_NR_OFFSET},
};

use crate::{
    kernel::{fill_info, load, read},
    maps::{
        FULL_SCRATCH, OFFSETS, PATH_SCRATCH, SCRATCH, SYSCALLS, WALK, WATCHED, WalkState, emit,
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

#[btf_tracepoint(function = "writeback_mark_inode_dirty")]
pub fn file_inode_dirty(ctx: BtfTracePointContext) -> i32 {
    match try_file_inode_dirty(&ctx) {
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

/// The flags of a rename or `*at` call (an argument), or creat's (fixed).
#[inline(always)]
fn flags_of(spec: &SyscallEntry, flags_arg: u64) -> u64 {
    match spec.flags_from {
        x if x == FlagsFrom::Arg as u32 => flags_arg,
        x if x == FlagsFrom::Creat as u32 => CREAT_FLAGS,
        _ => 0,
    }
}

fn try_file_sys_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let nr: i32 = ctx_load(ctx, SYSCALL_NR_OFFSET);
    let Some(spec) = SYSCALLS.get(nr as u32) else {
        return Ok(0);
    };
    if spec.op == 0 {
        return Ok(0);
    }
    report(ctx, spec, flags_of(spec, read_arg(ctx, spec.flags)))
}

/// Resolves the paths of a call that may change a watched file and reports it if one lies under
/// a watched tree. Kept out of line: the verifier checks it once, apart from the dispatch.
#[inline(never)]
fn report(ctx: &TracePointContext, spec: &SyscallEntry, flags: u64) -> Result<u32, u32> {
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
    rec.dirty = 0;
    send(rec, &off);
    Ok(0)
}

/// Emits `rec` (a map value) with the current task's header.
#[inline(always)]
fn send(rec: *const FileData, off: &Offsets) {
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
        }
    });
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
    let Some(pos) = prepend_name(buf, w.pos, w.dentry, &off) else {
        return 1;
    };
    w.pos = pos;
    w.dentry = parent;
    0
}

/// Runs `step` on the walk state `w` (the per-CPU `WALK` slot, already set up) up to
/// [`MAX_STEPS`] times, or until it returns 1, and gives back the state it left.
#[inline(always)]
fn run(
    w: *mut WalkState,
    step: extern "C" fn(u64, *mut core::ffi::c_void) -> i64,
) -> &'static WalkState {
    // SAFETY: `step` has the callback signature and uses no context.
    unsafe {
        bpf_loop(
            MAX_STEPS as u32,
            step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: a per-CPU map slot, live for the program's run and not shared while it runs.
    unsafe { &*w }
}

/// Writes `/` and the name of `dentry` just before `pos` in the path scratch buffer `buf`
/// (paths are gathered right to left) and returns where they start, or `None` when the name is
/// empty or does not fit.
#[inline(always)]
fn prepend_name(buf: *mut [u8; 2 * PATH_LEN], pos: u64, dentry: u64, off: &Offsets) -> Option<u64> {
    let name: u64 = read(dentry, off.dentry_d_name + off.qstr_name);
    let len = read::<u32>(dentry, off.dentry_d_name + off.qstr_len) as u64;
    if len == 0 || len + 1 >= pos {
        return None;
    }
    let pos = pos - len - 1;
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
    Some(pos)
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
            dev: 0,
            slot: 0,
        };
    }
    let w = run(w, walk_step);
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

/// `writeback_mark_inode_dirty(struct inode *inode, int flags)`: the inode's content, size,
/// times or attributes changed (a read never dirties it; an access time, rarely, does, and is
/// read back as no change). An inode on a filesystem no watched tree is on ends after two
/// direct loads.
fn try_file_inode_dirty(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let inode: u64 = ctx.arg(0);
    let flags: i32 = ctx.arg(1);
    let off = OFFSETS.load();
    let sb: u64 = load(inode, off.inode_i_sb);
    let dev: u32 = load(sb, off.super_block_s_dev);
    if !on_watched_fs(dev) {
        return Ok(0);
    }
    // One of the inode's names: the first dentry of its alias list. A file has one, unless it
    // has hard links; an inode not yet linked to a name (a file being created) has none, and
    // its creation is seen when it is written, or by its name's syscall.
    let first: u64 = read(inode, off.inode_i_dentry);
    if first == 0 {
        return Ok(0);
    }
    let Some((slot, pos)) = climb(first - off.dentry_d_alias as u64, dev) else {
        return Ok(0);
    };
    let (Some(tree), Some(rec), Some(buf)) = (
        WATCHED.get(slot),
        SCRATCH.get_ptr_mut(0),
        PATH_SCRATCH.get_ptr(0),
    ) else {
        return Ok(0);
    };
    // SAFETY: per-CPU scratch slot, not shared while this program runs.
    let rec = unsafe { &mut *rec };
    rec.op = FileOp::Write as u32;
    rec.syscall = 0;
    rec.flags = 0;
    rec.mode = 0;
    rec.owner_uid = u32::MAX;
    rec.owner_gid = u32::MAX;
    rec.fd = -1;
    rec.dirty = flags as u32;
    rec.truncated = 0;
    rec.path_skip = 0;
    rec.new_dir_len = 0;
    rec.new_path_len = 0;
    rec.new_path_skip = 0;
    // The tree's own path as `dir`, the names below it (without the leading `/`) as `path`.
    rec.dir_len = tree.len;
    let below = PATH_LEN.saturating_sub(pos + 1);
    rec.path_len = below as u32;
    // SAFETY: the prefix words are WATCHED_LEN bytes inside a map value; `dir` holds PATH_LEN.
    // The name bytes are masked below PATH_LEN inside a 2*PATH_LEN buffer.
    unsafe {
        bpf_probe_read_kernel(
            rec.dir.as_mut_ptr().cast(),
            WATCHED_LEN as u32,
            tree.words.as_ptr().cast(),
        );
        if below > 0 {
            bpf_probe_read_kernel(
                rec.path.as_mut_ptr().cast(),
                bound(below, MASK) as u32,
                buf.cast::<u8>().add(bound(pos + 1, MASK)).cast(),
            );
        }
    }
    send(rec, &off);
    Ok(0)
}

/// Whether a watched tree's root directory is on the filesystem with device number `dev`.
#[inline(always)]
fn on_watched_fs(dev: u32) -> bool {
    for k in 0..MAX_WATCHED as u32 {
        match WATCHED.get(k) {
            Some(w) if w.len != 0 && w.dev == dev => return true,
            Some(w) if w.len != 0 => {}
            _ => break,
        }
    }
    false
}

/// Walks from `dentry` up its parents (on filesystem `dev`) until one is a watched tree's root
/// directory, gathering the names on the way right to left in `PATH_SCRATCH`. Returns the
/// tree's slot and where the gathered names start (they end at `PATH_LEN`), or `None` when the
/// walk reached the filesystem's root, or its bounds, first.
#[inline(always)]
fn climb(dentry: u64, dev: u32) -> Option<(u32, usize)> {
    let w = WALK.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, not shared while this program runs.
    unsafe {
        *w = WalkState {
            mnt: 0,
            dentry,
            pos: PATH_LEN as u64,
            complete: 0,
            n: 0,
            rel: 0,
            parsing: 0,
            ups: 0,
            second: 0,
            dev: dev as u64,
            slot: 0,
        };
    }
    let w = run(w, climb_step);
    (w.slot != 0).then(|| ((w.slot - 1) as u32, bound(w.pos as usize, MASK)))
}

/// One step of [`climb`], as a `bpf_loop` callback: stop at a watched tree's root directory
/// (its slot + 1 in `slot`), else record this dentry's name and go to its parent. Returns 1 to
/// stop.
extern "C" fn climb_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(w), Some(buf)) = (WALK.get_ptr_mut(0), PATH_SCRATCH.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: per-CPU slot, not shared while this program runs.
    let w = unsafe { &mut *w };
    let off = OFFSETS.load();
    let inode: u64 = read(w.dentry, off.dentry_d_inode);
    let ino: u64 = read(inode, off.inode_i_ino);
    for k in 0..MAX_WATCHED as u32 {
        match WATCHED.get(k) {
            Some(t) if t.len != 0 && t.ino != 0 && t.ino == ino && t.dev as u64 == w.dev => {
                w.slot = k as u64 + 1;
                return 1;
            }
            Some(t) if t.len != 0 => {}
            _ => break,
        }
    }
    let parent: u64 = read(w.dentry, off.dentry_d_parent);
    if parent == w.dentry || parent == 0 {
        return 1;
    }
    let Some(pos) = prepend_name(buf, w.pos, w.dentry, &off) else {
        return 1;
    };
    w.pos = pos;
    w.dentry = parent;
    0
}
