//! What decoding an ingest message will cost, reckoned from its wire bytes before prost
//! allocates anything, and the `Ingest` service whose decoder refuses a message that costs too
//! much.
//!
//! prost turns every entry of a repeated field into a struct of its own: an empty `FileDelta`
//! is 2 bytes on the wire and 128 in memory, so a 32 MiB message of them decoded into 4 GiB.
//! [`check`] walks the message along the shape of `SyncRequest` (only length-delimited fields
//! allocate; the rest are skipped as prost skips them), refuses entries that can never be
//! valid (an empty `FileDelta`, `UnitDelta` or `ProcessDelta`), and adds up the structs and
//! strings decoding would allocate; past [`DECODE_FACTOR`] times the message size (plus
//! [`DECODE_SLACK`]) the message is refused with `OUT_OF_RANGE`, as tonic refuses one over the size limit. A real batch costs 2 to 10
//! times its size (removals of short paths cost the most).

use std::{
    convert::Infallible,
    mem::size_of,
    sync::Arc,
    task::{Context, Poll},
};

use crate::refusal::{DECODE_FACTOR, DECODE_SLACK, ScanError};
use prost::{
    Message,
    bytes::Buf,
    encoding::{WireType, decode_key, decode_varint},
};
use safetytwin_proto::v1::{
    self, SyncRequest, SyncResponse,
    ingest_server::{Ingest, IngestServer},
};
use tonic::{
    Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder},
    codegen::{Body as HttpBody, BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};

/// What a length-delimited field becomes when prost decodes it.
#[derive(Clone, Copy)]
enum Field {
    /// A string (or bytes).
    Str,
    /// An element of a repeated string.
    StrEntry,
    /// A singular message, inline in its parent.
    Msg(&'static Shape),
    /// An element of a repeated message: a struct of `size` bytes in a vector, never empty.
    Entry(&'static Shape, usize, &'static str),
}

/// The length-delimited fields of a message type; others allocate nothing.
struct Shape(&'static [(u32, Field)]);

const HELLO: Shape = Shape(&[(1, Field::Str), (2, Field::Str)]);
const PROCESS: Shape = Shape(&[(5, Field::Str), (6, Field::Str), (7, Field::StrEntry)]);
const FILE_STATE: Shape = Shape(&[(6, Field::Str), (8, Field::Str), (9, Field::Str)]);
const UNIT_RUNTIME: Shape = Shape(&[(1, Field::Str)]);
const UNIT: Shape = Shape(&[
    (1, Field::Str),
    (2, Field::Msg(&UNIT_RUNTIME)),
    (3, Field::Str),
    (4, Field::StrEntry),
    (5, Field::StrEntry),
]);
const FILE_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&FILE_STATE))]);
const UNIT_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&UNIT))]);
const PROCESS_DELTA: Shape = Shape(&[(2, Field::Msg(&PROCESS))]);
const DELTA_BATCH: Shape = Shape(&[
    (1, Field::Str),
    (2, Field::Str),
    (
        6,
        Field::Entry(&FILE_DELTA, size_of::<v1::FileDelta>(), "FileDelta"),
    ),
    (
        7,
        Field::Entry(&UNIT_DELTA, size_of::<v1::UnitDelta>(), "UnitDelta"),
    ),
    (
        8,
        Field::Entry(
            &PROCESS_DELTA,
            size_of::<v1::ProcessDelta>(),
            "ProcessDelta",
        ),
    ),
]);
const SYNC_REQUEST: Shape = Shape(&[(1, Field::Msg(&HELLO)), (2, Field::Msg(&DELTA_BATCH))]);

/// A heap block for `n` bytes as the allocator hands it out (header, 16-byte granules).
fn block(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        16 + n.next_multiple_of(16)
    }
}

/// What decoding `wire` as `shape` allocates.
fn cost(shape: &Shape, mut wire: &[u8]) -> Result<usize, ScanError> {
    let bad = |e: prost::DecodeError| ScanError::Wire(e.to_string());
    let mut total = 0usize;
    while wire.has_remaining() {
        let (tag, wire_type) = decode_key(&mut wire).map_err(bad)?;
        let len = match wire_type {
            WireType::Varint => {
                decode_varint(&mut wire).map_err(bad)?;
                continue;
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                usize::try_from(decode_varint(&mut wire).map_err(bad)?).unwrap_or(usize::MAX)
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(ScanError::Wire("groups are not used".into()));
            }
        };
        if len > wire.len() {
            return Err(ScanError::Wire("a field runs past the message".into()));
        }
        let (body, rest) = wire.split_at(len);
        wire = rest;
        if wire_type != WireType::LengthDelimited {
            continue;
        }
        let field = shape.0.iter().find(|(t, _)| *t == tag).map(|(_, f)| *f);
        total = total.saturating_add(match field {
            None => 0,
            Some(Field::Str) => block(len),
            Some(Field::StrEntry) => size_of::<String>() + block(len),
            Some(Field::Msg(inner)) => cost(inner, body)?,
            Some(Field::Entry(inner, size, name)) => {
                if len == 0 {
                    return Err(ScanError::Empty(name));
                }
                size + cost(inner, body)?
            }
        });
    }
    Ok(total)
}

