//! What decoding an ingest message costs the replayer, counted by a global allocator: a
//! message of millions of tiny (or empty) entries must not cost more than a few times its own
//! size before it is refused, and a real batch still goes through.
//!
//! The attack's bytes are written by hand and sent through a raw codec, so the test's own
//! client does not build the millions of entries it sends.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use common::{Running, Stream};
use prost::{Message, bytes::Buf};
use safetytwin_proto::v1::{self, SyncRequest, sync_request};
use tokio_stream::StreamExt;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Counts the bytes allocated now and the most at any time since the last reset.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Sends and receives messages as raw bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A SyncRequest holding a batch whose `files` field repeats `entry` until the message has
/// about `bytes` bytes.
fn flood(entry: &[u8], bytes: usize) -> Vec<u8> {
    let header = v1::DeltaBatch {
        host_id: "web-1".into(),
        boot_id: "boot".into(),
        seq: 1,
        ..Default::default()
    }
    .encode_to_vec();
    let mut batch = header;
    // Field 6 (files), length-delimited.
    let one = [&[0x32, entry.len() as u8][..], entry].concat();
    batch.reserve(bytes);
    while batch.len() + one.len() <= bytes {
        batch.extend_from_slice(&one);
    }
    let mut out = Vec::with_capacity(batch.len() + 8);
    out.push(0x12); // SyncRequest.batch, field 2, length-delimited
    prost::encoding::encode_varint(batch.len() as u64, &mut out);
    out.extend_from_slice(&batch);
    out
}

/// Opens Ingest.Sync with a Hello, sends `message` raw, and returns the stream's end.
async fn send_raw(addr: std::net::SocketAddr, message: Vec<u8>) -> Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let hello = SyncRequest {
        msg: Some(sync_request::Msg::Hello(v1::Hello {
            host_id: "web-1".into(),
            boot_id: "boot".into(),
            watched: vec!["/".into()],
            ..v1::Hello::default()
        })),
    }
    .encode_to_vec();
    let requests = tokio_stream::iter([hello, message]);
    let mut responses = grpc
        .streaming(
            tonic::Request::new(requests),
            tonic::codegen::http::uri::PathAndQuery::from_static("/safetytwin.v1.Ingest/Sync"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    loop {
        // Before the budget, decoding the flood took minutes in a debug build.
        let next = tokio::time::timeout(std::time::Duration::from_secs(300), responses.next());
        match next.await.expect("no answer within 300 s") {
            Some(Ok(_)) => continue,
            Some(Err(status)) => return status.code(),
            None => return Code::Ok,
        }
    }
}

/// The most bytes allocated at once while `f` ran, beyond what was allocated before.
async fn peak_during<T>(f: impl Future<Output = T>) -> (T, usize) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_tiny_entries_cost_a_few_times_the_message_at_most() {
    let server = Running::start("decode-memory", 64 * MIB).await;
    let size = 32 * MIB;
    // Empty entries (2 bytes each: 16 million FileDeltas), and the smallest non-empty ones
    // (`{path: "/"}`, 5 bytes).
    for (what, entry, refused) in [
        ("empty", &[][..], Code::InvalidArgument),
        ("path \"/\"", &[0x0a, 0x01, b'/'][..], Code::OutOfRange),
    ] {
        let message = flood(entry, size);
        let len = message.len();
        let (code, peak) = peak_during(send_raw(server.addr, message)).await;
        eprintln!(
            "{len} bytes of {what} FileDeltas: {code:?}, peak {} MiB allocated",
            peak / MIB
        );
        assert_eq!(code, refused, "{what}");
        // The message itself is buffered by the client, the transport and the decoder.
        assert!(peak < 6 * size, "{what}: peak {} MiB", peak / MIB);
    }

    // A real batch of 20,000 files still goes through.
    let (mut ingest, _) = Stream::open(server.addr, "web-1").await;
    let mut batch = common::batch("web-1", 1, "text");
    batch.files = (0..20_000)
        .map(|i| {
            let mut f = batch.files[0].clone();
            f.path = format!("/etc/app/f{i:05}.conf");
            f
        })
        .collect();
    assert_eq!(ingest.send(batch).await, Ok(1));
    drop(ingest);
    server.stop().await;
}
