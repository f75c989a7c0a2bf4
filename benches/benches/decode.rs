//! Cost of turning one ring-buffer record into a domain event and folding it into the model:
//! the userspace work done per kernel event.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use safetytwin_benches::exec_record;
use safetytwin_daemon::{changes, clock::BootClock, events};
use safetytwin_model::{HostModel, Window};

fn decode(c: &mut Criterion) {
    let record = exec_record();
    let clock = BootClock::now();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_exec", |b| {
        b.iter(|| events::decode(std::hint::black_box(&record), &clock).unwrap())
    });
    let mut model = HostModel::default();
    let mut window = Window::default();
    group.bench_function("decode_and_fold_exec", |b| {
        b.iter(|| {
            let ev = events::decode(std::hint::black_box(&record), &clock).unwrap();
            for change in changes::implied(&ev, &model).changes {
                model.apply(&change, &mut window);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
