//! The event hub: events are persisted first, then broadcast to live subscribers (attach,
//! the router, the dashboard, command waiters). A stream that asks for history reads the
//! store and then follows the broadcast, skipping what it already sent; a subscriber that
//! falls behind the broadcast re-reads the store from where it was, so no event is missed.
//!
//! **Invariant:** events are broadcast in id order. Every store write that creates events
//! goes through [`Hub::write`], which holds one lock across the write and the broadcast.

use std::sync::{Arc, Mutex};

use clawfleet_proto::event::Event;
use clawfleet_store::{EventFilter, NewEvent, Store, StoreError};
use tokio::sync::{broadcast, mpsc};

use crate::db::Db;

const PAGE: usize = 1000;

/// Persists and fans out events.
#[derive(Clone, Debug)]
pub(crate) struct Hub {
    db: Db,
    tx: broadcast::Sender<Arc<Event>>,
    order: Arc<Mutex<()>>,
}

/// What a stream wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamRequest {
    pub filter: EventFilter,
    /// Replay stored events with ids above this first; `None`: live events only.
    pub since: Option<u64>,
    /// Keep following live events (else stop after the history).
    pub follow: bool,
}

fn matches(filter: &EventFilter, e: &Event) -> bool {
    filter.fleet.as_ref().is_none_or(|f| *f == e.fleet)
        && filter.agent.is_none_or(|a| Some(a) == e.agent)
        && filter.injection_id.as_ref().is_none_or(|i| Some(i) == e.injection_id.as_ref())
}

impl Hub {
    pub(crate) fn new(db: Db) -> Hub {
        let (tx, _) = broadcast::channel(16 * 1024);
        Hub { db, tx, order: Arc::new(Mutex::new(())) }
    }

    /// Runs a store write that creates events, and broadcasts them, in id order.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<(T, Vec<Event>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<(T, Vec<Event>), StoreError> + Send + 'static,
    {
        let (tx, order) = (self.tx.clone(), self.order.clone());
        self.db
            .run(move |s| {
                let _in_order = order.lock().unwrap_or_else(|p| p.into_inner());
                let (out, events) = f(s)?;
                for e in &events {
                    let _ = tx.send(Arc::new(e.clone()));
                }
                Ok((out, events))
            })
            .await
    }

    /// Persists events of the control plane's own and broadcasts them.
    pub(crate) async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError> {
        Ok(self.write(move |s| Ok(((), s.append(events)?))).await?.1)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// A stream of events; it ends when the receiver is dropped (or after history, unless following).
    pub(crate) fn stream(&self, req: StreamRequest) -> mpsc::Receiver<Result<Arc<Event>, StoreError>> {
        let (out, rx) = mpsc::channel(256);
        let mut live = self.tx.subscribe();
        let db = self.db.clone();
        tokio::spawn(async move {
            let mut last = match req.since {
                Some(since) => since,
                None => match db.run(|s| s.last_event_id()).await {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                },
            };
            // History (and catching up after lagging), from the store.
            loop {
                if !catch_up(&db, &req.filter, &mut last, &out).await {
                    return;
                }
                if !req.follow {
                    return;
                }
                loop {
                    match live.recv().await {
                        Ok(e) => {
                            if e.id <= last {
                                continue;
                            }
                            last = e.id;
                            if matches(&req.filter, &e) && out.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        rx
    }
}

/// Sends stored events after `last` that match; returns `false` if the receiver is gone.
async fn catch_up(db: &Db, filter: &EventFilter, last: &mut u64, out: &mpsc::Sender<Result<Arc<Event>, StoreError>>) -> bool {
    loop {
        let (f, after) = (filter.clone(), *last);
        match db.run(move |s| s.events_after(&f, after, PAGE)).await {
            Ok(page) => {
                let n = page.len();
                for e in page {
                    *last = e.id;
                    if out.send(Ok(Arc::new(e))).await.is_err() {
                        return false;
                    }
                }
                if n < PAGE {
                    return true;
                }
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return false;
            }
        }
    }
}
