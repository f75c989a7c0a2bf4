//! The one place where the replayer's errors become gRPC status codes, so a client can act on
//! the code alone: INVALID_ARGUMENT means "this batch can never be stored", FAILED_PRECONDITION
//! "not in this order", ALREADY_EXISTS "this seq holds another batch", PERMISSION_DENIED "not
//! this host's certificate", ABORTED "another stream holds this host", UNAVAILABLE "try again
//! later". What each code tells a client to do is `safetytwin_proto::contract`.

use safetytwin_proto::convert::ConvertError;
use tonic::Status;

use safetytwin_store::StoreError;
use safetytwin_twin::{applier::ApplyError, vm::VmError};

use crate::refusal::{IngestError, ScanError};

/// The status for a store error.
pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::Gap { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Conflict { .. } => Status::already_exists(e.to_string()),
        StoreError::NoSuchSeq { .. } => Status::not_found(e.to_string()),
        StoreError::LeaseLost { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Db(_)
        | StoreError::Postgres(_)
        | StoreError::BadUrl(_)
        | StoreError::Corrupt(_) => Status::unavailable(e.to_string()),
    }
}

/// The status for a refused or ended ingest stream.
pub fn ingest(e: IngestError) -> Status {
    match e {
        IngestError::NotThisHost { .. } | IngestError::BadCertificate(_) => {
            Status::permission_denied(e.to_string())
        }
        // Transient on purpose: a rebooted host's retry succeeds once its old stream is gone.
        IngestError::OtherBoot { .. } | IngestError::Replaced { .. } => {
            Status::aborted(e.to_string())
        }
    }
}

/// The status for a batch that does not decode into a valid one.
pub fn malformed(e: ConvertError) -> Status {
    Status::invalid_argument(format!("malformed batch: {e}"))
}

/// The status for a Hello that does not decode into a valid one.
pub fn malformed_hello(e: ConvertError) -> Status {
    Status::invalid_argument(format!("malformed Hello: {e}"))
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
        ApplyError::NotApplied(_) | ApplyError::NotDriven { .. } => {
            Status::failed_precondition(e.to_string())
        }
    }
}

/// The status for a twin call on a replayer without a twin backend.
pub fn no_twin() -> Status {
    Status::failed_precondition("this replayer runs without a twin (serve --twin none)")
}

/// The status for an ingest message refused before decoding: an entry that can never be valid
/// or bytes that are not protobuf can never be stored; a message that would cost too much to
/// decode is refused like one over the size limit (tonic's `OUT_OF_RANGE`), so the sender
/// gives it up (`contract`) instead of resending it forever.
pub fn scan(e: ScanError) -> Status {
    match e {
        ScanError::Wire(_) | ScanError::Empty(_) => {
            Status::invalid_argument(format!("malformed batch: {e}"))
        }
        ScanError::TooCostly { .. } => Status::out_of_range(e.to_string()),
    }
}

/// The status for a subscriber that fell further behind than its buffer (`detail`: by how
/// much); it may subscribe again from the last seq it received.
pub fn fell_behind(detail: &str) -> Status {
    Status::resource_exhausted(format!(
        "the subscriber fell behind ({detail}); subscribe again from the last seq it received"
    ))
}

#[cfg(test)]
mod tests {
    use safetytwin_proto::contract::{self, Class};
    use tonic::Code;

    use super::*;
    use crate::http::http_status;

    #[test]
    fn store_refusals_carry_their_class() {
        let code = |e| store(e).code();
        let (host, seq) = (String::from("h"), 1);
        assert_eq!(
            code(StoreError::Conflict {
                host: host.clone(),
                seq
            }),
            Code::AlreadyExists
        );
        assert!(contract::is_permanent(Code::AlreadyExists));
        let gap = code(StoreError::Gap {
            host,
            last: 1,
            got: 9,
        });
        assert_eq!(
            contract::class(gap),
            Class::OutOfOrder,
            "a reconnect resumes"
        );
        let refused = ingest(IngestError::NotThisHost {
            host: "b".into(),
            named: vec!["a".into()],
        });
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert_eq!(
            contract::class(refused.code()),
            Class::Unauthenticated,
            "keep the data, an operator must act"
        );
        let clone = ingest(IngestError::OtherBoot {
            host: "a".into(),
            boot: "2".into(),
            live_boot: "1".into(),
        });
        assert_eq!(
            contract::class(clone.code()),
            Class::OutOfOrder,
            "a reboot's retry succeeds"
        );
    }

    /// The sender gives up what can never be stored, and keeps what a retry may store.
    #[test]
    fn ingest_refusals_that_the_sender_gives_up() {
        let permanent = [
            scan(ScanError::Empty("FileDelta")),
            scan(ScanError::Wire("x".into())),
            // Like tonic's own refusal of a message over the size limit (OUT_OF_RANGE).
            scan(ScanError::TooCostly {
                bytes: 1 << 25,
                cost: 1 << 32,
            }),
            malformed(ConvertError::Missing("header")),
        ];
        for status in permanent {
            assert!(contract::is_permanent(status.code()), "{status:?}");
        }
        assert!(contract::is_permanent(Code::OutOfRange));
        assert!(!contract::is_permanent(fell_behind("x").code()));
        assert!(!contract::is_permanent(no_twin().code()));
    }

    #[test]
    fn http_and_grpc_agree_on_every_code() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            let http = http_status(code);
            match contract::class(code) {
                Class::Unauthenticated if code == Code::Unimplemented => {
                    assert!(http.is_server_error(), "{code:?} → {http}")
                }
                Class::Permanent | Class::NotFound | Class::Unauthenticated => {
                    assert!(http.is_client_error(), "{code:?} → {http}")
                }
                Class::OutOfOrder => assert_eq!(http.as_u16(), 409, "{code:?}"),
                Class::Unavailable => assert!(http.is_server_error(), "{code:?} → {http}"),
            }
        }
    }
}
