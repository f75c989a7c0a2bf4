//! The daemon's spool: every batch is written here before it is sent, and leaves only when the
//! replayer has acknowledged it, so nothing is lost across reconnects or restarts.
//!
//! One file per batch (`<seq>.batch`, written to a temporary name, fsynced and renamed, so a
//! crash leaves either the whole record or none), framed as magic, length, CRC32 and the
//! encoded `DeltaBatch`, exactly the bytes that are sent. `acked` records the last acknowledged
//! seq, so seqs keep increasing across restarts. The spool is bounded: when a batch does not fit,
//! everything pending is dropped and the caller restates the whole model in a resync batch.
//!
//! A record (or the `acked` file) that fails its frame or checksum is moved aside into
//! `quarantine/` (the newest [`QUARANTINE_KEEP`] are kept for a post-mortem), counted and
//! logged once, and reading carries on: the history it held is lost, which the sender sees as a
//! hole in the seqs and answers with a resync. No seq arithmetic can wrap: the seq after
//! `u64::MAX` does not exist, and asking for it is an error.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

const MAGIC: &[u8; 4] = b"STB1";
const HEADER: usize = 12;

/// Quarantined files kept; older ones are deleted, so a disk that keeps corrupting records
/// cannot fill up with them.
pub const QUARANTINE_KEEP: usize = 16;

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
    /// Seqs are exhausted: nothing can follow `u64::MAX`.
    #[error("no seq follows {0}")]
    SeqExhausted(u64),
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
    quarantined: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The framed record, or `None` when the payload is too long for the frame's length field.
