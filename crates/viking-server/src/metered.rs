//! The store as the server uses it, timed: every request's latency by
//! operation and its failures by operation and kind, into the server's
//! metrics (`viking_store_request_seconds`, `viking_store_errors_total`).
//! A decorator over any [`Store`]: the backends know nothing of it. The
//! labels are static strings, so timing a request allocates nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use viking_store::{
    Compare, KeyValue, LeaseId, Op, Result, Revision, Store, StoreError, TxnResponse, WatchStream,
};

use crate::metrics::{OpErrorLabels, OpLabels};

/// [`Store`] with each request timed.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    errors: Family<OpErrorLabels, Counter>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: &crate::metrics::Metrics) -> Self {
        MeteredStore {
            inner,
            seconds: metrics.store_seconds.clone(),
            errors: metrics.store_errors.clone(),
        }
    }

    fn done<T>(&self, op: &'static str, began: Instant, r: Result<T>) -> Result<T> {
        self.seconds
            .get_or_create(&OpLabels { op })
            .observe(began.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.errors
                .get_or_create(&OpErrorLabels { op, kind: kind(e) })
                .inc();
        }
        r
    }
}

/// A store error's kind, for its label.
fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Compacted { .. } => "compacted",
        StoreError::LeaseNotFound(_) => "lease_not_found",
        StoreError::Locked(_) => "locked",
        StoreError::Invalid(_) => "invalid",
        _ => "other",
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.done("get", t, r)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let t = Instant::now();
        let r = self.inner.get_many(keys).await;
        self.done("get_many", t, r)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.done("list", t, r)
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse> {
        let t = Instant::now();
        let r = self.inner.txn(compares, success, failure).await;
        self.done("txn", t, r)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let t = Instant::now();
        let r = self.inner.lease_grant(ttl).await;
        self.done("lease_grant", t, r)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.lease_keep_alive(lease).await;
        self.done("lease_keep_alive", t, r)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.lease_revoke(lease).await;
        self.done("lease_revoke", t, r)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let t = Instant::now();
        let r = self.inner.watch(prefix, from).await;
        self.done("watch", t, r)
    }

    async fn revision(&self) -> Result<Revision> {
        let t = Instant::now();
        let r = self.inner.revision().await;
        self.done("revision", t, r)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.done("compact", t, r)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
