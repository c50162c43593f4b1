//! A store that counts the requests each server makes, by method and by the
//! kind of key (its first path segment), so `scale` can say what one
//! placement costs etcd and who asks. Shared by every hollow server of the
//! process; a benchmark's instrument, not part of viking.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use viking_store::{
    Compare, KeyValue, LeaseId, Op, Result, Revision, Store, TxnResponse, WatchStream,
};

/// Requests by (method, key kinds).
#[derive(Default)]
pub struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, what: String) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(what).or_default() += 1;
        }
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The differences between two snapshots, largest first.
pub fn since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The kind of a key: its first segment (`ps`, `proc`, `hosts`...).
fn kind(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

fn kinds<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let mut k: Vec<&str> = keys.map(kind).collect();
    k.sort_unstable();
    k.dedup();
    k.join(",")
}

pub struct Counting {
    pub inner: Arc<dyn Store>,
    pub counts: Arc<Counts>,
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.counts.add(format!("get {}", kind(key)));
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        self.counts.add(format!(
            "get_many {}",
            kinds(keys.iter().map(String::as_str))
        ));
        self.inner.get_many(keys).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.counts.add(format!("list {}", kind(prefix)));
        self.inner.list(prefix).await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse> {
        let written = kinds(success.iter().map(|o| match o {
            Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
        }));
        let compared = kinds(compares.iter().map(|c| match c {
            Compare::Absent(k) | Compare::Exists(k) | Compare::ModRevision(k, _) => k.as_str(),
            Compare::Value(k, _) => k.as_str(),
        }));
        self.counts.add(format!("txn {written} if {compared}"));
        self.inner.txn(compares, success, failure).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.counts.add("lease_grant".into());
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.counts.add("lease_keep_alive".into());
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.counts.add("lease_revoke".into());
        self.inner.lease_revoke(lease).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.counts.add(format!("watch {}", kind(prefix)));
        self.inner.watch(prefix, from).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.counts.add("revision".into());
        self.inner.revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.counts.add("compact".into());
        self.inner.compact(revision).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
