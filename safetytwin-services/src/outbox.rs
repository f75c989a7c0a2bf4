//! The bounded queue between a task that produces a server stream's messages and the
//! connection that sends them: at most [`Budget::messages`] messages and [`Budget::bytes`]
//! bytes wait in it, so a client that stops reading holds a bounded amount of the replayer's
//! memory.
//!
//! A producer that sets its own pace (history read from the store, a state cut into parts)
//! [`Outbox::send`]s and waits for room. A producer that must keep up with something it does
//! not control (live batches, which the broadcast ring keeps for every receiver until it has
//! read them) [`Outbox::offer`]s instead: past the budget the consumer is cut off with
//! `RESOURCE_EXHAUSTED`, which it sees before anything still queued, and the queue is freed
//! as soon as the stream is polled again (or dropped).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use safetytwin_proto::wire::Wire;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::Status;

/// How much may wait for one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Messages.
    pub messages: usize,
    /// Encoded bytes; one message larger than this still goes, alone.
    pub bytes: usize,
}

/// What `Twin.Subscribe` may queue for one subscriber: 64 batches or 16 MiB.
pub const SUBSCRIBER: Budget = Budget {
    messages: 64,
    bytes: 16 << 20,
};

/// What the parts of one large answer (`GetStateParts`, `DiffParts`) may queue: they are
/// produced at the consumer's pace, a few ahead.
pub const PARTS: Budget = Budget {
    messages: 4,
    bytes: 4 << 20,
};

/// The consumer is gone (its stream was dropped): stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the consumer went away")]
pub struct Gone;

/// The producer's end.
pub struct Outbox<T> {
    tx: mpsc::Sender<Result<(T, OwnedSemaphorePermit), Status>>,
    bytes: Arc<Semaphore>,
    budget: Budget,
    cut_off: Arc<Mutex<Option<Status>>>,
}

/// The consumer's end: the response stream.
pub struct Inbox<T> {
    rx: mpsc::Receiver<Result<(T, OwnedSemaphorePermit), Status>>,
    cut_off: Arc<Mutex<Option<Status>>>,
    done: bool,
}

/// A queue within `budget`.
pub fn outbox<T: Wire>(budget: Budget) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel(budget.messages.max(1));
    let cut_off = Arc::default();
    let bytes = Arc::new(Semaphore::new(permits(budget.bytes)));
    (
        Outbox {
            tx,
            bytes,
            budget,
            cut_off: Arc::clone(&cut_off),
        },
        Inbox {
            rx,
            cut_off,
            done: false,
        },
    )
}

/// Byte permits, within what a semaphore can count and what one acquire can take.
fn permits(bytes: usize) -> usize {
    bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

impl<T: Wire> Outbox<T> {
    /// The permits `message` holds while it waits: its size, at most the whole budget.
    fn cost(&self, message: &T) -> u32 {
        let cost = permits(message.wire_len()).min(permits(self.budget.bytes));
        u32::try_from(cost).unwrap_or(u32::MAX)
    }

    /// Queues `message`, waiting for room.
    pub async fn send(&self, message: T) -> Result<(), Gone> {
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(&message))
            .await
            .map_err(|_| Gone)?;
        self.tx.send(Ok((message, permit))).await.map_err(|_| Gone)
    }

    /// Queues `message` if it fits; otherwise cuts the consumer off with `RESOURCE_EXHAUSTED`
    /// (and `Err(Gone)`: the producer stops).
    pub fn offer(&self, message: T) -> Result<(), Gone> {
        let cost = self.cost(&message);
        let queued = self
            .bytes
            .clone()
            .try_acquire_many_owned(cost)
            .ok()
            .and_then(|permit| self.tx.try_reserve().ok().map(|slot| (slot, permit)));
        match queued {
            Some((slot, permit)) => {
                slot.send(Ok((message, permit)));
                Ok(())
            }
            None if self.tx.is_closed() => Err(Gone),
            None => {
                let Budget { messages, bytes } = self.budget;
                self.fail(crate::status::fell_behind(&format!(
                    "more than {messages} messages or {} KiB waiting for it",
                    bytes >> 10
                )));
                Err(Gone)
            }
        }
    }

    /// Ends the stream with `status`, ahead of anything still queued.
    pub fn fail(&self, status: Status) {
        *self.cut_off.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        // Wakes the consumer if it waits on an empty queue; the queue being full is fine,
        // the status is looked at first anyway.
        let _ = self.tx.try_send(Err(Status::cancelled("")));
    }

    /// True once the consumer dropped its stream.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T> Stream for Inbox<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let failed = self
            .cut_off
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(status) = failed {
            self.done = true;
            // Frees what was queued now rather than when the connection goes.
            self.rx.close();
            while self.rx.try_recv().is_ok() {}
            return Poll::Ready(Some(Err(status)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok((message, permit)))) => {
                drop(permit);
                Poll::Ready(Some(Ok(message)))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// A message of about `bytes` bytes.
    fn message(bytes: usize) -> String {
        "x".repeat(bytes)
    }

    #[tokio::test]
    async fn offers_past_the_count_or_the_bytes_cut_the_consumer_off_first_thing() {
        let budget = Budget {
            messages: 4,
            bytes: 1000,
        };
        let (out, mut inbox) = outbox::<String>(budget);
        for _ in 0..4 {
            out.offer(message(10)).unwrap();
        }
        assert_eq!(out.offer(message(10)), Err(Gone));
        let first = inbox.next().await.unwrap().unwrap_err();
        assert_eq!(first.code(), tonic::Code::ResourceExhausted);
        assert!(inbox.next().await.is_none());
        assert!(out.is_closed(), "the queue was not freed");

        let (out, mut inbox) = outbox::<String>(budget);
        out.offer(message(600)).unwrap();
        assert_eq!(out.offer(message(600)), Err(Gone), "bytes over the budget");
        assert!(inbox.next().await.unwrap().is_err());

        // One message larger than the whole budget still goes, alone.
        let (out, mut inbox) = outbox::<String>(budget);
        out.offer(message(5000)).unwrap();
        assert_eq!(inbox.next().await.unwrap().unwrap().len(), 5000);
        out.offer(message(5000)).unwrap();
    }

    #[tokio::test]
    async fn sends_wait_for_room_and_stop_when_the_consumer_goes() {
        let (out, mut inbox) = outbox::<String>(Budget {
            messages: 2,
            bytes: 100,
        });
        let producer = tokio::spawn(async move {
            for i in 0..10 {
                if out.send(format!("{i}")).await.is_err() {
                    return i;
                }
            }
            10
        });
        for i in 0..5 {
            assert_eq!(inbox.next().await.unwrap().unwrap(), format!("{i}"));
        }
        drop(inbox);
        let stopped_at = producer.await.unwrap();
        assert!((5..10).contains(&stopped_at), "stopped at {stopped_at}");
    }
}
