//! Privileged: the kernel's time stamp costs a helper call per event, so only `trace` asks for
//! it. With `stamp: false` the verifier must have removed the call from the loaded programs
//! (the read-only `STAMP` global makes the branch dead), not merely skipped it at run time.

mod common;

use safetytwin_daemon::tracer::{Tracer, TracerConfig};

/// The programs that stamp every event they emit.
const PROGRAMS: &[&str] = &[
    "exec_sched_process_exec",
    "exit_sched_process_exit",
    "fork_sched_process_fork",
];

/// The verifier's rewrite of program `name` as `bpftool` prints it.
fn xlated(tracer: &Tracer, name: &str) -> String {
    let id = tracer.program_id(name).expect("program loaded");
    String::from_utf8(common::bpftool(&[
        "prog",
        "dump",
        "xlated",
        "id",
        &id.to_string(),
    ]))
    .unwrap()
}

#[test]
fn only_a_stamping_tracer_calls_the_clock() {
    if !common::privileged("only_a_stamping_tracer_calls_the_clock") {
        return;
    }
    for stamp in [false, true] {
        let tracer = Tracer::load(&TracerConfig {
            stamp,
            ..TracerConfig::default()
        })
        .expect("load tracer");
        for name in PROGRAMS {
            let code = xlated(&tracer, name);
            assert!(code.contains("bpf_get_current_cgroup_id"), "{name}: {code}");
            assert_eq!(
                code.contains("bpf_ktime_get_boot_ns"),
                stamp,
                "{name} with stamp {stamp}"
            );
        }
    }
}
