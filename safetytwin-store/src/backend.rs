//! What a storage engine must provide for the history: encoded batches and models by host and
//! seq, one exclusive write transaction per append, and the twins' records. The rules (what is
//! a duplicate, a gap, a conflict; when a checkpoint is kept; how a state is folded) live once,
//! in `lib.rs`, above this interface, so every engine keeps the same semantics.

use crate::{FailureRecord, SnapshotRecord, StoreError, TwinProgress, VerifyRecord};

/// A host's last stored seq and, where recorded, its newest complete one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// The last stored seq (0: none).
    pub last: u64,
    /// The newest seq ending a whole batch; `None` for a host stored before batches had parts
    /// (then every batch is whole).
    pub complete: Option<u64>,
}

impl Head {
    pub(crate) fn complete_seq(&self) -> u64 {
        self.complete.unwrap_or(self.last)
    }
}

/// One batch to store, with everything that changes with it.
pub(crate) struct NewBatch<'a> {
    pub seq: u64,
    /// The prost-encoded `DeltaBatch`.
    pub batch: &'a [u8],
    /// The host's model after it, prost-encoded `HostState`.
    pub model: &'a [u8],
    /// Keep `model` as a checkpoint at `seq` too.
    pub checkpoint: bool,
    /// The host's newest complete seq after it.
    pub complete: u64,
}

/// The reads and the one write of an append, inside its transaction.
pub(crate) trait AppendTx {
    fn head(&mut self) -> Result<Head, StoreError>;
    fn batch(&mut self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    fn model(&mut self) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, new: &NewBatch<'_>) -> Result<(), StoreError>;
}

/// A storage engine. Every call is blocking; async callers use `spawn_blocking`.
pub(crate) trait Backend: Send + Sync {
    /// Runs `f` in one write transaction on `host`'s history that no other append to that host
    /// (from this process or another) interleaves with. Commits when `f` returns `Ok`, rolls
    /// back on `Err`.
    fn append_with(
        &self,
        host: &str,
        f: &mut dyn FnMut(&mut dyn AppendTx) -> Result<crate::Appended, StoreError>,
    ) -> Result<crate::Appended, StoreError>;

    fn head(&self, host: &str) -> Result<Head, StoreError>;
    /// Calls `f` on a thread of its own with every append committed by any process, until `f`
    /// returns false; false at once when this process is the only writer.
    fn listen(&self, f: Box<dyn FnMut(crate::Notice) -> bool + Send>) -> bool;
    /// Every host that has a stored batch, with its last seq.
    fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError>;
    fn batch(&self, host: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    fn model(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The newest checkpoint at or before `seq`.
    fn checkpoint_before(&self, host: &str, seq: u64)
    -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Calls `f` with every batch from `from` to `to` (both included), in seq order.
    fn each_batch(
        &self,
        host: &str,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// One lease round of `worker` (see [`crate::Store::lease_round`]); `None` when this
    /// process is the only worker (every twin is its own).
    fn lease_round(
        &self,
        worker: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<crate::LeaseRound>, StoreError>;
    /// Every lease; empty when this process is the only worker.
    fn leases(&self) -> Result<Vec<crate::Lease>, StoreError>;
    /// Gives up `worker`'s leases (a graceful stop: the others need not wait for them to end).
    fn release(&self, worker: &str) -> Result<(), StoreError>;
    /// From now on this process is `worker` (see [`crate::Store::act_as`]).
    fn act_as(&self, worker: &str);

    fn twin_progress(&self, host: &str) -> Result<TwinProgress, StoreError>;
    fn set_twin_progress(
        &self,
        host: &str,
        progress: &TwinProgress,
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), StoreError>;
    fn set_verify(&self, host: &str, v: &VerifyRecord) -> Result<(), StoreError>;
    fn last_verify(&self, host: &str) -> Result<Option<VerifyRecord>, StoreError>;
    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotRecord>, StoreError>;
    fn remove_snapshot(&self, host: &str, seq: u64) -> Result<(), StoreError>;
    fn record_failure(&self, host: &str, failure: &FailureRecord) -> Result<(), StoreError>;
    fn last_failure(&self, host: &str) -> Result<Option<FailureRecord>, StoreError>;
}
