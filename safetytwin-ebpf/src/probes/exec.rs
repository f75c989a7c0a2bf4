//! `sched_process_exec` (tp_btf): `void (struct task_struct *p, pid_t old_pid,
//! struct linux_binprm *bprm)`, fired after the point of no return of a successful exec.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_probe_read_user},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use safetytwin_common::events::{
    Type,
    exec::{ARGV_LEN, ExecEvent},
};

use crate::{
    kernel::{fill_info, load},
    maps::{OFFSETS, emit},
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    match try_exec_sched_process_exec(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_exec_sched_process_exec(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let task: u64 = ctx.arg(0);
    let old_tid: i32 = ctx.arg(1);
    let bprm: u64 = ctx.arg(2);
    let off = OFFSETS.load();
    emit::<ExecEvent>(|ev| {
        // SAFETY: `ev` points into a live ring-buffer reservation of an ExecEvent.
        unsafe {
            fill_info(&raw mut (*ev).info, Type::Exec as u32, task, &off);
            let data = &raw mut (*ev).data;
            (*data).old_tid = old_tid as u32;

            let filename: u64 = load(bprm, off.binprm_filename);
            (*data).filename_len =
                match bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut (*data).filename)
                {
                    Ok(s) => s.len() as u32,
                    Err(_) => 0,
                };

            let mm: u64 = load(task, off.task_mm);
            let start: u64 = load(mm, off.mm_arg_start);
            let end: u64 = load(mm, off.mm_arg_end);
            let total = end.saturating_sub(start);
            let len = if total > ARGV_LEN as u64 {
                ARGV_LEN as u64
            } else {
                total
            };
            (*data).argv_truncated = (total > ARGV_LEN as u64) as u32;
            let rc = bpf_probe_read_user(
                (&raw mut (*data).argv).cast(),
                len as u32,
                start as *const core::ffi::c_void,
            );
            (*data).argv_len = if rc == 0 { len as u32 } else { 0 };
        }
    })
}
