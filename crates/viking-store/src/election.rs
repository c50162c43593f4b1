//! Leader election, written once on top of the [`Store`] primitives.
//!
//! This module owns the election protocol: the leader is whoever holds the
//! key `election/<name>`, created-if-absent and attached to the candidate's
//! lease. Losers watch the key and retry when it is deleted (resignation,
//! lease revoked or expired). Exactly one candidate can hold the key at a
//! time, so there is at most one leader; when the leader's lease dies its key
//! disappears and a waiting candidate takes over.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::{Compare, EventKind, KeyValue, LeaseId, Op, Result, Revision, Store, StoreError};

/// The key prefix under which elections live.
pub const ELECTION_PREFIX: &str = "election/";

/// One named election.
#[derive(Clone)]
pub struct Election {
    store: Arc<dyn Store>,
    key: String,
}

/// Proof of leadership, returned by [`Election::campaign`].
/// What one attempt at the key came to.
enum Attempt {
    Won(Leadership),
    /// Another candidate holds it, as read at this revision.
    Held(Revision),
    /// Taken when tried, gone when read.
    Vacant,
}

pub struct Leadership {
    store: Arc<dyn Store>,
    key: String,
    value: String,
    lease: LeaseId,
    revision: Revision,
}

impl Election {
    /// An election named `name` (the key is `election/<name>`).
    pub fn new(store: Arc<dyn Store>, name: &str) -> Self {
        Self {
            store,
            key: format!("{ELECTION_PREFIX}{name}"),
        }
    }

    /// The key this election uses.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Block until this candidate is the leader. `candidate_value`
    /// identifies the candidate (what [`Election::leader`] returns); the
    /// leadership lasts as long as `lease` (keep it alive, e.g. with
    /// [`crate::ops::spawn_keep_alive`]).
    ///
    /// If the key already holds this very candidate on this very lease
    /// (e.g. a retried campaign), the existing leadership is returned.
    pub async fn campaign(&self, candidate_value: &str, lease: LeaseId) -> Result<Leadership> {
        loop {
            match self.attempt(candidate_value, lease).await? {
                Attempt::Won(l) => return Ok(l),
                // Deleted in between: try again right away.
                Attempt::Vacant => continue,
                Attempt::Held(revision) => self.wait_deleted(revision + 1).await?,
            }
        }
    }

    /// Block until there is no leader (at once when there is none). A
    /// candidate waits here before it takes a lease to campaign with: a
    /// lease kept alive only to wait is a request per second per candidate
    /// for nothing.
    pub async fn vacant(&self) -> Result<()> {
        loop {
            let (current, revision) = self.read().await?;
            if current.is_none() {
                return Ok(());
            }
            self.wait_deleted(revision + 1).await?;
        }
    }

    /// One attempt: lead now if nobody does (or this very candidate does,
    /// on this very lease), else `None` at once.
    pub async fn try_campaign(
        &self,
        candidate_value: &str,
        lease: LeaseId,
    ) -> Result<Option<Leadership>> {
        Ok(match self.attempt(candidate_value, lease).await? {
            Attempt::Won(l) => Some(l),
            Attempt::Vacant | Attempt::Held(_) => None,
        })
    }

    /// Create the key for this candidate if it is absent; if it is taken,
    /// read it (with a revision to watch from).
    async fn attempt(&self, candidate_value: &str, lease: LeaseId) -> Result<Attempt> {
        let resp = self
            .store
            .txn(
                vec![Compare::Absent(self.key.clone())],
                vec![Op::Put {
                    key: self.key.clone(),
                    value: candidate_value.as_bytes().to_vec(),
                    lease: Some(lease),
                }],
                vec![],
            )
            .await?;
        if resp.succeeded {
            return Ok(Attempt::Won(self.leadership(
                candidate_value,
                lease,
                resp.revision,
            )));
        }
        let (current, revision) = self.read().await?;
        Ok(match current {
            None => Attempt::Vacant,
            Some(kv) if kv.value == candidate_value.as_bytes() && kv.lease == Some(lease) => {
                Attempt::Won(self.leadership(candidate_value, lease, kv.mod_revision))
            }
            Some(_) => Attempt::Held(revision),
        })
    }

