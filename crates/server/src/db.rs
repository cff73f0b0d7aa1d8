//! The store, called from async code: every call runs on a blocking thread.

use std::sync::Arc;

use clawfleet_store::{Store, StoreError};

/// A cheap handle on the store for async callers.
#[derive(Clone, Debug)]
pub(crate) struct Db(Arc<Store>);

impl Db {
    pub(crate) fn new(store: Store) -> Db {
        Db(Arc::new(store))
    }

    /// Runs `f` against the store on a blocking thread.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.expect("store calls do not panic")
    }
}
