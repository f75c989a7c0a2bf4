//! `sched_process_exit` (tp_btf): `void (struct task_struct *p, bool group_dead)`, fired in
//! `do_exit` for every thread; only the last thread of a process (`group_dead`) is emitted.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use safetytwin_common::events::{Type, exit::ExitEvent};

use crate::{
    kernel::{fill_info, load},
    maps::{OFFSETS, emit},
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn exit_sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    match try_exit_sched_process_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_exit_sched_process_exit(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let task: u64 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff == 0 {
        return Ok(0);
    }
    emit_exit(task)
}

/// For kernels whose `sched_process_exit` has no `group_dead` yet (Debian 12's 6.1: `void
/// (struct task_struct *p)`), which the verifier refuses the program above on; the daemon
/// loads this one instead. The thread-group leader's exit stands for the process's.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn exit_sched_process_exit_leader(ctx: BtfTracePointContext) -> i32 {
    match try_exit_sched_process_exit_leader(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_exit_sched_process_exit_leader(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let task: u64 = ctx.arg(0);
    let off = OFFSETS.load();
    if load::<u32>(task, off.task_pid) != load::<u32>(task, off.task_tgid) {
        return Ok(0);
    }
    emit_exit(task)
}

#[inline(always)]
fn emit_exit(task: u64) -> Result<i32, i32> {
    let off = OFFSETS.load();
    emit::<ExitEvent>(|ev| {
        // SAFETY: `ev` points into a live ring-buffer reservation of an ExitEvent.
        unsafe {
            fill_info(&raw mut (*ev).info, Type::Exit as u32, task, &off);
            (*ev).data.status = load(task, off.task_exit_code);
            (*ev).data._reserved = 0;
        }
    })
}
