//! Cost of turning one ring-buffer record into a domain event and folding it into the process
//! table: the userspace work done per kernel event.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use safetytwin_benches::exec_record;
use safetytwin_daemon::{clock::BootClock, events, process::ProcessTable};

fn decode(c: &mut Criterion) {
    let record = exec_record();
    let clock = BootClock::now();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_exec", |b| {
        b.iter(|| events::decode(std::hint::black_box(&record), &clock).unwrap())
    });
    let mut table = ProcessTable::default();
    group.bench_function("decode_and_fold_exec", |b| {
        b.iter(|| {
            let ev = events::decode(std::hint::black_box(&record), &clock).unwrap();
            table.apply(&ev);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
