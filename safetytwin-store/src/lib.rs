//! The history store: every batch of every host, exactly once and in order. Storing a batch,
//! the host's new model and its last seq is one transaction, so a crash at any moment leaves
//! either all of it or none of it.
//!
//! Two engines behind one set of rules ([`StoreUrl`]): redb, embedded, for a controller that is
//! one machine (the default), and PostgreSQL, shared by several replayers. What is a duplicate,
//! a gap or a conflict, when a checkpoint is kept and how a state is folded is decided here,
//! once, above the engines (`backend.rs`).
//!
//! A batch sent in parts is stored part by part, each like any batch; `complete_seq` is the
//! newest seq that ends a whole one.
//!
//! `state_at(seq)` is event-sourced: the nearest checkpoint at or before `seq` plus the batches
//! after it, at most [`CHECKPOINT_EVERY`]` - 1` of them.

mod backend;
mod postgres;
mod redb;
#[cfg(any(test, feature = "testing"))]
pub mod scratch;

use std::{fmt, path::Path, str::FromStr};

use safetytwin_model::{Batch, HostModel};
use safetytwin_proto::{
    convert::{self, ConvertError},
    v1,
    wire::Wire,
};

use crate::backend::{Backend, NewBatch};

/// A model checkpoint is kept every this many batches.
pub const CHECKPOINT_EVERY: u64 = 64;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed (I/O, corruption).
    #[error("history store: {0}")]
    Db(#[from] ::redb::Error),
    /// PostgreSQL failed or cannot be reached.
    #[error("history store (PostgreSQL): {0}")]
    Postgres(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store's location is not one this build knows.
    #[error("history store {0:?}: expected redb:PATH, a path, or postgres://USER@HOST/DATABASE")]
    BadUrl(String),
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
    /// This process's worker no longer holds the lease of the host's twin (a shared store):
    /// the twin record was not written; the worker that holds it now redoes the work.
    #[error("host {host}: worker {worker} no longer holds the lease of its twin; nothing recorded")]
    LeaseLost {
        /// The host.
        host: String,
        /// This process's worker.
        worker: String,
    },
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

/// Where the history lives: `redb:PATH` (or a plain path) or a `postgres://` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded engine's file.
    Redb(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<StoreUrl, StoreError> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            // Parsed now so that a typo is refused at the command line, not at first use.
            s.parse::<::postgres::Config>()
                .map_err(|_| StoreError::BadUrl(StoreUrl::redact(s)))?;
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        let path = s.strip_prefix("redb:").unwrap_or(s);
        if path.is_empty() || s.contains("://") {
            return Err(StoreError::BadUrl(StoreUrl::redact(s)));
        }
        Ok(StoreUrl::Redb(path.into()))
    }
}

impl StoreUrl {
    /// `s` without a password (`postgres://user:secret@…` → `postgres://user:***@…`).
    fn redact(s: &str) -> String {
        let Some((scheme, rest)) = s.split_once("://") else {
            return s.to_owned();
        };
        match rest.split_once('@') {
            Some((user, host)) => {
                let user = user.split_once(':').map_or(user, |(u, _)| u);
                let hidden = if rest.split_once('@').is_some_and(|(u, _)| u.contains(':')) {
                    ":***"
                } else {
                    ""
                };
                format!("{scheme}://{user}{hidden}@{host}")
            }
            None => s.to_owned(),
        }
    }
}

/// Shown without a password: URLs end up in logs and `status`.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Redb(p) => write!(f, "redb:{}", p.display()),
            StoreUrl::Postgres(u) => f.write_str(&StoreUrl::redact(u)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What `append` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The batch is now stored.
    Stored,
    /// The store already had this very batch; nothing changed (acknowledge it anyway).
    Duplicate,
}

/// An append seen by [`Store::listen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `host`'s batch `seq` was stored; `here` when by this process.
    Stored {
        /// The host.
        host: String,
        /// Its seq.
        seq: u64,
        /// Stored through this `Store`.
        here: bool,
    },
    /// Notices may have been lost (the listening connection was (re)made): look at every host.
    Missed,
}

/// What one worker holds after a lease round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRound {
    /// Every host whose twin the worker now drives, sorted.
    pub held: Vec<String>,
    /// Those of `held` it took in this round (new hosts, or another worker's that expired).
    pub taken: Vec<String>,
    /// Those of `taken` that another worker held before: moves.
    pub moved: Vec<String>,
}

/// Who drives a host's twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The host.
    pub host: String,
    /// The worker (`serve --worker-id`).
    pub owner: String,
    /// Milliseconds until it ends unless renewed (negative: ended, free to take).
    pub expires_in_ms: i64,
    /// How often the twin moved from one worker to another.
    pub moves: u64,
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
    engine: Box<dyn Backend>,
}

fn decode_model(bytes: &[u8]) -> Result<HostModel, StoreError> {
    let wire = v1::HostState::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(convert::model_from_wire(wire)?)
}