/// Checks a `SyncRequest`'s wire bytes before they are decoded.
pub fn check(wire: &[u8]) -> Result<(), ScanError> {
    let cost = cost(&SYNC_REQUEST, wire)?;
    let budget = wire
        .len()
        .saturating_mul(DECODE_FACTOR)
        .saturating_add(DECODE_SLACK);
    if cost > budget {
        return Err(ScanError::TooCostly {
            bytes: wire.len(),
            cost,
        });
    }
    Ok(())
}

/// prost's codec for `Ingest.Sync`, with [`check`] before each request is decoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanCodec;

impl Codec for ScanCodec {
    type Encode = SyncResponse;
    type Decode = SyncRequest;
    type Encoder = tonic_prost::ProstEncoder<SyncResponse>;
    type Decoder = ScanDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ScanDecoder
    }
}

/// The decoder half of [`ScanCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanDecoder;

impl Decoder for ScanDecoder {
    type Item = SyncRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<SyncRequest>, Status> {
        // tonic hands the decoder one whole message in one contiguous buffer.
        let whole = buf.chunk();
        if whole.len() == buf.remaining() {
            check(whole).map_err(crate::status::scan)?;
        } else {
            let copy = buf.copy_to_bytes(buf.remaining());
            check(&copy).map_err(crate::status::scan)?;
            return SyncRequest::decode(copy)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()));
        }
        SyncRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The `Ingest` service with [`ScanCodec`] for `Sync`; anything else is answered by the
/// generated server (UNIMPLEMENTED).
pub struct ScannedIngest<T> {
    inner: Arc<T>,
    generated: IngestServer<T>,
    max_message_bytes: usize,
}

impl<T: Ingest> ScannedIngest<T> {
    /// Serves `inner`, refusing messages over `max_message_bytes`.
    pub fn new(inner: T, max_message_bytes: usize) -> Self {
        let inner = Arc::new(inner);
        ScannedIngest {
            generated: IngestServer::from_arc(inner.clone()),
            inner,
            max_message_bytes,
        }
    }
}

impl<T> Clone for ScannedIngest<T> {
    fn clone(&self) -> Self {
        ScannedIngest {
            inner: self.inner.clone(),
            generated: self.generated.clone(),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

impl<T> NamedService for ScannedIngest<T> {
    const NAME: &'static str = "safetytwin.v1.Ingest";
}

struct SyncMethod<T>(Arc<T>);

impl<T: Ingest> StreamingService<SyncRequest> for SyncMethod<T> {
    type Response = SyncResponse;
    type ResponseStream = T::SyncStream;
    type Future = BoxFuture<tonic::Response<T::SyncStream>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<SyncRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.sync(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for ScannedIngest<T>
where
    T: Ingest,
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/safetytwin.v1.Ingest/Sync" {
            return self.generated.call(request);
        }
        let (inner, max) = (self.inner.clone(), self.max_message_bytes);
        Box::pin(async move {
            let mut grpc = Grpc::new(ScanCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(SyncMethod(inner), request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use safetytwin_proto::v1::sync_request;

    use super::*;

    fn request(files: Vec<v1::FileDelta>) -> Vec<u8> {
        SyncRequest {
            msg: Some(sync_request::Msg::Batch(v1::DeltaBatch {
                host_id: "h".into(),
                seq: 1,
                files,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    fn file(path: &str, text: &str) -> v1::FileDelta {
        v1::FileDelta {
            path: path.into(),
            state: Some(v1::FileState {
                sha256: "0".repeat(64),
                text: text.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn real_batches_pass_and_floods_of_tiny_or_empty_entries_do_not() {
        let real: Vec<_> = (0..50_000)
            .map(|i| file(&format!("/etc/app/f{i:05}.conf"), "key = value\n"))
            .collect();
        assert_eq!(check(&request(real)), Ok(()));
        // Removals of short paths are the dearest real entries.
        let removals: Vec<_> = (0..200_000)
            .map(|i| v1::FileDelta {
                path: format!("/etc/x/{i:06}"),
                state: None,
            })
            .collect();
        assert_eq!(check(&request(removals)), Ok(()));

        let empty = request(vec![v1::FileDelta::default(); 100]);
        assert_eq!(check(&empty), Err(ScanError::Empty("FileDelta")));
        let tiny = request(vec![
            v1::FileDelta {
                path: "/".into(),
                state: None
            };
            2_000_000
        ]);
        assert!(
            matches!(check(&tiny), Err(ScanError::TooCostly { .. })),
            "{:?}",
            check(&tiny)
        );
        let hello = SyncRequest {
            msg: Some(sync_request::Msg::Hello(v1::Hello {
                host_id: "h".into(),
                boot_id: "b".into(),
                ..v1::Hello::default()
            })),
        };
        assert_eq!(check(&hello.encode_to_vec()), Ok(()));
        assert!(matches!(
            check(&[0x12, 0x05, 0x32]),
            Err(ScanError::Wire(_))
        ));
    }

    /// The reckoning is an upper bound of what prost really allocates for a batch of tiny
    /// entries (the vector's spare capacity aside), so nothing slips between them.
    #[test]
    fn the_cost_covers_the_structs_prost_builds() {
        let n = 1000;
        let wire = request(vec![file("/etc/a", ""); n]);
        let cost = cost(&SYNC_REQUEST, &wire).unwrap();
        assert!(cost >= n * size_of::<v1::FileDelta>(), "{cost}");
    }
}
