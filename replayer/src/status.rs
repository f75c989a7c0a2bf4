//! The one place where the replayer's errors become gRPC status codes, so a client can act on
//! the code alone: INVALID_ARGUMENT means "this batch can never be stored", FAILED_PRECONDITION
//! "not in this order", UNAVAILABLE "try again later".

use safetytwin_proto::convert::ConvertError;
use tonic::Status;

use crate::store::StoreError;

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
