//! The error contract between the replayer and its clients: what each gRPC code tells the
//! caller to do. The daemon's sender reads it to decide whether a batch is resent or given up
//! on; the replayer's HTTP API to choose between a client error and a server error. The
//! replayer's `status.rs` picks the codes; this table says what they mean.

use tonic::Code;

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The request can never succeed as it is (malformed, too large, in conflict with what is
    /// stored): resending it only repeats the refusal. Give it up.
    Permanent,
    /// Not in this order: the same request may succeed once the state changed (a gap a
    /// reconnect resumes, a stream replaced, a twin without a backend). Keep it, retry after
    /// the state moved.
    OutOfOrder,
    /// What was asked for does not exist (a host, seq or snapshot). Nothing to retry.
    NotFound,
    /// The server is down, busy or failed (or the transport broke): keep the request and try
    /// again later, unchanged.
    Unavailable,
    /// The caller is not allowed (credentials, identity) or talks to a server that does not
    /// know the call: nothing the request holds is wrong, so keep it, but only an operator can
    /// fix the cause.
    Unauthenticated,
}

/// The class of `code`. Exhaustive on purpose: a new code in tonic must be classified here.
pub const fn class(code: Code) -> Class {
    match code {
        Code::InvalidArgument | Code::AlreadyExists | Code::OutOfRange => Class::Permanent,
        Code::FailedPrecondition | Code::Aborted => Class::OutOfOrder,
        Code::NotFound => Class::NotFound,
        Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented => {
            Class::Unauthenticated
        }
        // `Ok` never ends a stream with an error; if it does, the server did not finish.
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Unavailable
        | Code::Internal
        | Code::DataLoss => Class::Unavailable,
    }
}

/// Whether a spooled batch that got `code` is given up: only what can never be stored. A
/// batch the server did not find, was not allowed to take, or could not take now is kept.
pub const fn is_permanent(code: Code) -> bool {
    matches!(class(code), Class::Permanent)
}

/// Whether a daemon whose spool has sealed seqs up to `sealed` and holds `acked` as
/// acknowledged continues a stored history that ends at `last`. The store must hold what the
/// daemon saw acknowledged (else the replayer lost history), and nothing beyond what the daemon
/// sealed (else those batches came from another life of this host id: a lost spool, a clone).
/// The replayer answers `Resume.resync` with it; the sender checks it too.
pub const fn continues(last: u64, sealed: u64, acked: u64) -> bool {
    acked <= last && last <= sealed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_continues_only_between_acked_and_sealed() {
        // Fresh on both sides; acks lost in flight; in step.
        assert!(continues(0, 0, 0));
        assert!(continues(3, 5, 2));
        assert!(continues(5, 5, 5));
        // The daemon lost its spool (sealed 2, the store holds 100), or a clone.
        assert!(!continues(100, 2, 0));
        // The replayer lost its store.
        assert!(!continues(0, 100, 100));
        assert!(!continues(u64::MAX, 3, 0));
    }

    /// Every code tonic knows (0..=16), by number, so a renumbering would show.
    const ALL: [(i32, Class); 17] = [
        (0, Class::Unavailable),      // Ok
        (1, Class::Unavailable),      // Cancelled
        (2, Class::Unavailable),      // Unknown
        (3, Class::Permanent),        // InvalidArgument
        (4, Class::Unavailable),      // DeadlineExceeded
        (5, Class::NotFound),         // NotFound
        (6, Class::Permanent),        // AlreadyExists
        (7, Class::Unauthenticated),  // PermissionDenied
        (8, Class::Unavailable),      // ResourceExhausted
        (9, Class::OutOfOrder),       // FailedPrecondition
        (10, Class::OutOfOrder),      // Aborted
        (11, Class::Permanent),       // OutOfRange
        (12, Class::Unauthenticated), // Unimplemented
        (13, Class::Unavailable),     // Internal
        (14, Class::Unavailable),     // Unavailable
        (15, Class::Unavailable),     // DataLoss
        (16, Class::Unauthenticated), // Unauthenticated
    ];

    /// The sender discards a spooled batch for one class only; every other keeps it.
    #[test]
    fn only_permanent_refusals_make_the_sender_discard() {
        for (class_, discards) in [
            (Class::Permanent, true),
            (Class::OutOfOrder, false),
            (Class::NotFound, false),
            (Class::Unavailable, false),
            (Class::Unauthenticated, false),
        ] {
            for (n, c) in ALL {
                if c == class_ {
                    assert_eq!(is_permanent(Code::from_i32(n)), discards, "{class_:?} {n}");
                }
            }
        }
    }

    #[test]
    fn every_code_has_its_class() {
        for (n, want) in ALL {
            let code = Code::from_i32(n);
            assert_eq!(code as i32, n, "code {n} is not one tonic knows");
            assert_eq!(class(code), want, "{code:?}");
            assert_eq!(is_permanent(code), want == Class::Permanent, "{code:?}");
        }
        // Anything beyond is `Unknown` to tonic, and so unavailable.
        assert_eq!(class(Code::from_i32(17)), Class::Unavailable);
    }
}
