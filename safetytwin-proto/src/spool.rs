//! The daemon's spool: every batch is written here before it is sent, and leaves only when the
//! replayer has acknowledged it, so nothing is lost across reconnects or restarts.
//!
//! One file per batch (`<seq>.batch`, written to a temporary name, fsynced and renamed, so a
//! crash leaves either the whole record or none), framed as magic, length, CRC32 and the
//! encoded `DeltaBatch`, exactly the bytes that are sent. `acked` records the last acknowledged
//! seq, so seqs keep increasing across restarts. The spool is bounded: when a batch does not fit,
//! everything pending is dropped and the caller restates the whole model in a resync batch.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

const MAGIC: &[u8; 4] = b"STB1";
const HEADER: usize = 12;

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading or writing the spool directory failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record's frame or checksum is wrong.
    #[error("spool record {0} is corrupt")]
    Corrupt(PathBuf),
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The batch is spooled.
    Stored,
    /// It did not fit: every pending batch (and this one) was dropped; the next batch must be a
    /// resync that restates the whole model.
    Overflow,
}

/// What the spool holds. Kept in memory (the directory is read once, at open), so the bound
/// check and the daemon's metrics cost no syscalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Batches pending.
    pub batches: u64,
    /// Their size on disk, frames included.
    pub bytes: u64,
}

/// A bounded, crash-safe queue of encoded batches by seq.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    acked: u64,
    next_seq: u64,
    depth: Depth,
    acked_batches: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    let (head, payload) = bytes.split_at_checked(HEADER)?;
    let len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[8..12].try_into().ok()?);
    (&head[..4] == MAGIC && payload.len() == len && crc32fast::hash(payload) == crc)
        .then_some(payload)
}

