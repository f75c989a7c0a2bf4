//! The history store: every batch of every host, exactly once and in order, in redb (an
//! embedded, crash-safe database). Storing a batch, the host's new model and its last seq is
//! one transaction, so a crash at any moment leaves either all of it or none of it.
//!
//! A batch sent in parts is stored part by part, each like any batch; `complete_seq` is the
//! newest seq that ends a whole one.
//!
//! `state_at(seq)` is event-sourced: the nearest checkpoint at or before `seq` plus the batches
//! after it, at most [`CHECKPOINT_EVERY`]` - 1` of them.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, backends::FileBackend};
use safetytwin_model::{Batch, HostModel};
use safetytwin_proto::{
    convert::{self, ConvertError},
    v1,
    wire::Wire,
};

/// Batches by (host, seq), prost-encoded `DeltaBatch`.
const BATCHES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("batches");
/// The last stored seq of each host.
const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
/// The newest seq of each host whose batch is complete (not a part with `more` to come). A
/// host without a row was stored before batches had parts: every batch of it is complete.
const COMPLETE_SEQ: TableDefinition<&str, u64> = TableDefinition::new("complete_seq");
/// Each host's model after its last batch, prost-encoded `HostState`.
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
/// Models at every [`CHECKPOINT_EVERY`]th seq.
const CHECKPOINTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("checkpoints");

/// How far each host's twin is: (applied seq, its snapshot or "", held, failed seq or 0).
const TWIN: TableDefinition<&str, (u64, &str, bool, u64)> = TableDefinition::new("twin");
/// The twin's snapshots by (host, seq): (name, created unix ns, apply µs, items applied).
/// host → the seq of its twin's first apply (`TwinProgress::base_seq`).
const TWIN_BASE: TableDefinition<&str, u64> = TableDefinition::new("twin_base");
/// host → its twin's last verification: (seq, differences, equal, by design, full, unix ns,
/// µs taken, the first differences as text).
const VERIFIES: TableDefinition<&str, VerifyRow> = TableDefinition::new("verifies");
type VerifyRow<'a> = (u64, u64, u64, u64, bool, i64, u64, &'a str);
const SNAPSHOTS: TableDefinition<(&str, u64), (&str, i64, u64, u64)> =
    TableDefinition::new("snapshots");
/// Failed applies by (host, seq): (message, unix ns).
const FAILURES: TableDefinition<(&str, u64), (&str, i64)> = TableDefinition::new("failures");

/// A model checkpoint is kept every this many batches.
pub const CHECKPOINT_EVERY: u64 = 64;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption).
    #[error("history store: {0}")]
    Db(#[from] redb::Error),
    /// The batch skips seqs the store does not have (a resync too: it restates the model,
    /// not the seqs); nothing was stored.
    #[error("host {host}: batch seq {got} does not follow the stored seq {last}")]
    Gap {
        /// The host.
        host: String,
        /// The last stored seq.
        last: u64,
        /// The seq offered.
        got: u64,
    },
    /// A seq already stored arrived with different content: another history for this host id
    /// (a lost spool, a cloned machine). Nothing was stored.
    #[error(
        "host {host}: seq {seq} is already stored with different content \
         (another daemon with this host id, or one that lost its spool)"
    )]
    Conflict {
        /// The host.
        host: String,
        /// The seq.
        seq: u64,
    },
    /// A stored record does not decode (the file was written by something else).
    #[error("history store: corrupt record: {0}")]
    Corrupt(String),
    /// The host has no history at or before that seq.
    #[error("host {host}: no batch {seq} in the history")]
    NoSuchSeq {
        /// The host.
        host: String,
        /// The seq asked for.
        seq: u64,
    },
}

impl From<ConvertError> for StoreError {
    fn from(e: ConvertError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What `append` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The batch is now stored.
    Stored,
    /// The store already had this very batch; nothing changed (acknowledge it anyway).
    Duplicate,
}

/// Where a host's twin stands in its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwinProgress {
    /// The last seq whose state the twin has (0: none yet).
    pub applied_seq: u64,
    /// The snapshot of that state, if one was taken.
    pub snapshot: Option<String>,
    /// Reverted by an operator: new batches are stored but not applied until resumed.
    pub held: bool,
    /// The last seq whose apply failed after `applied_seq` (0: none).
    pub failed_seq: u64,
    /// The seq of the twin's first apply (0: none yet): the packages the host held then stay
    /// the image's in `--twin-packages changes`.
    pub base_seq: u64,
}

/// A verification of a twin: after an apply (what it changed) or in full (`verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyRecord {
    /// The seq the twin held.
    pub seq: u64,
    /// Items that differ.
    pub differences: u64,
    /// Items compared and equal.
    pub equal: u64,
    /// Items the twin does not hold by design.
    pub by_design: u64,
    /// Everything was read (`verify`), not only what the apply changed.
    pub full: bool,
    /// When, ns since the epoch.
    pub unix_ns: i64,
    /// How long it took, µs.
    pub took_us: u64,
    /// The first differences, one per line.
    pub first: String,
}

