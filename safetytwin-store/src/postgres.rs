//! The shared engine: PostgreSQL (15 and later), for a controller of several replayers. The
//! primary key (host, seq) of the batches makes a batch stored at most once whoever stores it,
//! and an append holds a transaction-scoped advisory lock on its host, so two replayers that
//! both receive a host (a daemon failing over) store its seqs one after the other, each after
//! the last, exactly as one replayer would.
//!
//! Seqs and counters are `u64` in the model and `bigint` here: a value above `i64::MAX` is
//! refused on the way in (a seq only ever grows by one, so none gets there) and a negative one
//! read back is a corrupt record.

use std::time::Duration;

use postgres::{NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use crate::{
    Appended, FailureRecord, Lease, LeaseRound, Notice, SnapshotRecord, StoreError, TwinProgress,
    VerifyRecord,
    backend::{AppendTx, Backend, Head, NewBatch},
};

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The schema, created on first use. Every statement is idempotent.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS st_hosts (
    host text PRIMARY KEY,
    last_seq bigint NOT NULL,
    complete_seq bigint NOT NULL,
    model bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS st_batches (
    host text NOT NULL,
    seq bigint NOT NULL,
    batch bytea NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE TABLE IF NOT EXISTS st_checkpoints (
    host text NOT NULL,
    seq bigint NOT NULL,
    model bytea NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE TABLE IF NOT EXISTS st_twins (
    host text PRIMARY KEY,
    applied_seq bigint NOT NULL,
    snapshot text NOT NULL,
    held boolean NOT NULL,
    failed_seq bigint NOT NULL,
    base_seq bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS st_verifies (
    host text PRIMARY KEY,
    seq bigint NOT NULL,
    differences bigint NOT NULL,
    equal bigint NOT NULL,
    by_design bigint NOT NULL,
    full_check boolean NOT NULL,
    unix_ns bigint NOT NULL,
    took_us bigint NOT NULL,
    first_lines text NOT NULL
);
CREATE TABLE IF NOT EXISTS st_snapshots (
    host text NOT NULL,
    seq bigint NOT NULL,
    name text NOT NULL,
    created_unix_ns bigint NOT NULL,
    apply_us bigint NOT NULL,
    items bigint NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE TABLE IF NOT EXISTS st_workers (
    worker text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS st_leases (
    host text PRIMARY KEY,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL,
    moves bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS st_failures (
    host text NOT NULL,
    seq bigint NOT NULL,
    message text NOT NULL,
    unix_ns bigint NOT NULL,
    PRIMARY KEY (host, seq)
);
";

/// The advisory lock key that serialises schema creation between replayers starting together
/// (`CREATE TABLE IF NOT EXISTS` alone races on the catalog).
const SCHEMA_LOCK: i64 = 0x5354_5343_4845_4d41; // "STSCHEMA"

/// Connections kept open per replayer: the ingest's and the applier's blocking threads.
const POOL_SIZE: u32 = 8;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Postgres(e.into())
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Postgres(e.into())
    }
}

/// A model value as a `bigint`.
fn big(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit a bigint")))
}

/// A `bigint` read back as a model value.
fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v} stored")))
}

/// A seq from outside (a query's bound) as a `bigint`: past the largest one nothing is stored.
fn bound(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The channel every append notifies, with `ORIGIN SEQ HOST` as its payload.
const CHANNEL: &str = "st_batches";

pub(crate) struct Postgres {
    /// `Some` until dropped (see `Drop`).
    pool: Option<Pool>,
    config: postgres::Config,
    /// Tells this process's appends from other replayers' in the notifications.
    origin: String,
    /// The worker this process is (`act_as`): its writes of a twin's records hold only while
    /// it holds that twin's lease.
    worker: std::sync::OnceLock<String>,
}

impl Postgres {
    /// Connects to `url` (a libpq-style URL or key=value string) and creates the schema if
    /// it is missing.
    pub(crate) fn connect(url: &str) -> Result<Postgres, StoreError> {
        let config: postgres::Config = url.parse()?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(PostgresConnectionManager::new(config.clone(), NoTls))?;
        let mut c = pool.get()?;
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Postgres {
            pool: Some(pool),
            config,
            origin: format!("{}.{nanos}", std::process::id()),
            worker: std::sync::OnceLock::new(),
        })
    }

    /// The fence of a twin's record: once this process acts as a worker, a write of `host`'s
    /// twin records commits only while that worker holds the host's lease. `FOR SHARE` keeps
    /// the lease row until the commit: a taker skips it (`SKIP LOCKED`) meanwhile, so the lease
    /// cannot move between this check and the write.
    fn fence(&self, tx: &mut Transaction<'_>, host: &str) -> Result<(), StoreError> {
        let Some(worker) = self.worker.get() else {
            return Ok(());
        };
        let held = tx
            .query_opt(
                "SELECT 1 FROM st_leases WHERE host = $1 AND owner = $2 AND expires_at > now()
                 FOR SHARE",
                &[&host, worker],
            )?
            .is_some();
        if held {
            Ok(())
        } else {
            Err(StoreError::LeaseLost {
                host: host.to_owned(),
                worker: worker.clone(),
            })
        }
    }

    fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        Ok(self.pool.as_ref().expect("a pool until dropped").get()?)
    }
}

/// Closing a connection of the synchronous client runs a runtime of its own, which a thread
/// that drives async tasks refuses (it panics): the last `Store` may well be dropped on one.
impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// Receives the appends' notifications until `f` returns false; reconnects after a second when
/// the connection fails, and says `Missed` first on every connection (what was notified in
/// between is lost).
fn listen(config: &postgres::Config, origin: &str, mut f: Box<dyn FnMut(Notice) -> bool + Send>) {
    loop {
        match listen_once(config, origin, &mut f) {
            Ok(Listening::Done) => return,
            Ok(Listening::Ended) => {}
            Err(e) => tracing::warn!(
                "history store: listening for other replayers' batches: {e}; again in 1 s"
            ),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How one connection's listening ended.
enum Listening {
    /// `f` wants no more.
    Done,
    /// The server closed the connection.
    Ended,
}

/// One connection: LISTEN, `Missed`, then every notification until `f` is done or the
/// connection ends. A payload that is not "origin seq host" is skipped.
fn listen_once(
    config: &postgres::Config,
    origin: &str,
    f: &mut dyn FnMut(Notice) -> bool,
) -> Result<Listening, postgres::Error> {
    let mut c = config.connect(NoTls)?;
    c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    if !f(Notice::Missed) {
        return Ok(Listening::Done);
    }
    let mut notes = c.notifications();
    let mut it = notes.blocking_iter();
    while let Some(n) = postgres::fallible_iterator::FallibleIterator::next(&mut it)? {
        let mut parts = n.payload().splitn(3, ' ');
        let (Some(from), Some(seq), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(seq) = seq.parse() else { continue };
        let notice = Notice::Stored {
            host: host.to_owned(),
            seq,
            here: from == origin,
        };
        if !f(notice) {
            return Ok(Listening::Done);
        }
    }
    Ok(Listening::Ended)
}

fn head_in(c: &mut impl postgres::GenericClient, host: &str) -> Result<Head, StoreError> {
    let row = c.query_opt(
        "SELECT last_seq, complete_seq FROM st_hosts WHERE host = $1",
        &[&host],
    )?;
    Ok(match row {
        Some(r) => Head {
            last: unsigned(r.get(0))?,
            complete: Some(unsigned(r.get(1))?),
        },
        None => Head::default(),
    })
}

struct Tx<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    host: &'a str,
    origin: &'a str,
}

impl AppendTx for Tx<'_, '_> {
    fn head(&mut self) -> Result<Head, StoreError> {
        head_in(self.tx, self.host)
    }

    fn batch(&mut self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_opt(
                "SELECT batch FROM st_batches WHERE host = $1 AND seq = $2",
                &[&self.host, &bound(seq)],
            )?
            .map(|r| r.get(0)))
    }

    fn model(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tx
            .query_opt("SELECT model FROM st_hosts WHERE host = $1", &[&self.host])?
            .map(|r| r.get(0)))
    }

    fn put(&mut self, new: &NewBatch<'_>) -> Result<(), StoreError> {
        let (host, seq) = (self.host, big(new.seq)?);
        self.tx.execute(
            "INSERT INTO st_batches (host, seq, batch) VALUES ($1, $2, $3)",
            &[&host, &seq, &new.batch],
        )?;
        if new.checkpoint {
            self.tx.execute(
                "INSERT INTO st_checkpoints (host, seq, model) VALUES ($1, $2, $3)",
                &[&host, &seq, &new.model],
            )?;
        }
        self.tx.execute(
            "INSERT INTO st_hosts (host, last_seq, complete_seq, model) VALUES ($1, $2, $3, $4)
             ON CONFLICT (host) DO UPDATE SET last_seq = EXCLUDED.last_seq,
                 complete_seq = EXCLUDED.complete_seq, model = EXCLUDED.model",
            &[&host, &seq, &big(new.complete)?, &new.model],
        )?;
        // Delivered at commit, in commit order, to every replayer listening (`listen`).
        self.tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &format!("{} {} {host}", self.origin, new.seq)],
        )?;
        Ok(())
    }
}

impl Backend for Postgres {
    fn append_with(
        &self,
        host: &str,
        f: &mut dyn FnMut(&mut dyn AppendTx) -> Result<Appended, StoreError>,
    ) -> Result<Appended, StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        // One appender per host at a time, across every replayer; released at commit or
        // rollback (or when the connection dies with its process).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&host])?;
        let appended = f(&mut Tx {
            tx: &mut tx,
            host,
            origin: &self.origin,
        })?;
        tx.commit()?;
        Ok(appended)
    }

    fn head(&self, host: &str) -> Result<Head, StoreError> {
        head_in(&mut *self.client()?, host)
    }

    fn listen(&self, f: Box<dyn FnMut(Notice) -> bool + Send>) -> bool {
        let (config, origin) = (self.config.clone(), self.origin.clone());
        std::thread::Builder::new()
            .name("store-listen".into())
            .spawn(move || listen(&config, &origin, f))
            .is_ok()
    }

    fn hosts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.client()?
            .query("SELECT host, last_seq FROM st_hosts ORDER BY host", &[])?
            .iter()
            .map(|r| Ok((r.get(0), unsigned(r.get(1))?)))
            .collect()
    }

    fn batch(&self, host: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .client()?
            .query_opt(
                "SELECT batch FROM st_batches WHERE host = $1 AND seq = $2",
                &[&host, &bound(seq)],
            )?
            .map(|r| r.get(0)))
    }

    fn model(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .client()?
            .query_opt("SELECT model FROM st_hosts WHERE host = $1", &[&host])?
            .map(|r| r.get(0)))
    }

    fn checkpoint_before(
        &self,
        host: &str,
        seq: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.client()?
            .query_opt(
                "SELECT seq, model FROM st_checkpoints WHERE host = $1 AND seq <= $2
                 ORDER BY seq DESC LIMIT 1",
                &[&host, &bound(seq)],
            )?
            .map(|r| Ok((unsigned(r.get(0))?, r.get(1))))
            .transpose()
    }

    fn each_batch(
        &self,
        host: &str,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // At most CHECKPOINT_EVERY - 1 batches in a fold; streamed row by row all the same.
        let mut c = self.client()?;
        let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&host, &bound(from), &bound(to)];
        let mut rows = c.query_raw(
            "SELECT batch FROM st_batches WHERE host = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
            params,
        )?;
        while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut rows)? {
            f(row.get::<_, &[u8]>(0))?;
        }
        Ok(())
    }

    fn lease_round(&self, worker: &str, ttl: Duration) -> Result<Option<LeaseRound>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO st_workers (worker, seen_at) VALUES ($1, now())
             ON CONFLICT (worker) DO UPDATE SET seen_at = now()",
            &[&worker],
        )?;
        let renewed: Vec<String> = tx
            .query(
                "UPDATE st_leases SET expires_at = now() + $2 * interval '1 millisecond'
                 WHERE owner = $1 RETURNING host",
                &[&worker, &(ttl_ms as f64)],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = tx.query_one(
            "SELECT (SELECT count(*) FROM st_hosts),
                    (SELECT count(*) FROM st_workers
                     WHERE seen_at > now() - $1 * interval '1 millisecond')",
            &[&(ttl_ms as f64)],
        )?;
        let (hosts, workers): (i64, i64) = (row.get(0), row.get(1));
        // This worker was just seen: at least one.
        let fair = (hosts.max(0) as u64).div_ceil(workers.max(1) as u64);
        let want = i64::try_from(fair).unwrap_or(i64::MAX) - renewed.len() as i64;
        let mut round = LeaseRound {
            held: renewed,
            ..LeaseRound::default()
        };
        if want > 0 {
            // Every host has a lease row, ended from the start until someone takes it.
            tx.execute(
                "INSERT INTO st_leases (host, owner, expires_at, moves)
                 SELECT h.host, '', '-infinity', 0 FROM st_hosts h
                 WHERE NOT EXISTS (SELECT 1 FROM st_leases l WHERE l.host = h.host)
                 ON CONFLICT (host) DO NOTHING",
                &[],
            )?;
            // An ended lease is taken by one worker only: the rows another taker holds are
            // skipped, and one it took meanwhile no longer matches `expires_at < now()`.
            for r in tx.query(
                "UPDATE st_leases l SET owner = $1,
                     expires_at = now() + $2 * interval '1 millisecond',
                     moves = l.moves + (old.owner <> '' AND old.owner <> $1)::int
                 FROM (SELECT host, owner FROM st_leases WHERE expires_at < now()
                       ORDER BY host LIMIT $3 FOR UPDATE SKIP LOCKED) old
                 WHERE l.host = old.host
                 RETURNING l.host, old.owner",
                &[&worker, &(ttl_ms as f64), &want],
            )? {
                let host: String = r.get(0);
                let before: String = r.get(1);
                if !before.is_empty() && before != worker {
                    round.moved.push(host.clone());
                }
                round.taken.push(host.clone());
                round.held.push(host);
            }
        }
        tx.commit()?;
        round.held.sort();
        Ok(Some(round))
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.client()?
            .query(
                "SELECT host, owner,
                     (extract(epoch FROM expires_at - now()) * 1000)::bigint, moves
                 FROM st_leases WHERE owner <> '' ORDER BY host",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Lease {
                    host: r.get(0),
                    owner: r.get(1),
                    expires_in_ms: r.get(2),
                    moves: unsigned(r.get(3))?,
                })
            })
            .collect()
    }

    fn act_as(&self, worker: &str) {
        // One worker per process: a second name is ignored, as documented on `Store::act_as`.
        let _ = self.worker.set(worker.to_owned());
    }

    fn release(&self, worker: &str) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        tx.execute(
            "UPDATE st_leases SET expires_at = now() - interval '1 second' WHERE owner = $1",
            &[&worker],
        )?;
        tx.execute("DELETE FROM st_workers WHERE worker = $1", &[&worker])?;
        tx.commit()?;
        Ok(())
    }

    fn twin_progress(&self, host: &str) -> Result<TwinProgress, StoreError> {
        self.client()?
            .query_opt(
                "SELECT applied_seq, snapshot, held, failed_seq, base_seq FROM st_twins
                 WHERE host = $1",
                &[&host],
            )?
            .map(|r| {
                let snapshot: String = r.get(1);
                Ok(TwinProgress {
                    applied_seq: unsigned(r.get(0))?,
                    snapshot: (!snapshot.is_empty()).then_some(snapshot),
                    held: r.get(2),
                    failed_seq: unsigned(r.get(3))?,
                    base_seq: unsigned(r.get(4))?,
                })
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn set_twin_progress(
        &self,
        host: &str,
        p: &TwinProgress,
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        self.fence(&mut tx, host)?;
        tx.execute(
            "INSERT INTO st_twins (host, applied_seq, snapshot, held, failed_seq, base_seq)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (host) DO UPDATE SET applied_seq = EXCLUDED.applied_seq,
                 snapshot = EXCLUDED.snapshot, held = EXCLUDED.held,
                 failed_seq = EXCLUDED.failed_seq, base_seq = EXCLUDED.base_seq",
            &[
                &host,
                &big(p.applied_seq)?,
                &p.snapshot.as_deref().unwrap_or(""),
                &p.held,
                &big(p.failed_seq)?,
                &big(p.base_seq)?,
            ],
        )?;
        if let Some(s) = snapshot {
            tx.execute(
                "INSERT INTO st_snapshots (host, seq, name, created_unix_ns, apply_us, items)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (host, seq) DO UPDATE SET name = EXCLUDED.name,
                     created_unix_ns = EXCLUDED.created_unix_ns,
                     apply_us = EXCLUDED.apply_us, items = EXCLUDED.items",
                &[
                    &host,
                    &big(s.seq)?,
                    &s.name,
                    &s.created_unix_ns,
                    &big(s.apply_us)?,
                    &big(s.items)?,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_verify(&self, host: &str, v: &VerifyRecord) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        self.fence(&mut tx, host)?;
        tx.execute(
            "INSERT INTO st_verifies (host, seq, differences, equal, by_design, full_check,
                 unix_ns, took_us, first_lines)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (host) DO UPDATE SET seq = EXCLUDED.seq,
                 differences = EXCLUDED.differences, equal = EXCLUDED.equal,
                 by_design = EXCLUDED.by_design, full_check = EXCLUDED.full_check,
                 unix_ns = EXCLUDED.unix_ns, took_us = EXCLUDED.took_us,
                 first_lines = EXCLUDED.first_lines",
            &[
                &host,
                &big(v.seq)?,
                &big(v.differences)?,
                &big(v.equal)?,
                &big(v.by_design)?,
                &v.full,
                &v.unix_ns,
                &big(v.took_us)?,
                &v.first,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn last_verify(&self, host: &str) -> Result<Option<VerifyRecord>, StoreError> {
        self.client()?
            .query_opt(
                "SELECT seq, differences, equal, by_design, full_check, unix_ns, took_us,
                     first_lines FROM st_verifies WHERE host = $1",
                &[&host],
            )?
            .map(|r| {
                Ok(VerifyRecord {
                    seq: unsigned(r.get(0))?,
                    differences: unsigned(r.get(1))?,
                    equal: unsigned(r.get(2))?,
                    by_design: unsigned(r.get(3))?,
                    full: r.get(4),
                    unix_ns: r.get(5),
                    took_us: unsigned(r.get(6))?,
                    first: r.get(7),
                })
            })
            .transpose()
    }

    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.client()?
            .query(
                "SELECT seq, name, created_unix_ns, apply_us, items FROM st_snapshots
                 WHERE host = $1 ORDER BY seq",
                &[&host],
            )?
            .iter()
            .map(|r| {
                Ok(SnapshotRecord {
                    host: host.to_owned(),
                    seq: unsigned(r.get(0))?,
                    name: r.get(1),
                    created_unix_ns: r.get(2),
                    apply_us: unsigned(r.get(3))?,
                    items: unsigned(r.get(4))?,
                })
            })
            .collect()
    }

    fn remove_snapshot(&self, host: &str, seq: u64) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        self.fence(&mut tx, host)?;
        tx.execute(
            "DELETE FROM st_snapshots WHERE host = $1 AND seq = $2",
            &[&host, &bound(seq)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn record_failure(&self, host: &str, failure: &FailureRecord) -> Result<(), StoreError> {
        let mut c = self.client()?;
        let mut tx = c.transaction()?;
        self.fence(&mut tx, host)?;
        let seq = big(failure.seq)?;
        tx.execute(
            "INSERT INTO st_failures (host, seq, message, unix_ns) VALUES ($1, $2, $3, $4)
             ON CONFLICT (host, seq) DO UPDATE SET message = EXCLUDED.message,
                 unix_ns = EXCLUDED.unix_ns",
            &[&host, &seq, &failure.message, &failure.unix_ns],
        )?;
        tx.execute(
            "INSERT INTO st_twins (host, applied_seq, snapshot, held, failed_seq, base_seq)
             VALUES ($1, 0, '', false, $2, 0)
             ON CONFLICT (host) DO UPDATE SET failed_seq = EXCLUDED.failed_seq",
            &[&host, &seq],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn last_failure(&self, host: &str) -> Result<Option<FailureRecord>, StoreError> {
        self.client()?
            .query_opt(
                "SELECT seq, message, unix_ns FROM st_failures WHERE host = $1
                 ORDER BY seq DESC LIMIT 1",
                &[&host],
            )?
            .map(|r| {
                Ok(FailureRecord {
                    seq: unsigned(r.get(0))?,
                    message: r.get(1),
                    unix_ns: r.get(2),
                })
            })
            .transpose()
    }
}