/// Writes `bytes` to `path` atomically and durably.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    // 0600 from the start: a batch holds the content of every tracked file.
    let mut f = crate::private::file(&tmp, true).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes` of records.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        if let Some(had) = crate::private::dir(&dir, crate::private::DIR_MODE).map_err(io(&dir))? {
            tracing::warn!(
                "spool {}: was mode {had:04o}, tightened to 0700",
                dir.display()
            );
        }
        let acked_path = dir.join("acked");
        let acked = match fs::read_to_string(&acked_path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| SpoolError::Corrupt(acked_path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&acked_path)(e)),
        };
        let mut spool = Spool {
            dir,
            max_bytes,
            acked,
            next_seq: 0,
            depth: Depth::default(),
            acked_batches: 0,
        };
        let seqs = spool.seqs()?;
        spool.next_seq = acked.max(seqs.last().copied().unwrap_or(0)) + 1;
        for seq in seqs {
            let p = spool.path(seq);
            spool.depth.batches += 1;
            spool.depth.bytes += fs::metadata(&p).map_err(io(&p))?.len();
        }
        Ok(spool)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.batch"))
    }

    /// Pending seqs, in order.
    fn seqs(&self) -> Result<Vec<u64>, SpoolError> {
        let mut seqs: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".batch")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The seq the next batch must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last seq the replayer acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// What is pending.
    pub fn depth(&self) -> Depth {
        self.depth
    }

    /// Batches the replayer acknowledged since this spool was opened.
    pub fn acked_batches(&self) -> u64 {
        self.acked_batches
    }

    /// Spools the encoded batch `payload`, which carries [`Spool::next_seq`].
    pub fn push(&mut self, payload: &[u8]) -> Result<Pushed, SpoolError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let framed = frame(payload);
        if self.depth.bytes + framed.len() as u64 > self.max_bytes {
            for s in self.seqs()? {
                let p = self.path(s);
                fs::remove_file(&p).map_err(io(&p))?;
            }
            self.depth = Depth::default();
            return Ok(Pushed::Overflow);
        }
        write_durably(&self.path(seq), &framed)?;
        self.depth.batches += 1;
        self.depth.bytes += framed.len() as u64;
        Ok(Pushed::Stored)
    }

    /// Pending records after `after`, in seq order.
    pub fn pending_after(&self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        self.seqs()?
            .into_iter()
            .filter(|s| *s > after)
            .map(|s| {
                let p = self.path(s);
                let bytes = fs::read(&p).map_err(io(&p))?;
                let payload = unframe(&bytes).ok_or_else(|| SpoolError::Corrupt(p.clone()))?;
                Ok((s, payload.to_vec()))
            })
            .collect()
    }

    /// The replayer holds everything up to `seq`: drop it from the spool.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.acked_batches += self.drop_through(seq)?;
        Ok(())
    }

    /// Gives up on everything up to `seq` without the replayer having it (it cannot take it; a
    /// resync restates the model instead). The same bookkeeping as an ack: seqs never go back.
    pub fn discard_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.drop_through(seq).map(drop)
    }

    /// Returns how many batches it removed.
    fn drop_through(&mut self, seq: u64) -> Result<u64, SpoolError> {
        if seq <= self.acked {
            return Ok(0);
        }
        write_durably(&self.dir.join("acked"), seq.to_string().as_bytes())?;
        self.acked = seq;
        self.next_seq = self.next_seq.max(seq + 1);
        let mut removed = 0;
        for s in self.seqs()?.into_iter().filter(|s| *s <= seq) {
            let p = self.path(s);
            let len = fs::metadata(&p).map_err(io(&p))?.len();
            fs::remove_file(&p).map_err(io(&p))?;
            // Saturating: a record copied in by hand was never counted.
            self.depth.batches = self.depth.batches.saturating_sub(1);
            self.depth.bytes = self.depth.bytes.saturating_sub(len);
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("st-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_reopen_and_drops_only_what_was_acked() {
        let d = dir("reopen");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for i in 1..=5u8 {
            assert_eq!(s.next_seq(), i as u64);
            assert_eq!(s.push(&[i; 10]).unwrap(), Pushed::Stored);
        }
        assert_eq!(
            s.depth(),
            Depth {
                batches: 5,
                bytes: 5 * (HEADER as u64 + 10)
            }
        );
        s.ack(2).unwrap();
        assert_eq!((s.acked_batches(), s.depth().batches), (2, 3));
        drop(s);
        let s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!((s.acked(), s.next_seq()), (2, 6));
        assert_eq!(
            s.depth(),
            Depth {
                batches: 3,
                bytes: 3 * (HEADER as u64 + 10)
            },
            "the depth is recounted from disk"
        );
        let pending = s.pending_after(s.acked()).unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|(seq, p)| (*seq, p[0]))
                .collect::<Vec<_>>(),
            [(3, 3), (4, 4), (5, 5)]
        );
        assert_eq!(s.pending_after(4).unwrap().len(), 1);
    }

    #[test]
    fn seqs_keep_increasing_after_everything_was_acked() {
        let d = dir("acked");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.push(b"a").unwrap();
        s.push(b"b").unwrap();
        s.ack(2).unwrap();
        drop(s);
        assert_eq!(Spool::open(&d, 1 << 20).unwrap().next_seq(), 3);
    }

    #[test]
    fn a_full_spool_overflows_into_a_resync() {
        let d = dir("full");
        let mut s = Spool::open(&d, 100).unwrap();
        assert_eq!(s.push(&[0; 40]).unwrap(), Pushed::Stored);
        assert_eq!(s.push(&[0; 40]).unwrap(), Pushed::Overflow);
        assert!(s.pending_after(0).unwrap().is_empty());
        assert_eq!(s.depth(), Depth::default());
        assert_eq!(s.next_seq(), 3, "the lost seq is not reused");
    }

    #[test]
    fn local_spool_is_private_and_a_loose_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let d = dir("private");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.push(b"secret").unwrap();
        s.ack(0).unwrap();
        s.push(b"more").unwrap();
        s.ack(1).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&s.path(2)), 0o600);
        assert_eq!(mode(&d.join("acked")), 0o600);
        drop(s);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let d = dir("corrupt");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.push(b"payload").unwrap();
        let p = s.path(1);
        let mut bytes = fs::read(&p).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&p, bytes).unwrap();
        assert!(matches!(s.pending_after(0), Err(SpoolError::Corrupt(_))));
    }
}
