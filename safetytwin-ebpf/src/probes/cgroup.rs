//! Unit lifecycle through the cgroups systemd names after units (tp_btf):
//! `cgroup_mkdir(struct cgroup *cgrp, const char *path)`,
//! `cgroup_rmdir(struct cgroup *cgrp, const char *path)`,
//! `cgroup_attach_task(struct cgroup *dst_cgrp, const char *path, struct task_struct *task,
//! bool threadgroup)` and `cgroup_notify_populated(struct cgroup *cgrp, const char *path,
//! int val)`. Only the unit hierarchy (`UNIT_HIERARCHY`) leaves the kernel.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task_btf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use safetytwin_common::events::{
    Type,
    cgroup::{CgroupEvent, CgroupOp},
};

use crate::{
    kernel::{fill_info, load},
    maps::{OFFSETS, UNIT_HIERARCHY, emit},
};

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    match try_cgroup(&ctx, CgroupOp::Mkdir, 0) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    match try_cgroup(&ctx, CgroupOp::Rmdir, 0) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    match try_cgroup_attach_task(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[btf_tracepoint(function = "cgroup_notify_populated")]
pub fn cgroup_cgroup_notify_populated(ctx: BtfTracePointContext) -> i32 {
    let populated: u64 = ctx.arg(2);
    match try_cgroup(&ctx, CgroupOp::Populated, (populated as u32 != 0) as u32) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

/// The kernel calls the attach tracepoint once per migrated thread; one event per process
/// (the group leader) is enough.
fn try_cgroup_attach_task(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let task: u64 = ctx.arg(2);
    let off = OFFSETS.load();
    let tid: u32 = load(task, off.task_pid);
    let tgid: u32 = load(task, off.task_tgid);
    if tid != tgid {
        return Ok(0);
    }
    try_cgroup(ctx, CgroupOp::Attach, tgid)
}

fn try_cgroup(ctx: &BtfTracePointContext, op: CgroupOp, value: u32) -> Result<i32, i32> {
    let cgrp: u64 = ctx.arg(0);
    let path: u64 = ctx.arg(1);
    let off = OFFSETS.load();
    let root: u64 = load(cgrp, off.cgroup_root);
    let hierarchy: i32 = load(root, off.cgroup_root_hierarchy_id);
    if hierarchy as u32 != UNIT_HIERARCHY.load() {
        return Ok(0);
    }
    // SAFETY: the helper has no preconditions; it returns the current task as a BTF pointer,
    // which `fill_info` reads with direct loads.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    emit::<CgroupEvent>(|ev| {
        // SAFETY: `ev` points into a live ring-buffer reservation of a CgroupEvent.
        unsafe {
            fill_info(&raw mut (*ev).info, Type::Cgroup as u32, task, &off);
            let data = &raw mut (*ev).data;
            (*data).op = op as u32;
            (*data).value = value;
            let kn: u64 = load(cgrp, off.cgroup_kn);
            (*data).cgroup_id = load(kn, off.kernfs_node_id);
            (*data).level = load(cgrp, off.cgroup_level);
            (*data).path_len =
                match bpf_probe_read_kernel_str_bytes(path as *const u8, &mut (*data).path) {
                    Ok(s) => s.len() as u32,
                    Err(_) => 0,
                };
        }
    })
}
