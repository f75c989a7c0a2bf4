//! With a store that several replayers share (PostgreSQL), every batch any of them stores
//! reaches this one's subscribers and applier: the store's notices, in commit order, become
//! the `live` broadcast, this replayer's own batches included (ingest then publishes nothing
//! itself: two publishers could reorder a host's seqs, and a subscriber drops a seq that comes
//! after a later one). With the embedded store ingest publishes and nothing runs here.
//!
//! Each host's batches are published in seq order from the last one published: a notice lost
//! while the listening connection was down is made good by the next notice of that host, or by
//! the look at every host that follows each reconnect.

use std::{collections::HashMap, sync::Arc};

use safetytwin_model::Batch;
use safetytwin_store::{Notice, Store, StoreError};
use tokio::sync::{broadcast, mpsc};

/// Notices waiting for the relay; past it the listening thread waits (PostgreSQL queues them).
const BACKLOG: usize = 1024;

/// Starts relaying when other processes may append to `store`; then ingest must not publish.
pub(crate) fn start(
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    if !store.listen(move |n| tx.blocking_send(n).is_ok()) {
        return None;
    }
    Some(tokio::spawn(relay(store, live, rx)))
}

async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|e| Err(StoreError::Corrupt(format!("relay task failed: {e}"))))
}

async fn relay(
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    mut notices: mpsc::Receiver<Notice>,
) {
    // Per host, the last seq published or stored here. `None` until the first look at every
    // host: what was stored before this replayer started is history, not news.
    let mut published: Option<HashMap<String, u64>> = None;
    while let Some(notice) = notices.recv().await {
        let news = match notice {
            Notice::Stored { host, seq, .. } => vec![(host, seq)],
            Notice::Missed => match blocking(&store, |s| s.hosts()).await {
                Ok(hosts) => {
                    if published.is_none() {
                        published = Some(hosts.into_iter().collect());
                        continue;
                    }
                    hosts
                }
                Err(e) => {
                    tracing::error!("relay: cannot list hosts: {e}");
                    continue;
                }
            },
        };
        let Some(published) = published.as_mut() else {
            continue;
        };
        for (host, seq) in news {
            let from = published.get(&host).copied().unwrap_or(0);
            for s in from + 1..=seq {
                let h = host.clone();
                match blocking(&store, move |st| st.batch(&h, s)).await {
                    Ok(Some(batch)) => {
                        // No receiver (no subscriber, no applier) is not an error.
                        let _ = live.send(Arc::new(batch));
                        published.insert(host.clone(), s);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(%host, seq = s, "relay: cannot read the batch: {e}");
                        break;
                    }
                }
            }
        }
    }
}
