//! The wire and the history: encoding and decoding a typical batch (domain <-> protobuf bytes,
//! validation included), and appending batches to the replayer's store (one durable redb
//! transaction each, model update included).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use safetytwin_model::{
    Activity, Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, Process,
    ProcessDelta,
};
use safetytwin_proto::{convert, v1};
use safetytwin_store::Store;

/// A typical 10 s batch: 20 changed config files of ~1 KiB, 5 long-lived processes.
fn typical(seq: u64) -> Batch {
    let text = "key = value\n".repeat(85);
    Batch {
        header: BatchHeader {
            host_id: "web-1".into(),
            boot_id: "8c1b0e4e".into(),
            seq,
            window_start_unix_ns: 1,
            window_end_unix_ns: 2,
            produced: 1000,
            received: 1000,
            dropped: 0,
            resync: false,
            more: false,
        },
        delta: DeltaBatch {
            files: (0..20)
                .map(|i| FileDelta::Upsert {
                    path: format!("/etc/app/conf.d/{i:02}.conf"),
                    state: FileState {
                        kind: FileKind::Regular,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        size: text.len() as u64,
                        sha256: Some(format!("{seq:064x}")),
                        content: Content::Text(text.clone()),
                        link_target: None,
                    },
                })
                .collect(),
            units: Vec::new(),
            processes: (0..5)
                .map(|pid| {
                    ProcessDelta::Upsert(Process {
                        pid: 1000 + pid,
                        ppid: 1,
                        uid: 0,
                        gid: 0,
                        comm: "worker".into(),
                        exe: "/usr/bin/worker".into(),
                        argv: vec!["worker".into(), "--serve".into()],
                        cgroup_id: 42,
                    })
                })
                .collect(),
            activity: Activity {
                started: 300,
                exited: 300,
                short_lived: 295,
                changes: 1000,
            },
            ..Default::default()
        },
    }
}

fn wire(c: &mut Criterion) {
    let batch = typical(7);
    let bytes = convert::batch_to_wire(&batch).encode_to_vec();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| {
        b.iter(|| convert::batch_to_wire(std::hint::black_box(&batch)).encode_to_vec())
    });
    group.bench_function("decode_and_validate", |b| {
        b.iter(|| {
            convert::batch_from_wire(
                v1::DeltaBatch::decode(std::hint::black_box(&bytes[..])).unwrap(),
            )
            .unwrap()
        })
    });
    group.finish();

    let dir = std::env::temp_dir().join(format!("st-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(dir.join("history.redb")).unwrap();
    let mut seq = 0;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("append_durable", |b| {
        b.iter_batched(
            || {
                seq += 1;
                typical(seq)
            },
            |batch| store.append(&batch).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, wire);
criterion_main!(benches);
