//! Derived operations, written once on top of the [`Store`] primitives.
//!
//! This module owns everything a caller needs beyond the raw primitives:
//! put, delete, create-if-absent, compare-and-swap on a key's revision, an
//! atomic counter, and a background lease keep-alive ([`spawn_keep_alive`]).
//! Because they are built only from [`Store::get`] and [`Store::txn`] (and
//! the lease primitives), both backends behave identically by construction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Compare, LeaseId, Op, Result, Revision, Store, StoreError};

/// Convenience operations available on every [`Store`] (including
/// `Arc<dyn Store>` and `&dyn Store`).
#[async_trait]
pub trait StoreExt {
    /// Write `value` at `key` unconditionally; returns the write's revision.
    async fn put(&self, key: &str, value: impl Into<Vec<u8>> + Send) -> Result<Revision>;

    /// Write `value` at `key`, attached to `lease`; returns the revision.
    async fn put_with_lease(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: LeaseId,
    ) -> Result<Revision>;

    /// Delete `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Create `key` only if it does not exist; returns whether it was
    /// created.
    async fn create(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: Option<LeaseId>,
    ) -> Result<bool>;

    /// Write `value` at `key` only if the key's last write happened at
    /// `expected_mod_revision` (0 means "the key must be absent"); returns
    /// whether the write happened.
    async fn cas(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: impl Into<Vec<u8>> + Send,
    ) -> Result<bool>;

    /// Atomically increment the decimal counter at `key` and return its new
    /// value. The first value is 1; concurrent callers always get distinct
    /// values.
    async fn incr(&self, key: &str) -> Result<u64>;
}

#[async_trait]
impl<S: Store + ?Sized> StoreExt for S {
    async fn put(&self, key: &str, value: impl Into<Vec<u8>> + Send) -> Result<Revision> {
        let op = Op::Put {
            key: key.to_string(),
            value: value.into(),
            lease: None,
        };
        Ok(self.txn(vec![], vec![op], vec![]).await?.revision)
    }

    async fn put_with_lease(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: LeaseId,
    ) -> Result<Revision> {
        let op = Op::Put {
            key: key.to_string(),
            value: value.into(),
            lease: Some(lease),
        };
        Ok(self.txn(vec![], vec![op], vec![]).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self
            .txn(
                vec![Compare::Exists(key.to_string())],
                vec![Op::Delete {
                    key: key.to_string(),
                }],
                vec![],
            )
            .await?;
        Ok(resp.succeeded)
    }

    async fn create(
        &self,
        key: &str,
        value: impl Into<Vec<u8>> + Send,
        lease: Option<LeaseId>,
    ) -> Result<bool> {
        let resp = self
            .txn(
                vec![Compare::Absent(key.to_string())],
                vec![Op::Put {
                    key: key.to_string(),
                    value: value.into(),
                    lease,
                }],
                vec![],
            )
            .await?;
        Ok(resp.succeeded)
    }

    async fn cas(
        &self,
        key: &str,
        expected_mod_revision: Revision,
        value: impl Into<Vec<u8>> + Send,
    ) -> Result<bool> {
        let compare = if expected_mod_revision == 0 {
            Compare::Absent(key.to_string())
        } else {
            Compare::ModRevision(key.to_string(), expected_mod_revision)
        };
        let resp = self
            .txn(
                vec![compare],
                vec![Op::Put {
                    key: key.to_string(),
                    value: value.into(),
                    lease: None,
                }],
                vec![],
            )
            .await?;
        Ok(resp.succeeded)
    }

    async fn incr(&self, key: &str) -> Result<u64> {
        // After a lost race: a short pause, growing, with jitter, so a
        // crowd of incrementers does not spin in lockstep.
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_micros(100))
            .with_max_delay(Duration::from_millis(2))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let (current, mod_revision) = match self.get(key).await? {
                None => (0u64, 0),
                Some(kv) => {
                    let text = std::str::from_utf8(&kv.value).map_err(|e| {
                        StoreError::Invalid(format!("counter {key:?} is not UTF-8: {e}"))
                    })?;
                    let n = text.trim().parse::<u64>().map_err(|e| {
                        StoreError::Invalid(format!(
                            "counter {key:?} holds {text:?}, not a number: {e}"
                        ))
                    })?;
                    (n, kv.mod_revision)
                }
            };
            let next = current.checked_add(1).ok_or_else(|| {
                StoreError::Invalid(format!("counter {key:?} overflowed at {current}"))
            })?;
            if self.cas(key, mod_revision, next.to_string()).await? {
                return Ok(next);
            }
            tokio::time::sleep(pauses.next().unwrap_or(Duration::from_millis(2))).await;
        }
    }
}

/// Checks shared by both backends: keys are non-empty and a branch of a
/// transaction writes each key at most once (etcd rejects duplicates).
pub(crate) fn validate_txn(compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<()> {
    for c in compares {
        let key = match c {
            Compare::Absent(k) | Compare::Exists(k) => k,
            Compare::ModRevision(k, _) | Compare::Value(k, _) => k,
        };
        validate_key(key)?;
    }
    for branch in [success, failure] {
        let mut seen = HashSet::new();
        for op in branch {
            let key = op_key(op);
            validate_key(key)?;
            if !seen.insert(key) {
                return Err(StoreError::Invalid(format!(
                    "key {key:?} is written twice in one transaction branch"
                )));
            }
        }
    }
    Ok(())
}

pub(crate) fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key".to_string()));
    }
    Ok(())
}

pub(crate) fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
    }
}

/// A lease kept alive in the background by [`spawn_keep_alive`].
///
/// Dropping it (or calling [`KeepAlive::abort`]) stops the refreshes; the
/// lease then expires after its TTL unless it is revoked.
pub struct KeepAlive {
    lease: LeaseId,
    task: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl KeepAlive {
    /// The lease being kept alive.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether the lease is known to be lost (expired, revoked, or not
    /// refreshed for a whole TTL).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost. Never resolves while it is alive.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // An error means the task ended without reporting a loss (it was
        // aborted): the lease is no longer maintained, so treat it as lost.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// A receiver that turns `true` when the lease is lost.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stop refreshing the lease.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Refresh `lease` (granted with `ttl`) every `ttl / 3` in a background
/// task until the returned handle is dropped or aborted, or the lease is
/// lost. Transient errors are retried quickly; the lease is reported lost
/// when the store says it no longer exists, or when no refresh succeeded
/// for a whole `ttl`.
pub fn spawn_keep_alive(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration) -> KeepAlive {
    let (tx, rx) = watch::channel(false);
    let period = (ttl / 3).max(Duration::from_millis(50));
    let task = tokio::spawn(async move {
        let mut last_ok = Instant::now();
        let mut next = Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            match store.lease_keep_alive(lease).await {
                Ok(()) => {
                    last_ok = Instant::now();
                    next = last_ok + period;
                }
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(lease, "lease lost: it expired or was revoked");
                    let _ = tx.send(true);
                    return;
                }
                Err(e) => {
                    if last_ok.elapsed() >= ttl {
                        tracing::warn!(lease, error = %e, "lease lost: not refreshed for a whole ttl");
                        let _ = tx.send(true);
                        return;
                    }
                    tracing::debug!(lease, error = %e, "lease keep-alive failed, retrying");
                    next = Instant::now() + (period / 4).max(Duration::from_millis(20));
                }
            }
        }
    });
    KeepAlive {
        lease,
        task,
        lost: rx,
    }
}