fn encode_model(m: &HostModel) -> Vec<u8> {
    convert::model_to_wire(m).to_bytes()
}

fn decode_batch(bytes: &[u8]) -> Result<Batch, StoreError> {
    let wire = v1::DeltaBatch::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(convert::batch_from_wire(wire)?)
}

impl Store {
    /// Opens (or creates) the embedded store at `path`. The file is 0600 (it holds every
    /// tracked file's content; a looser one is tightened), never opened through a symbolic
    /// link, and checked whole before use: a file damaged outside redb is an error here, not a
    /// panic later.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Box::new(redb::Redb::open(path.as_ref())?),
        })
    }

    /// Opens the store at `url`: the embedded file, or a PostgreSQL database (its tables are
    /// created if missing; several replayers may share it).
    pub fn connect(url: &StoreUrl) -> Result<Store, StoreError> {
        match url {
            StoreUrl::Redb(path) => Store::open(path),
            StoreUrl::Postgres(u) => Ok(Store {
                engine: Box::new(postgres::Postgres::connect(u)?),
            }),
        }
    }

    /// The last seq stored for `host` (0: none).
    pub fn last_seq(&self, host: &str) -> Result<u64, StoreError> {
        Ok(self.engine.head(host)?.last)
    }

    /// The newest seq of `host` whose batch is complete (0: none): the last stored seq, or,
    /// while a batch sent in parts is arriving, the seq before its first part. The state there
    /// is one the host was in; a twin is brought only that far.
    pub fn complete_seq(&self, host: &str) -> Result<u64, StoreError> {
        Ok(self.engine.head(host)?.complete_seq())
    }

    /// Whether other processes append to this history too (a shared PostgreSQL); then `f` is
    /// called, on a thread of its own, with every append committed by anyone (this process's
    /// too, marked `here`), until it returns false. The embedded engine has one writer: false,
    /// and `f` is never called.
    pub fn listen(&self, f: impl FnMut(Notice) -> bool + Send + 'static) -> bool {
        self.engine.listen(Box::new(f))
    }

    /// Every host with its last seq.
    pub fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.engine.hosts()
    }

    /// Stores `batch` after its host's last one, with the host's new model, in one
    /// transaction. Only the next seq is stored, a resync too (one far ahead would make the
    /// daemon's next batches look like duplicates); a seq already stored is a duplicate,
    /// acknowledged only if it is byte for byte the stored batch, else a conflict.
    pub fn append(&self, batch: &Batch) -> Result<Appended, StoreError> {
        let host = batch.header.host_id.as_str();
        let seq = batch.header.seq;
        let wire = convert::batch_to_wire(batch).to_bytes();
        self.engine.append_with(host, &mut |tx| {
            let head = tx.head()?;
            if seq <= head.last {
                // Seq 0 is never stored, so it is never a duplicate either.
                return if tx.batch(seq)?.is_some_and(|stored| stored == wire) {
                    Ok(Appended::Duplicate)
                } else {
                    Err(StoreError::Conflict {
                        host: host.to_owned(),
                        seq,
                    })
                };
            }
            if Some(seq) != head.last.checked_add(1) {
                return Err(StoreError::Gap {
                    host: host.to_owned(),
                    last: head.last,
                    got: seq,
                });
            }
            let mut model = match tx.model()? {
                Some(bytes) if !batch.header.resync => decode_model(&bytes)?,
                _ => HostModel::default(),
            };
            model.apply_batch(&batch.delta);
            let encoded = encode_model(&model);
            tx.put(&NewBatch {
                seq,
                batch: &wire,
                model: &encoded,
                checkpoint: seq.is_multiple_of(CHECKPOINT_EVERY) || batch.header.resync,
                complete: if batch.header.more {
                    head.complete_seq()
                } else {
                    seq
                },
            })?;
            Ok(Appended::Stored)
        })
    }

    /// The stored batch `seq` of `host`.
    pub fn batch(&self, host: &str, seq: u64) -> Result<Option<Batch>, StoreError> {
        self.engine
            .batch(host, seq)?
            .map(|bytes| decode_batch(&bytes))
            .transpose()
    }

    /// `host`'s model right after batch `seq`: the nearest checkpoint plus the batches after it.
    pub fn state_at(&self, host: &str, seq: u64) -> Result<HostModel, StoreError> {
        if seq == 0 || seq > self.last_seq(host)? {
            return Err(StoreError::NoSuchSeq {
                host: host.to_owned(),
                seq,
            });
        }
        let (mut model, from) = match self.engine.checkpoint_before(host, seq)? {
            Some((at, bytes)) => (decode_model(&bytes)?, at.saturating_add(1)),
            None => (HostModel::default(), 1),
        };
        self.engine.each_batch(host, from, seq, &mut |bytes| {
            let batch = decode_batch(bytes)?;
            if batch.header.resync {
                model = HostModel::default();
            }
            model.apply_batch(&batch.delta);
            Ok(())
        })?;
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
        self.engine
            .model(host)?
            .map(|bytes| decode_model(&bytes))
            .transpose()
    }

    /// One lease round of `worker` with a shared store: renews the leases it holds for `ttl`,
    /// and takes free ones (hosts without a lease, or whose lease ended) up to its fair share
    /// of the hosts among the workers seen within `ttl`. A worker that stops renewing (dead,
    /// cut off) loses its twins `ttl` after its last round, to the next worker's round. Time is
    /// the database's, so the workers' clocks do not matter. `None` with the embedded store:
    /// one process, every twin its own.
    pub fn lease_round(
        &self,
        worker: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseRound>, StoreError> {
        self.engine.lease_round(worker, ttl)
    }

    /// Every twin's lease (empty with the embedded store).
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.engine.leases()
    }

    /// Makes this process the worker `worker` (the first call counts): with a shared store, a
    /// write of a twin's records (progress, snapshots, failures, verifications) then commits
    /// only while `worker` holds that twin's lease, checked in the write's own transaction, so a
    /// worker that was cut off and lost its twins cannot overwrite what their new worker
    /// records (`StoreError::LeaseLost`). No effect with the embedded store.
    pub fn act_as(&self, worker: &str) {
        self.engine.act_as(worker);
    }

    /// Gives up `worker`'s leases at once (a graceful stop).
    pub fn release(&self, worker: &str) -> Result<(), StoreError> {
        self.engine.release(worker)
    }

    /// How far `host`'s twin is.
    pub fn twin_progress(&self, host: &str) -> Result<TwinProgress, StoreError> {
        self.engine.twin_progress(host)
    }

    /// Records where `host`'s twin now stands and, in the same transaction, the snapshot that
    /// holds that state.
    pub fn set_twin_progress(
        &self,
        host: &str,
        progress: &TwinProgress,
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), StoreError> {
        self.engine.set_twin_progress(host, progress, snapshot)
    }

    /// Records `host`'s twin's last verification.
    pub fn set_verify(&self, host: &str, v: &VerifyRecord) -> Result<(), StoreError> {
        self.engine.set_verify(host, v)
    }

    /// `host`'s twin's last verification, if any.
    pub fn last_verify(&self, host: &str) -> Result<Option<VerifyRecord>, StoreError> {
        self.engine.last_verify(host)
    }

    /// `host`'s recorded snapshots, oldest first.
    pub fn snapshots(&self, host: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.engine.snapshots(host)
    }

    /// Forgets the snapshot record of `host` at `seq` (after the backend deleted it).
    pub fn remove_snapshot(&self, host: &str, seq: u64) -> Result<(), StoreError> {
        self.engine.remove_snapshot(host, seq)
    }

    /// Records a failed apply of `host` at `failure.seq` and, in the same transaction, makes
    /// it the twin's `failed_seq`; where the twin stands (applied seq, snapshot, held) stays.
    pub fn record_failure(&self, host: &str, failure: &FailureRecord) -> Result<(), StoreError> {
        self.engine.record_failure(host, failure)
    }

    /// The last failed apply of `host`, if any.
    pub fn last_failure(&self, host: &str) -> Result<Option<FailureRecord>, StoreError> {
        self.engine.last_failure(host)
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

    /// `--store` takes a path, `redb:PATH` or a PostgreSQL URL; anything else is refused at
    /// once, and a password never shows in what is printed.
    #[test]
    fn store_urls_are_parsed_and_shown_without_a_password() {
        let parse = |s: &str| s.parse::<StoreUrl>();
        assert_eq!(
            parse("redb:/var/lib/x.redb").unwrap(),
            StoreUrl::Redb("/var/lib/x.redb".into())
        );
        assert_eq!(parse("h.redb").unwrap(), StoreUrl::Redb("h.redb".into()));
        let pg = parse("postgres://st:s3cret@db.example:5432/history").unwrap();
        assert_eq!(
            pg,
            StoreUrl::Postgres("postgres://st:s3cret@db.example:5432/history".into())
        );
        assert_eq!(pg.to_string(), "postgres://st:***@db.example:5432/history");
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert!(parse("postgresql://db/history").is_ok());
        for bad in ["", "redb:", "mysql://db/x", "postgres://u:p@h:notaport/db"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("expected redb:PATH"), "{bad}: {err}");
            assert!(!err.contains(":p@"), "{err}");
        }
    }

    /// A failure and the twin's `failed_seq` are one record: where the twin stands is kept.
    #[test]
    fn a_recorded_failure_marks_the_twin_and_keeps_where_it_stands() {
        for engine in scratch::Scratch::each() {
            a_recorded_failure_on(&engine.open());
        }
    }

    fn a_recorded_failure_on(store: &Store) {
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
        for engine in scratch::Scratch::each() {
            the_last_verification_on(&engine.open());
        }
    }

    fn the_last_verification_on(store: &Store) {
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