/// A snapshot of a twin, linked to the seq it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The host.
    pub host: String,
    /// The seq whose state it holds.
    pub seq: u64,
    /// The backend's name for it.
    pub name: String,
    /// When it was taken, ns since the epoch.
    pub created_unix_ns: i64,
    /// How long the apply before it took, µs.
    pub apply_us: u64,
    /// Items (files, removals, units) that apply changed.
    pub items: u64,
}

/// A failed apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// The seq that failed.
    pub seq: u64,
    /// What went wrong.
    pub message: String,
    /// When, ns since the epoch.
    pub unix_ns: i64,
}

/// The history of every host.
pub struct Store {
    db: Database,
}

fn decode_model(bytes: &[u8]) -> Result<HostModel, StoreError> {
    let wire = v1::HostState::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(convert::model_from_wire(wire)?)
}

fn encode_model(m: &HostModel) -> Vec<u8> {
    convert::model_to_wire(m).to_bytes()
}

impl Store {
    /// Opens (or creates) the store at `path`. The file is 0600 (it holds every tracked file's
    /// content; a looser one is tightened), never opened through a symbolic link, and checked
    /// whole before use: a file damaged outside redb is an error here, not a panic later.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let file = safetytwin_proto::private::file(path.as_ref(), false)
            .map_err(|e| StoreError::from(redb::StorageError::from(e)))?;
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(FileBackend::new(file)?)?;
        // Create every table up front, so readers never meet a missing one.
        let tx = db.begin_write()?;
        tx.open_table(LAST_SEQ)?;
        tx.open_table(COMPLETE_SEQ)?;
        tx.open_table(BATCHES)?;
        tx.open_table(MODELS)?;
        tx.open_table(CHECKPOINTS)?;
        tx.open_table(TWIN)?;
        tx.open_table(TWIN_BASE)?;
        tx.open_table(VERIFIES)?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(FAILURES)?;
        tx.commit()?;
        Ok(Store { db })
    }

    /// The last seq stored for `host` (0: none).
    pub fn last_seq(&self, host: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LAST_SEQ)?;
        Ok(table.get(host)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The newest seq of `host` whose batch is complete (0: none): the last stored seq, or,
    /// while a batch sent in parts is arriving, the seq before its first part. The state there
    /// is one the host was in; a twin is brought only that far.
    pub fn complete_seq(&self, host: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        if let Some(seq) = tx.open_table(COMPLETE_SEQ)?.get(host)? {
            return Ok(seq.value());
        }
        let table = tx.open_table(LAST_SEQ)?;
        Ok(table.get(host)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Every host with its last seq.
    pub fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LAST_SEQ)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Stores `batch` after its host's last one, with the host's new model, in one
    /// transaction. Only the next seq is stored, a resync too (one far ahead would make the
    /// daemon's next batches look like duplicates); a seq already stored is a duplicate,
    /// acknowledged only if it is byte for byte the stored batch, else a conflict.
    pub fn append(&self, batch: &Batch) -> Result<Appended, StoreError> {
        let host = batch.header.host_id.as_str();
        let seq = batch.header.seq;
        let wire = convert::batch_to_wire(batch).to_bytes();
        let tx = self.db.begin_write()?;
        {
            let mut last_seq = tx.open_table(LAST_SEQ)?;
            let last = last_seq.get(host)?.map(|v| v.value()).unwrap_or(0);
            if seq <= last {
                // Seq 0 is never stored, so it is never a duplicate either.
                let same = tx
                    .open_table(BATCHES)?
                    .get((host, seq))?
                    .is_some_and(|stored| stored.value() == wire.as_slice());
                return if same {
                    Ok(Appended::Duplicate)
                } else {
                    Err(StoreError::Conflict {
                        host: host.to_owned(),
                        seq,
                    })
                };
            }
            if Some(seq) != last.checked_add(1) {
                return Err(StoreError::Gap {
                    host: host.to_owned(),
                    last,
                    got: seq,
                });
            }
            let mut models = tx.open_table(MODELS)?;
            let mut model = match models.get(host)? {
                Some(bytes) if !batch.header.resync => decode_model(bytes.value())?,
                _ => HostModel::default(),
            };
            model.apply_batch(&batch.delta);
            let encoded = encode_model(&model);
            models.insert(host, encoded.as_slice())?;
            if seq.is_multiple_of(CHECKPOINT_EVERY) || batch.header.resync {
                tx.open_table(CHECKPOINTS)?
                    .insert((host, seq), encoded.as_slice())?;
            }
            tx.open_table(BATCHES)?
                .insert((host, seq), wire.as_slice())?;
            last_seq.insert(host, seq)?;
            let mut complete = tx.open_table(COMPLETE_SEQ)?;
            let complete_before = complete.get(host)?.map_or(last, |v| v.value());
            let now = if batch.header.more {
                complete_before
            } else {
                seq
            };
            complete.insert(host, now)?;
        }
        tx.commit()?;
        Ok(Appended::Stored)
    }

    /// The stored batch `seq` of `host`.
    pub fn batch(&self, host: &str, seq: u64) -> Result<Option<Batch>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BATCHES)?;
        let Some(bytes) = table.get((host, seq))? else {
            return Ok(None);
        };
        let wire = v1::DeltaBatch::from_bytes(bytes.value())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(convert::batch_from_wire(wire)?))
    }

    /// `host`'s model right after batch `seq`: the nearest checkpoint plus the batches after it.
    pub fn state_at(&self, host: &str, seq: u64) -> Result<HostModel, StoreError> {
        let no_such = || StoreError::NoSuchSeq {
            host: host.to_owned(),
            seq,
        };
        if seq == 0 || seq > self.last_seq(host)? {
            return Err(no_such());
        }
        let tx = self.db.begin_read()?;
        let checkpoints = tx.open_table(CHECKPOINTS)?;
        let (mut model, from) = match checkpoints.range((host, 0)..=(host, seq))?.next_back() {
            Some(row) => {
                let (k, v) = row?;
                (decode_model(v.value())?, k.value().1.saturating_add(1))
            }
            None => (HostModel::default(), 1),
        };
        let batches = tx.open_table(BATCHES)?;
        for row in batches.range((host, from)..=(host, seq))? {
            let (_, v) = row?;
            let wire = v1::DeltaBatch::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let batch = convert::batch_from_wire(wire)?;
            if batch.header.resync {
                model = HostModel::default();
            }
            model.apply_batch(&batch.delta);
        }
        Ok(model)
    }

    /// The last seq of `host` whose window ended at or before `unix_ns` (binary search over the
    /// history; windows end in seq order).
    pub fn seq_at_time(&self, host: &str, unix_ns: i64) -> Result<Option<u64>, StoreError> {
        let (mut lo, mut hi) = (1, self.last_seq(host)?);
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let end = self
                .batch(host, mid)?
                .map(|b| b.header.window_end_unix_ns)
                .ok_or_else(|| StoreError::NoSuchSeq {
                    host: host.to_owned(),
                    seq: mid,
                })?;
            if end <= unix_ns {
                found = Some(mid);
                // mid ≥ 1 and ≤ the last stored seq: neither step can wrap.
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
        Ok(found)
    }

    /// `host`'s model after its last batch.
    pub fn state(&self, host: &str) -> Result<Option<HostModel>, StoreError> {
        let tx = self.db.begin_read()?;
        let models = tx.open_table(MODELS)?;
        models
            .get(host)?
            .map(|bytes| decode_model(bytes.value()))
            .transpose()
    }

    /// How far `host`'s twin is.
    pub fn twin_progress(&self, host: &str) -> Result<TwinProgress, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TWIN)?;
        let base_seq = tx
            .open_table(TWIN_BASE)?
            .get(host)?
            .map_or(0, |v| v.value());
        Ok(table
            .get(host)?
            .map(|v| {
                let (applied_seq, snapshot, held, failed_seq) = v.value();
                TwinProgress {
                    applied_seq,
                    snapshot: (!snapshot.is_empty()).then(|| snapshot.to_owned()),
                    held,
                    failed_seq,
                    base_seq,
                }
            })
            .unwrap_or_default())
    }

    /// Records where `host`'s twin now stands and, in the same transaction, the snapshot that
    /// holds that state.
    pub fn set_twin_progress(
        &self,
        host: &str,
        progress: &TwinProgress,
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(TWIN)?.insert(
                host,
                (
                    progress.applied_seq,
                    progress.snapshot.as_deref().unwrap_or(""),
                    progress.held,
                    progress.failed_seq,
                ),
            )?;
            tx.open_table(TWIN_BASE)?.insert(host, progress.base_seq)?;
            if let Some(s) = snapshot {
                tx.open_table(SNAPSHOTS)?.insert(
                    (host, s.seq),
                    (s.name.as_str(), s.created_unix_ns, s.apply_us, s.items),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records `host`'s twin's last verification.
    pub fn set_verify(&self, host: &str, v: &VerifyRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(VERIFIES)?.insert(
            host,
            (
                v.seq,
                v.differences,
                v.equal,
                v.by_design,
                v.full,
                v.unix_ns,
                v.took_us,
                v.first.as_str(),
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// `host`'s twin's last verification, if any.
    pub fn last_verify(&self, host: &str) -> Result<Option<VerifyRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(VERIFIES)?;
        Ok(table.get(host)?.map(|v| {
            let (seq, differences, equal, by_design, full, unix_ns, took_us, first) = v.value();
            VerifyRecord {
                seq,
                differences,
                equal,
                by_design,
                full,
                unix_ns,
                took_us,
                first: first.to_owned(),
            }
        }))
    }

    /// `host`'s recorded snapshots, oldest first.
    pub fn snapshots(&self, host: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in table.range((host, 0)..=(host, u64::MAX))? {
            let (k, v) = row?;
            let (name, created_unix_ns, apply_us, items) = v.value();
            out.push(SnapshotRecord {
                host: host.to_owned(),
                seq: k.value().1,
                name: name.to_owned(),
                created_unix_ns,
                apply_us,
                items,
            });
        }
        Ok(out)
    }

    /// Forgets the snapshot record of `host` at `seq` (after the backend deleted it).
    pub fn remove_snapshot(&self, host: &str, seq: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SNAPSHOTS)?.remove((host, seq))?;
        tx.commit()?;
        Ok(())
    }

    /// Records a failed apply of `host` at `failure.seq` and, in the same transaction, makes
    /// it the twin's `failed_seq`; where the twin stands (applied seq, snapshot, held) stays.
    pub fn record_failure(&self, host: &str, failure: &FailureRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(FAILURES)?.insert(
                (host, failure.seq),
                (failure.message.as_str(), failure.unix_ns),
            )?;
            let mut twin = tx.open_table(TWIN)?;
            let (applied_seq, snapshot, held) = twin
                .get(host)?
                .map(|v| {
                    let (applied_seq, snapshot, held, _) = v.value();
                    (applied_seq, snapshot.to_owned(), held)
                })
                .unwrap_or_default();
            twin.insert(host, (applied_seq, snapshot.as_str(), held, failure.seq))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The last failed apply of `host`, if any.
    pub fn last_failure(&self, host: &str) -> Result<Option<FailureRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FAILURES)?;
        let Some(row) = table.range((host, 0)..=(host, u64::MAX))?.next_back() else {
            return Ok(None);
        };
        let (k, v) = row?;
        let (message, unix_ns) = v.value();
        Ok(Some(FailureRecord {
            seq: k.value().1,
            message: message.to_owned(),
            unix_ns,
        }))
    }

    /// The net changes that bring a twin at `from` (0: empty) to `to`: the stored batch itself
    /// when it directly follows and restates nothing, else the diff of the two states.
    pub fn changes_between(
        &self,
        host: &str,
        from: u64,
        to: u64,
    ) -> Result<safetytwin_model::DeltaBatch, StoreError> {
        if from.checked_add(1) == Some(to)
            && let Some(batch) = self.batch(host, to)?
            && !batch.header.resync
        {
            return Ok(batch.delta);
        }
        let before = if from == 0 {
            HostModel::default()
        } else {
            self.state_at(host, from)?
        };
        Ok(before.diff(&self.state_at(host, to)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure and the twin's `failed_seq` are one record: where the twin stands is kept.
    #[test]
    fn a_recorded_failure_marks_the_twin_and_keeps_where_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        let failure = |seq| FailureRecord {
            seq,
            message: format!("seq {seq} failed"),
            unix_ns: 1,
        };
        // A twin that never applied anything.
        store.record_failure("fresh", &failure(1)).unwrap();
        assert_eq!(
            store.twin_progress("fresh").unwrap(),
            TwinProgress {
                failed_seq: 1,
                ..TwinProgress::default()
            }
        );
        let at = TwinProgress {
            applied_seq: 4,
            snapshot: Some("safetytwin-h-4".into()),
            held: false,
            failed_seq: 0,
            base_seq: 2,
        };
        store.set_twin_progress("h", &at, None).unwrap();
        store.record_failure("h", &failure(6)).unwrap();
        assert_eq!(
            store.twin_progress("h").unwrap(),
            TwinProgress {
                failed_seq: 6,
                ..at
            }
        );
        assert_eq!(store.last_failure("h").unwrap(), Some(failure(6)));
    }

    /// The last verification of a twin is kept until the next replaces it.
    #[test]
    fn the_last_verification_is_kept_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        assert_eq!(store.last_verify("h").unwrap(), None);
        let record = |seq, differences| VerifyRecord {
            seq,
            differences,
            equal: 9,
            by_design: 3,
            full: seq == 2,
            unix_ns: 5,
            took_us: 700,
            first: "package curl:amd64: host 1 installed, twin -".into(),
        };
        store.set_verify("h", &record(1, 1)).unwrap();
        store.set_verify("h", &record(2, 0)).unwrap();
        assert_eq!(store.last_verify("h").unwrap(), Some(record(2, 0)));
        assert_eq!(store.last_verify("other").unwrap(), None);
    }
}
