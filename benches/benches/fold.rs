//! The delta engine: changes folded per second, and the cost of cutting a window, for a
//! realistic mix (short-lived processes, config writes, a unit restart) on a model the size of
//! a small host (2,000 files, 200 processes).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use safetytwin_model::{
    Change, HostModel, Process, Window,
    fixtures::{self, text},
};

fn process(pid: u32) -> Process {
    Process {
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        ..fixtures::process(pid, "/bin/sh")
    }
}

fn host() -> HostModel {
    let mut m = HostModel::default();
    let mut w = Window::default();
    for i in 0..2000 {
        m.apply(
            &Change::FileObserved {
                path: format!("/etc/dir{}/file{i}.conf", i % 50),
                state: Some(text(&format!("key{i}=value\n"))),
            },
            &mut w,
        );
    }
    for pid in 1..200 {
        m.apply(&Change::ProcessStarted(process(pid)), &mut w);
    }
    m
}

/// 1,000 changes: 300 short-lived processes (start, exec, exit), 90 config observations, a
/// unit stop and start.
fn window_changes() -> Vec<Change> {
    let mut out = Vec::new();
    for i in 0..300u32 {
        let pid = 10_000 + i;
        out.push(Change::ProcessStarted(process(pid)));
        out.push(Change::ProcessStarted(Process {
            exe: "/bin/true".into(),
            ..process(pid)
        }));
        out.push(Change::ProcessExited { pid });
    }
    for i in 0..90 {
        out.push(Change::FileObserved {
            path: format!("/etc/dir{}/file{}.conf", i % 50, i * 7),
            state: Some(text(&format!("key={i}\n"))),
        });
    }
    let cg = "/system.slice/nginx.service".to_string();
    for populated in [
        false, true, false, true, false, true, false, true, false, true,
    ] {
        out.push(Change::CgroupPopulated {
            path: cg.clone(),
            id: 99,
            populated,
        });
    }
    out
}

fn fold(c: &mut Criterion) {
    let changes = window_changes();
    let mut group = c.benchmark_group("delta");
    group.throughput(Throughput::Elements(changes.len() as u64));
    group.bench_function("fold_and_cut_1000_changes", |b| {
        b.iter_batched(
            host,
            |mut model| {
                let mut w = Window::default();
                for change in &changes {
                    model.apply(change, &mut w);
                }
                model.cut(w)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, fold);
criterion_main!(benches);
