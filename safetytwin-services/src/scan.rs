//! The `Ingest` service whose decoder refuses a message that would cost too much to decode.
//!
//! An empty `FileDelta` is 2 bytes on the wire and 128 in memory, so a 32 MiB message of them
//! decoded into 4 GiB. [`check`] has `safetytwin_proto::cost` reckon, from the wire bytes and
//! before anything is allocated, what decoding would allocate (refusing entries that can never
//! be valid: an empty `FileDelta`, `UnitDelta` or `ProcessDelta`); past [`DECODE_FACTOR`]
//! times the message size (plus [`DECODE_SLACK`]) the message is refused with `OUT_OF_RANGE`,
//! as tonic refuses one over the size limit. A real batch costs 2 to 10 times its size
//! (removals of short paths cost the most).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use crate::refusal::{DECODE_FACTOR, DECODE_SLACK, ScanError};
use bytes::Buf;
use safetytwin_proto::{
    cost::{self, CostError},
    v1::{
        SyncRequest, SyncResponse,
        ingest_server::{Ingest, IngestServer},
    },
    wire::Wire,
};
use tonic::{
    Status,
    body::Body,
    codec::{Codec, DecodeBuf, Decoder},
    codegen::{Body as HttpBody, BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};

/// Checks a `SyncRequest`'s wire bytes before they are decoded.
pub fn check(wire: &[u8]) -> Result<(), ScanError> {
    let cost = cost::sync_request(wire).map_err(|e| match e {
        CostError::Wire(why) => ScanError::Wire(why),
        CostError::Empty(name) => ScanError::Empty(name),
    })?;
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
        let request = if whole.len() == buf.remaining() {
            check(whole).map_err(crate::status::scan)?;
            SyncRequest::from_bytes(whole)
        } else {
            let copy = buf.copy_to_bytes(buf.remaining());
            check(&copy).map_err(crate::status::scan)?;
            SyncRequest::from_bytes(&copy)
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        buf.advance(buf.remaining());
        Ok(Some(request))
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
    use safetytwin_proto::v1::{self, sync_request};

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
        .to_bytes()
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
        assert_eq!(check(&hello.to_bytes()), Ok(()));
        assert!(matches!(
            check(&[0x12, 0x05, 0x32]),
            Err(ScanError::Wire(_))
        ));
    }
}
