//! The one place where the replayer's errors become gRPC status codes, so a client can act on
//! the code alone: INVALID_ARGUMENT means "this batch can never be stored", FAILED_PRECONDITION
//! "not in this order", UNAVAILABLE "try again later".

use safetytwin_proto::convert::ConvertError;
use tonic::Status;

use crate::{applier::ApplyError, scan::ScanError, store::StoreError, vm::VmError};

/// The status for a store error.
pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::Gap { .. } => Status::failed_precondition(e.to_string()),
        StoreError::NoSuchSeq { .. } => Status::not_found(e.to_string()),
        StoreError::Db(_) | StoreError::Corrupt(_) => Status::unavailable(e.to_string()),
    }
}

/// The status for a batch that does not decode into a valid one.
pub fn malformed(e: ConvertError) -> Status {
    Status::invalid_argument(format!("malformed batch: {e}"))
}

/// The status for a twin call that failed.
pub fn apply(e: ApplyError) -> Status {
    match e {
        ApplyError::Store(e) => store(e),
        ApplyError::NoSuchSnapshot { .. } | ApplyError::Vm(VmError::NoSuchSnapshot(_)) => {
            Status::not_found(e.to_string())
        }
        ApplyError::Vm(_) => Status::unavailable(e.to_string()),
        ApplyError::Step(_) => Status::aborted(e.to_string()),
    }
}

/// The status for a twin call on a replayer without a twin backend.
pub fn no_twin() -> Status {
    Status::failed_precondition("this replayer runs without a twin (serve --twin none)")
}

/// The status for an ingest message refused before decoding: an entry that can never be valid
/// or bytes that are not protobuf can never be stored; a message that would cost too much to
/// decode is refused like one over the size limit.
pub fn scan(e: ScanError) -> Status {
    match e {
        ScanError::Wire(_) | ScanError::Empty(_) => {
            Status::invalid_argument(format!("malformed batch: {e}"))
        }
        ScanError::TooCostly { .. } => Status::resource_exhausted(e.to_string()),
    }
}

/// The status for a subscriber that fell further behind than its buffer (`detail`: by how
/// much); it may subscribe again from the last seq it received.
pub fn fell_behind(detail: &str) -> Status {
    Status::resource_exhausted(format!(
        "the subscriber fell behind ({detail}); subscribe again from the last seq it received"
    ))
}
