//! Waking engines on other processes: on PostgreSQL, every transaction
//! that makes work ready notifies the `keel_flow` channel with the queue's
//! name, and a [`FlowListener`] receives it, so an idle engine claims at
//! once instead of at its next poll. Polling stays as the fallback (a
//! notification can be missed while a listener reconnects).

use sqlx::postgres::PgListener;

use crate::backend::{Pool, Store};
use crate::error::StoreError;

/// The channel workflow notifications go to.
const CHANNEL: &str = "keel_flow";

/// Receives notice of ready work from every process sharing the database.
#[derive(Debug)]
pub struct FlowListener(PgListener);

impl FlowListener {
    /// Waits for the next notice; the queue whose work is ready (empty for
    /// keel's own steps). Reconnects by itself after a lost connection.
    pub async fn recv(&mut self) -> Result<String, StoreError> {
        let notice = self
            .0
            .recv()
            .await
            .map_err(StoreError::db("listen for ready workflow steps"))?;
        Ok(notice.payload().to_owned())
    }
}

impl Store {
    /// A listener for ready workflow work, on PostgreSQL; `None` on SQLite,
    /// where one process does all the work and wakes itself.
    pub async fn listen_flow(&self) -> Result<Option<FlowListener>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(StoreError::db("listen for ready workflow steps"))?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(StoreError::db("listen for ready workflow steps"))?;
        Ok(Some(FlowListener(listener)))
    }
}
