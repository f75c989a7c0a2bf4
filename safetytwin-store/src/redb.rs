//! The embedded engine: one redb file (crash-safe, one writer at a time), for a controller that
//! is one machine. The default.

use std::path::Path;

use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
    backends::FileBackend,
};

use crate::{
    Appended, FailureRecord, SnapshotRecord, StoreError, TwinProgress, VerifyRecord,
    backend::{AppendTx, Backend, Head, NewBatch},
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
/// Models at every `CHECKPOINT_EVERY`th seq.
const CHECKPOINTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("checkpoints");

/// How far each host's twin is: (applied seq, its snapshot or "", held, failed seq or 0).
const TWIN: TableDefinition<&str, (u64, &str, bool, u64)> = TableDefinition::new("twin");
/// host → the seq of its twin's first apply (`TwinProgress::base_seq`).
const TWIN_BASE: TableDefinition<&str, u64> = TableDefinition::new("twin_base");
/// host → its twin's last verification: (seq, differences, equal, by design, full, unix ns,
/// µs taken, the first differences as text).
const VERIFIES: TableDefinition<&str, VerifyRow> = TableDefinition::new("verifies");
type VerifyRow<'a> = (u64, u64, u64, u64, bool, i64, u64, &'a str);
/// The twin's snapshots by (host, seq): (name, created unix ns, apply µs, items applied).
const SNAPSHOTS: TableDefinition<(&str, u64), (&str, i64, u64, u64)> =
    TableDefinition::new("snapshots");
/// Failed applies by (host, seq): (message, unix ns).
const FAILURES: TableDefinition<(&str, u64), (&str, i64)> = TableDefinition::new("failures");

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

pub(crate) struct Redb {
    db: Database,
}

impl Redb {
    pub(crate) fn open(path: &Path) -> Result<Redb, StoreError> {
        let file = safetytwin_proto::private::file(path, false)
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
        Ok(Redb { db })
    }
}

struct Tx<'a> {
    tx: &'a WriteTransaction,
    host: &'a str,
}

impl AppendTx for Tx<'_> {
    fn head(&mut self) -> Result<Head, StoreError> {
        Ok(Head {
            last: self
                .tx
                .open_table(LAST_SEQ)?
                .get(self.host)?
                .map_or(0, |v| v.value()),
            complete: self
                .tx
                .open_table(COMPLETE_SEQ)?
                .get(self.host)?
                .map(|v| v.value()),
        })
    }

    fn batch(&mut self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .open_table(BATCHES)?
            .get((self.host, seq))?
            .map(|v| v.value().to_vec()))
    }

    fn model(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .open_table(MODELS)?
            .get(self.host)?
            .map(|v| v.value().to_vec()))
    }

    fn put(&mut self, new: &NewBatch<'_>) -> Result<(), StoreError> {
        let host = self.host;
        self.tx.open_table(MODELS)?.insert(host, new.model)?;
        if new.checkpoint {
            self.tx
                .open_table(CHECKPOINTS)?
                .insert((host, new.seq), new.model)?;
        }
        self.tx
            .open_table(BATCHES)?
            .insert((host, new.seq), new.batch)?;
        self.tx.open_table(LAST_SEQ)?.insert(host, new.seq)?;
        self.tx
            .open_table(COMPLETE_SEQ)?
            .insert(host, new.complete)?;
        Ok(())
    }
}

impl Backend for Redb {
    fn append_with(
        &self,
        host: &str,
        f: &mut dyn FnMut(&mut dyn AppendTx) -> Result<Appended, StoreError>,
    ) -> Result<Appended, StoreError> {
        // redb has one writer at a time: the transaction is exclusive for every host.
        let tx = self.db.begin_write()?;
        let appended = f(&mut Tx { tx: &tx, host })?;
        tx.commit()?;
        Ok(appended)
    }

    fn listen(&self, _: Box<dyn FnMut(crate::Notice) -> bool + Send>) -> bool {
        // The file is locked by this process: no one else appends.
        false
    }

    fn head(&self, host: &str) -> Result<Head, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(Head {
            last: tx.open_table(LAST_SEQ)?.get(host)?.map_or(0, |v| v.value()),
            complete: tx.open_table(COMPLETE_SEQ)?.get(host)?.map(|v| v.value()),
        })
    }

    fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LAST_SEQ)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    fn batch(&self, host: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BATCHES)?;
        Ok(table.get((host, seq))?.map(|v| v.value().to_vec()))
    }

    fn model(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MODELS)?;
        Ok(table.get(host)?.map(|v| v.value().to_vec()))
    }

    fn checkpoint_before(
        &self,
        host: &str,
        seq: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHECKPOINTS)?;
        let Some(row) = table.range((host, 0)..=(host, seq))?.next_back() else {
            return Ok(None);
        };
        let (k, v) = row?;
        Ok(Some((k.value().1, v.value().to_vec())))
    }

    fn each_batch(
        &self,
        host: &str,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BATCHES)?;
        for row in table.range((host, from)..=(host, to))? {
            f(row?.1.value())?;
        }
        Ok(())
    }

    fn lease_round(
        &self,
        _: &str,
        _: std::time::Duration,
    ) -> Result<Option<crate::LeaseRound>, StoreError> {
        // The file is locked by this process: it keeps every twin.
        Ok(None)
    }

    fn leases(&self) -> Result<Vec<crate::Lease>, StoreError> {
        Ok(Vec::new())
    }

    fn release(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn act_as(&self, _: &str) {
        // The only worker: nothing to fence against.
    }

    fn twin_progress(&self, host: &str) -> Result<TwinProgress, StoreError> {
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

    fn set_twin_progress(
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

    fn set_verify(&self, host: &str, v: &VerifyRecord) -> Result<(), StoreError> {
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

    fn last_verify(&self, host: &str) -> Result<Option<VerifyRecord>, StoreError> {
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

    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
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

    fn remove_snapshot(&self, host: &str, seq: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SNAPSHOTS)?.remove((host, seq))?;
        tx.commit()?;
        Ok(())
    }

    fn record_failure(&self, host: &str, failure: &FailureRecord) -> Result<(), StoreError> {
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

    fn last_failure(&self, host: &str) -> Result<Option<FailureRecord>, StoreError> {
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
}
