//! `sched_process_fork` (tp_btf): `void (struct task_struct *parent, struct task_struct
//! *child)`, fired for every clone; new threads (child pid != child tgid) are skipped.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use safetytwin_common::events::{Type, fork::ForkEvent};

use crate::{
    kernel::{fill_info, load},
    maps::{OFFSETS, emit},
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn fork_sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    match try_fork_sched_process_fork(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_fork_sched_process_fork(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let off = OFFSETS.load();
    let tid: u32 = load(child, off.task_pid);
    let tgid: u32 = load(child, off.task_tgid);
    if tid != tgid {
        return Ok(0);
    }
    emit::<ForkEvent>(|ev| {
        // SAFETY: `ev` points into a live ring-buffer reservation of a ForkEvent.
        unsafe {
            fill_info(&raw mut (*ev).info, Type::Fork as u32, child, &off);
            (*ev).data.creator_pid = load(parent, off.task_tgid);
            (*ev).data._reserved = 0;
        }
    })
}
