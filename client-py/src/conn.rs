//! One process's connection to the daemon: the gRPC channel and, opened on
//! the first read, the [`Session`] that delivers reads as shared-memory
//! leases.
//!
//! A session ends when the daemon restarts or the connection breaks; every
//! fetch then fails with `SessionClosed`. The next fetch opens a new one, and
//! a fetch that failed that way is retried once on the new session (reads
//! are idempotent), so a restarted daemon costs one failed call at most.

use std::ops::Range;

use sluice_client::{Client, ConnectOptions, Error, Fetched, Result, Session, SessionOptions};
use tokio::sync::Mutex;

/// A connection of this process.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    session: Mutex<Option<Session>>,
}

impl Conn {
    pub(crate) async fn connect(address: &str, options: ConnectOptions) -> Result<Self> {
        Ok(Conn {
            client: Client::connect_with(address, options).await?,
            session: Mutex::new(None),
        })
    }

    /// The session, opened if there is none yet.
    pub(crate) async fn session(&self) -> Result<Session> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let session = self.client.session(SessionOptions::default()).await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forgets `ended` if it is still the current session.
    async fn forget(&self, ended: &Session) {
        let mut slot = self.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|s| s.session_id() == ended.session_id())
        {
            *slot = None;
        }
    }

    /// Fetches `uri` (or a range of it) through the session.
    pub(crate) async fn fetch(&self, uri: &str, range: Option<Range<u64>>) -> Result<Fetched> {
        let session = self.session().await?;
        match session.fetch(uri, range.clone()).await {
            Err(Error::SessionClosed { .. }) => {
                self.forget(&session).await;
                self.session().await?.fetch(uri, range).await
            }
            other => other,
        }
    }
}
