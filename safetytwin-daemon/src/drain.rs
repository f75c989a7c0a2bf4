//! The ring buffer drained on a thread of its own.
//!
//! The folding loop cuts a batch every interval: it reads every dirty file and encodes the batch
//! (the first one restates the whole state). Were the ring drained on that same thread, a storm
//! during a long cut would fill the ring and lose events. This thread drains the ring whenever a
//! probe wakes it (the ring half full) or every `interval`, decodes the records and hands them
//! to the loop in bounded chunks. When the loop is slower than the events for longer than the
//! queue lasts, the thread waits, the ring fills and the probes count what they drop: the
//! accounting `received + dropped == produced` holds however it ends.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use crate::{
    clock::BootClock,
    events::{self, DecodeError, HostEvent},
};

/// Records gathered before the thread waits for the loop to take them.
pub const MAX_CHUNK: usize = 8192;
/// Chunks queued for the loop at most. With [`MAX_CHUNK`], the records held beyond the ring
/// are bounded by 9 × 8 Ki = 72 Ki events.
pub const QUEUED_CHUNKS: usize = 8;

/// A decoded record, or why it could not be.
pub type Record = Result<HostEvent, DecodeError>;

/// The draining thread and the chunks it hands over.
pub struct Drainer {
    /// Chunks of records in ring order; `None` once the thread has drained for the last time.
    pub chunks: mpsc::Receiver<Vec<Record>>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Drainer {
    /// Starts draining `ring`, counting every record read in `received`.
    pub fn start(
        ring: RingBuf<MapData>,
        clock: BootClock,
        interval: Duration,
        received: Arc<AtomicU64>,
    ) -> std::io::Result<Drainer> {
        // SAFETY: eventfd has no preconditions; the fd is owned below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        let thread_wake = wake.try_clone()?;
        let (tx, chunks) = mpsc::channel(QUEUED_CHUNKS);
        let thread = std::thread::Builder::new()
            .name("ring-drain".into())
            .spawn(move || run(ring, clock, interval, received, thread_wake, tx))?;
        Ok(Drainer {
            chunks,
            wake,
            thread: Some(thread),
        })
    }

    /// Asks the thread to drain once more and stop; call it after the probes are detached, so
    /// that last drain leaves nothing behind. The loop then reads `chunks` to its end.
    pub fn finish(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.finish();
        // The thread may wait on a full queue: let it go.
        self.chunks.close();
        while self.chunks.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut ring: RingBuf<MapData>,
    clock: BootClock,
    interval: Duration,
    received: Arc<AtomicU64>,
    wake: OwnedFd,
    tx: mpsc::Sender<Vec<Record>>,
) {
    let timeout = interval.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut chunk = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: ring.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds; a signal or an error only ends the wait early.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        // Read before the drain: a stop asked for after the probes were detached is followed by
        // one complete drain.
        let stopping = fds[1].revents & libc::POLLIN != 0;
        while let Some(item) = ring.next() {
            chunk.push(events::decode(&item, &clock));
            drop(item);
            received.fetch_add(1, Ordering::Relaxed);
            // Full: wait for the loop; the ring fills meanwhile and the probes count drops.
            if chunk.len() >= MAX_CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return;
            }
        }
        if stopping {
            if !chunk.is_empty() {
                let _ = tx.blocking_send(chunk);
            }
            return;
        }
        if !chunk.is_empty() {
            // A busy loop leaves the queue full: keep gathering rather than wait, so each
            // queued chunk is a large one, not one per wakeup.
            match tx.try_send(std::mem::take(&mut chunk)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(back)) => chunk = back,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}