fn frame(payload: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Some(out)
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
        let mut spool = Spool {
            dir,
            max_bytes,
            acked: 0,
            next_seq: 0,
            depth: Depth::default(),
            acked_batches: 0,
            quarantined: 0,
        };
        match fs::read_to_string(&acked_path) {
            // u64::MAX is refused too: no seq could follow it.
            Ok(s) => match s.trim().parse::<u64>() {
                Ok(n) if n < u64::MAX => spool.acked = n,
                // Without it the daemon only forgets what the replayer holds: its Hello then
                // says so, and the replayer asks for a resync.
                _ => spool.quarantine(&acked_path)?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&acked_path)(e)),
        }
        let mut seqs = spool.seqs()?;
        if seqs.last() == Some(&u64::MAX) {
            let p = spool.path(u64::MAX);
            spool.quarantine(&p)?;
            seqs.pop();
        }
        // Neither can be u64::MAX (refused above), so the increment cannot overflow.
        spool.next_seq = spool.acked.max(seqs.last().copied().unwrap_or(0)) + 1;
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

    /// The last seq sealed into this spool (pending, acknowledged or dropped; 0: none).
    pub fn sealed(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Files quarantined since this spool was opened.
    pub fn quarantined(&self) -> u64 {
        self.quarantined
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
        self.next_seq = seq.checked_add(1).ok_or(SpoolError::SeqExhausted(seq))?;
        let framed = frame(payload)
            .filter(|f| self.depth.bytes.saturating_add(f.len() as u64) <= self.max_bytes);
        let Some(framed) = framed else {
            for s in self.seqs()? {
                let p = self.path(s);
                fs::remove_file(&p).map_err(io(&p))?;
            }
            self.depth = Depth::default();
            return Ok(Pushed::Overflow);
        };
        write_durably(&self.path(seq), &framed)?;
        self.depth.batches += 1;
        self.depth.bytes += framed.len() as u64;
        Ok(Pushed::Stored)
    }

    /// Spools the encoded parts of one batch in order, each carrying the next seq (see
    /// `convert::batch_to_wire_parts`). When one does not fit, the parts already written go
    /// with everything else pending ([`Pushed::Overflow`]), so an overflow never leaves a
    /// batch half spooled: the resync that follows restates it.
    pub fn push_parts<P: AsRef<[u8]>>(
        &mut self,
        parts: impl IntoIterator<Item = P>,
    ) -> Result<Pushed, SpoolError> {
        for part in parts {
            if self.push(part.as_ref())? == Pushed::Overflow {
                return Ok(Pushed::Overflow);
            }
        }
        Ok(Pushed::Stored)
    }

    /// Pending records after `after`, in seq order. A corrupt record is quarantined and left
    /// out, so the seqs returned then have a hole where it was.
    pub fn pending_after(&mut self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        for s in self.seqs()?.into_iter().filter(|s| *s > after) {
            let p = self.path(s);
            let bytes = fs::read(&p).map_err(io(&p))?;
            match unframe(&bytes) {
                Some(payload) => out.push((s, payload.to_vec())),
                None => {
                    self.quarantine(&p)?;
                    self.depth.batches = self.depth.batches.saturating_sub(1);
                    self.depth.bytes = self.depth.bytes.saturating_sub(bytes.len() as u64);
                }
            }
        }
        Ok(out)
    }

    /// Moves the corrupt file `path` into `quarantine/`, keeping the newest
    /// [`QUARANTINE_KEEP`] there.
    fn quarantine(&mut self, path: &Path) -> Result<(), SpoolError> {
        let dir = self.dir.join("quarantine");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record");
        // Time first, so names sort by age.
        let to = dir.join(format!("{now:039}-{name}"));
        fs::rename(path, &to).map_err(io(path))?;
        self.quarantined = self.quarantined.saturating_add(1);
        tracing::error!(
            file = %path.display(),
            moved_to = %to.display(),
            "corrupt spool file quarantined; the history it held is lost, a resync restates the model"
        );
        let mut kept: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .map(|e| e.path())
            .collect();
        kept.sort_unstable();
        let excess = kept.len().saturating_sub(QUARANTINE_KEEP);
        for old in &kept[..excess] {
            fs::remove_file(old).map_err(io(old))?;
        }
        Ok(())
    }

    /// Starts the spool over after `last`, the replayer's last seq: drops every pending
    /// record and continues at `last + 1`, even below seqs already used (the replayer never
    /// stored those). For a history that cannot follow the replayer's.
    pub fn restart_after(&mut self, last: u64) -> Result<(), SpoolError> {
        let next = last.checked_add(1).ok_or(SpoolError::SeqExhausted(last))?;
        for s in self.seqs()? {
            let p = self.path(s);
            fs::remove_file(&p).map_err(io(&p))?;
        }
        self.depth = Depth::default();
        write_durably(&self.dir.join("acked"), last.to_string().as_bytes())?;
        self.acked = last;
        self.next_seq = next;
        Ok(())
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
        // At u64::MAX, the next push reports the seqs exhausted.
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
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

    /// A spool path in a fresh directory, not made yet (the spool makes it); the directory
    /// goes when the guard drops.
    fn dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("spool");
        (tmp, d)
    }

    #[test]
    fn survives_reopen_and_drops_only_what_was_acked() {
        let (_tmp, d) = dir();
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
        let mut s = Spool::open(&d, 1 << 20).unwrap();
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
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.push(b"a").unwrap();
        s.push(b"b").unwrap();
        s.ack(2).unwrap();
        drop(s);
        assert_eq!(Spool::open(&d, 1 << 20).unwrap().next_seq(), 3);
    }

    #[test]
    fn a_full_spool_overflows_into_a_resync() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 100).unwrap();
        assert_eq!(s.push(&[0; 40]).unwrap(), Pushed::Stored);
        assert_eq!(s.push(&[0; 40]).unwrap(), Pushed::Overflow);
        assert!(s.pending_after(0).unwrap().is_empty());
        assert_eq!(s.depth(), Depth::default());
        assert_eq!(s.next_seq(), 3, "the lost seq is not reused");
    }

    #[test]
    fn an_overflow_amid_the_parts_of_a_batch_leaves_none_of_them() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 200).unwrap();
        assert_eq!(s.push_parts([[1; 30], [2; 30]]).unwrap(), Pushed::Stored);
        assert_eq!(s.sealed(), 2);
        s.ack(2).unwrap();
        // The third of four parts does not fit: the first two go too.
        let parts = [[3; 70], [4; 70], [5; 70], [6; 70]];
        assert_eq!(s.push_parts(parts).unwrap(), Pushed::Overflow);
        assert!(s.pending_after(0).unwrap().is_empty());
        assert_eq!(s.depth(), Depth::default());
        assert_eq!(
            s.next_seq(),
            6,
            "the part that did not fit used its seq; the fourth was never sealed"
        );
    }

    #[test]
    fn local_spool_is_private_and_a_loose_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let (_tmp, d) = dir();
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
    fn corrupt_records_are_quarantined_and_reading_carries_on() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for p in [b"one", b"two", b"six"] {
            s.push(p).unwrap();
        }
        let p = s.path(2);
        let mut bytes = fs::read(&p).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&p, bytes).unwrap();
        let pending = s.pending_after(0).unwrap();
        assert_eq!(
            pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 3],
            "the corrupt record leaves a hole"
        );
        assert_eq!((s.quarantined(), s.depth().batches), (1, 2));
        assert!(!p.exists());
        let moved: Vec<_> = fs::read_dir(d.join("quarantine"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(moved.len(), 1);
        assert!(moved[0].file_name().to_str().unwrap().ends_with("2.batch"));
        // Once moved, it is not met (nor counted, nor logged) again.
        assert_eq!(s.pending_after(0).unwrap().len(), 2);
        assert_eq!(s.quarantined(), 1);
    }

    #[test]
    fn quarantine_is_bounded() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for _ in 0..QUARANTINE_KEEP + 5 {
            s.push(b"x").unwrap();
            let p = s.path(s.sealed());
            fs::write(&p, b"garbage").unwrap();
            s.pending_after(0).unwrap();
        }
        assert_eq!(s.quarantined(), QUARANTINE_KEEP as u64 + 5);
        assert_eq!(
            fs::read_dir(d.join("quarantine")).unwrap().count(),
            QUARANTINE_KEEP
        );
    }

    #[test]
    fn a_corrupt_acked_file_is_quarantined_not_fatal() {
        for bad in ["garbage", "18446744073709551615"] {
            let (_tmp, d) = dir();
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("acked"), bad).unwrap();
            let s = Spool::open(&d, 1 << 20).unwrap();
            assert_eq!(
                (s.acked(), s.next_seq(), s.quarantined()),
                (0, 1, 1),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_seq_arithmetic_wraps_at_u64_max() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.ack(u64::MAX).unwrap();
        assert_eq!(s.next_seq(), u64::MAX);
        assert!(matches!(s.push(b"x"), Err(SpoolError::SeqExhausted(_))));
        assert!(matches!(
            s.restart_after(u64::MAX),
            Err(SpoolError::SeqExhausted(_))
        ));
        // A record named u64::MAX (no seq could follow it) is set aside at open.
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        s.push(b"x").unwrap();
        fs::rename(s.path(1), s.path(u64::MAX)).unwrap();
        let s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!((s.next_seq(), s.quarantined()), (1, 1));
    }

    #[test]
    fn restart_after_continues_below_used_seqs() {
        let (_tmp, d) = dir();
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for _ in 0..5 {
            s.push(b"x").unwrap();
        }
        s.restart_after(2).unwrap();
        assert_eq!(
            (s.acked(), s.next_seq(), s.depth()),
            (2, 3, Depth::default())
        );
        drop(s);
        let s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(
            (s.acked(), s.next_seq()),
            (2, 3),
            "and it survives a reopen"
        );
    }
}
