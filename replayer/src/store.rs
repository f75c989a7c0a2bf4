//! The history store: every batch of every host, exactly once and in order, in redb (an
//! embedded, crash-safe database). Storing a batch, the host's new model and its last seq is
//! one transaction, so a crash at any moment leaves either all of it or none of it.
//!
//! `state_at(seq)` is event-sourced: the nearest checkpoint at or before `seq` plus the batches
//! after it, at most [`CHECKPOINT_EVERY`]` - 1` of them.

use std::path::Path;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use safetytwin_model::{Batch, HostModel};
use safetytwin_proto::{
    convert::{self, ConvertError},
    v1,
};

/// Batches by (host, seq), prost-encoded `DeltaBatch`.
const BATCHES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("batches");
/// The last stored seq of each host.
const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("last_seq");
/// Each host's model after its last batch, prost-encoded `HostState`.
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");
/// Models at every [`CHECKPOINT_EVERY`]th seq.
const CHECKPOINTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("checkpoints");

/// A model checkpoint is kept every this many batches.
pub const CHECKPOINT_EVERY: u64 = 64;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption).
    #[error("history store: {0}")]
    Db(#[from] redb::Error),
    /// The batch skips seqs the store does not have; nothing was stored.
    #[error("host {host}: batch seq {got} does not follow the stored seq {last}")]
    Gap {
        /// The host.
        host: String,
        /// The last stored seq.
        last: u64,
        /// The seq offered.
        got: u64,
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
    /// The store already had this seq; nothing changed (acknowledge it anyway).
    Duplicate,
}

/// The history of every host.
pub struct Store {
    db: Database,
}

fn decode_model(bytes: &[u8]) -> Result<HostModel, StoreError> {
    let wire = v1::HostState::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(convert::model_from_wire(wire)?)
}

fn encode_model(m: &HostModel) -> Vec<u8> {
    convert::model_to_wire(m).encode_to_vec()
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        // Create every table up front, so readers never meet a missing one.
        let tx = db.begin_write()?;
        tx.open_table(LAST_SEQ)?;
        tx.open_table(BATCHES)?;
        tx.open_table(MODELS)?;
        tx.open_table(CHECKPOINTS)?;
        tx.commit()?;
        Ok(Store { db })
    }

    /// The last seq stored for `host` (0: none).
    pub fn last_seq(&self, host: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
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
    /// transaction. A seq already stored is a duplicate and changes nothing; a seq beyond the
    /// next is a gap and is refused, unless the batch is a resync (it restates the whole model).
    pub fn append(&self, batch: &Batch) -> Result<Appended, StoreError> {
        let host = batch.header.host_id.as_str();
        let seq = batch.header.seq;
        let tx = self.db.begin_write()?;
        {
            let mut last_seq = tx.open_table(LAST_SEQ)?;
            let last = last_seq.get(host)?.map(|v| v.value()).unwrap_or(0);
            if seq <= last {
                return Ok(Appended::Duplicate);
            }
            if seq != last + 1 && !batch.header.resync {
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
            let wire = convert::batch_to_wire(batch).encode_to_vec();
            tx.open_table(BATCHES)?
                .insert((host, seq), wire.as_slice())?;
            last_seq.insert(host, seq)?;
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
        let wire = v1::DeltaBatch::decode(bytes.value())
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
                (decode_model(v.value())?, k.value().1 + 1)
            }
            None => (HostModel::default(), 1),
        };
        let batches = tx.open_table(BATCHES)?;
        for row in batches.range((host, from)..=(host, seq))? {
            let (_, v) = row?;
            let wire = v1::DeltaBatch::decode(v.value())
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
}