    /// The current leader's value, if there is a leader.
    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .store
            .get(&self.key)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    fn leadership(&self, value: &str, lease: LeaseId, revision: Revision) -> Leadership {
        Leadership {
            store: self.store.clone(),
            key: self.key.clone(),
            value: value.to_string(),
            lease,
            revision,
        }
    }

    /// The key (if present) and the revision it was read at.
    async fn read(&self) -> Result<(Option<KeyValue>, Revision)> {
        read_exact(self.store.as_ref(), &self.key).await
    }

    /// Wait until the key is deleted, watching from `from`.
    async fn wait_deleted(&self, from: Revision) -> Result<()> {
        let mut stream = match self.store.watch(&self.key, from).await {
            Ok(s) => s,
            // History gone: just re-check the key from scratch.
            Err(StoreError::Compacted { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        loop {
            match stream.next().await {
                Some(Ok(ev)) if ev.kv.key == self.key && ev.kind == EventKind::Delete => {
                    return Ok(())
                }
                Some(Ok(_)) => {}
                // Error or end of stream: let the caller re-check the key.
                Some(Err(e)) => {
                    tracing::debug!(key = %self.key, error = %e, "election watch failed; re-checking");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(());
                }
                None => return Err(StoreError::Unavailable("store closed".to_string())),
            }
        }
    }
}

impl Leadership {
    /// This leader's value.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The lease the leadership is attached to.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// The revision at which this leadership started.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Step down: delete the key if (and only if) it is still ours. Returns
    /// whether it was still ours.
    pub async fn resign(self) -> Result<bool> {
        let resp = self
            .store
            .txn(
                vec![Compare::ModRevision(self.key.clone(), self.revision)],
                vec![Op::Delete {
                    key: self.key.clone(),
                }],
                vec![],
            )
            .await?;
        Ok(resp.succeeded)
    }

    /// Whether the key is still ours right now.
    pub async fn is_leader(&self) -> Result<bool> {
        let kv = self.store.get(&self.key).await?;
        Ok(kv.is_some_and(|kv| kv.mod_revision == self.revision))
    }

    /// Resolves when this leadership is lost: the key was deleted (lease
    /// expired or revoked, resignation) or rewritten by someone else.
    /// Store errors are retried with backoff; owners should also watch their
    /// lease keep-alive (see [`crate::ops::KeepAlive::lost`]), since a store
    /// that cannot be reached cannot confirm the loss.
    pub async fn lost(&self) {
        // 50 ms doubling up to 1 s, for as long as it takes.
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .without_max_times()
            .build();
        let mut from = self.revision + 1;
        loop {
            match self.watch_until_lost(from).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "leadership watch failed; retrying");
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(1))).await;
                    // Re-read the key with a fresh revision to watch from.
                    match read_exact(self.store.as_ref(), &self.key).await {
                        Ok((Some(kv), rev)) if kv.mod_revision == self.revision => from = rev + 1,
                        Ok(_) => return,
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Watch the key from `from`; Ok when the leadership is gone.
    async fn watch_until_lost(&self, from: Revision) -> Result<()> {
        let mut stream = self.store.watch(&self.key, from).await?;
        loop {
            match stream.next().await {
                Some(Ok(ev)) if ev.kv.key == self.key => {
                    if ev.kind == EventKind::Delete || ev.kv.mod_revision != self.revision {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Unavailable("store closed".to_string())),
            }
        }
    }
}

/// Read exactly `key` (not its prefix siblings) with the revision of the
/// read, so a watch can follow on from `revision + 1`.
async fn read_exact(store: &dyn Store, key: &str) -> Result<(Option<KeyValue>, Revision)> {
    let (kvs, revision) = store.list(key).await?;
    Ok((kvs.into_iter().find(|kv| kv.key == key), revision))
}
