//! The cluster state store: one interface, two backends.
//!
//! Everything viking knows about the cluster (floki's hosts, viking-proc,
//! viking-ps, job history, port counters, the leader) lives behind [`Store`].
//! Two backends implement it with the same meaning:
//!
//! - [`etcd::EtcdStore`]: a real etcd cluster, for multi-host clusters;
//! - [`embedded::EmbeddedStore`]: a redb file in the data directory, for a
//!   single machine, so `viking server` needs nothing else.
//!
//! The trait holds only the primitives a backend must provide (get, list,
//! transactions, leases, watch). Everything else (put, delete,
//! create-if-absent, compare-and-swap, counters, election) is written once,
//! on top of those primitives, in [`ops`] and [`election`], so both backends
//! behave identically by construction. The contract suite in
//! `tests/contract.rs` runs against both.
//!
//! Keys given to a store are relative (`proc/web`); each backend prepends the
//! cluster prefix (`/viking` by default) and strips it again on the way out.
//!
//! [`etcd::membership`] is etcd's membership API (list, add as a learner,
//! promote, remove, member status), which `viking mesh` uses to grow and
//! shrink the etcd cluster; its errors are classified like the store's.
//!
//! Architecture invariant: this crate is the only one that knows etcd or redb.

#![deny(unsafe_code)]
use std::time::Duration;

use async_trait::async_trait;

pub mod election;
pub mod embedded;
pub mod etcd;
pub mod ops;
#[cfg(feature = "testing")]
pub mod testing;

pub use election::{Election, Leadership};
pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, EtcdTls};
pub use ops::{spawn_keep_alive, KeepAlive, StoreExt};

/// A store-wide, monotonically increasing revision (etcd's meaning).
pub type Revision = i64;

/// A lease id. Keys attached to a lease disappear when the lease expires or
/// is revoked.
pub type LeaseId = i64;

/// One key with its value and revision metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the store's prefix.
    pub key: String,
    pub value: Vec<u8>,
    /// The revision at which the key was created (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key's last write happened at exactly this revision.
    ModRevision(String, Revision),
    /// The key holds exactly this value.
    Value(String, Vec<u8>),
}

/// A write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every comparison held (then the `success` ops ran, else the
    /// `failure` ops).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a put, the new key-value; for a delete, the key with an empty
    /// value and `mod_revision` set to the deletion's revision.
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A stream of changes under a prefix, in revision order, without gaps.
///
/// The events of one revision (one transaction) travel together: a reader
/// of [`WatchStream::next_revision`] never sees half of a transaction.
/// Backends reconnect after transient errors and resume from the revision
/// after the last one delivered; an error that cannot be recovered from (e.g.
/// the requested revision was compacted) is delivered once and ends the
/// stream.
pub struct WatchStream {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<WatchEvent>, StoreError>>,
    /// The rest of a revision [`WatchStream::next`] began.
    rest: std::collections::VecDeque<WatchEvent>,
}

/// The sending half of a [`WatchStream`]: each item is every event of one
/// revision under the prefix (never empty), or the error that ends it.
pub type WatchSender = tokio::sync::mpsc::Sender<Result<Vec<WatchEvent>, StoreError>>;

impl WatchStream {
    /// A stream and its sender, with room for `buffer` revisions.
    pub fn channel(buffer: usize) -> (WatchSender, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        (
            tx,
            Self {
                rx,
                rest: Default::default(),
            },
        )
    }

    /// The next change; `None` when the store is gone.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(ev) = self.rest.pop_front() {
                return Some(Ok(ev));
            }
            match self.rx.recv().await? {
                Ok(batch) => self.rest = batch.into(),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Every change of the next revision (what is left of it, after
    /// [`WatchStream::next`] took some); `None` when the store is gone.
    pub async fn next_revision(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        if !self.rest.is_empty() {
            return Some(Ok(self.rest.drain(..).collect()));
        }
        loop {
            match self.rx.recv().await? {
                Ok(batch) if batch.is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}

/// `events`, in revision order, cut into one batch per revision.
pub fn by_revision(events: impl IntoIterator<Item = WatchEvent>) -> Vec<Vec<WatchEvent>> {
    let mut out: Vec<Vec<WatchEvent>> = Vec::new();
    for ev in events {
        match out.last_mut() {
            Some(b) if b.last().is_some_and(|l| l.revision() == ev.revision()) => b.push(ev),
            _ => out.push(vec![ev]),
        }
    }
    out
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("the data directory is in use by another viking server: {0}")]
    Locked(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("store i/o error: {0}")]
    Io(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How many keys one read of [`Store::get_many`] carries (etcd refuses a
/// transaction of more than 128 operations by default).
pub const GET_MANY_CHUNK: usize = 64;

/// The primitives every backend provides. See the crate docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Several keys at once, each `None` when absent, in the order asked
    /// (etcd: one read-only transaction per [`GET_MANY_CHUNK`] keys, so a
    /// server reading its own jobs' records sends one request, not one per
    /// record).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }

    /// Every key under `prefix`, sorted by key, with the revision the
    /// listing was read at (start a watch at `revision + 1` to follow on).
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;

    /// An atomic transaction: if every comparison holds, apply `success`,
    /// else apply `failure`.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse>;

    /// Grant a lease that expires `ttl` after its last keep-alive.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Refresh a lease once. Fails with [`StoreError::LeaseNotFound`] if it
    /// already expired.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Revoke a lease now, deleting its keys.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()>;

    /// Follow every change under `prefix` from revision `from` (inclusive).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    /// The store's current revision.
    async fn revision(&self) -> Result<Revision>;

    /// Forget the history before `revision`: every key keeps its current
    /// value, but a watch or a read at an older revision is refused as
    /// [`StoreError::Compacted`] from then on. Compacting at or below a
    /// revision already compacted changes nothing; a revision beyond the
    /// store's current one is [`StoreError::Invalid`]. etcd's history
    /// grows with every write until compacted (the reconciler's leader does
    /// it, keeping `--compact-window`); the embedded store keeps only a
    /// bounded window in memory and drops what is older than `revision`.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// A short name of the backend, for logs and `viking hosts`.
    fn backend(&self) -> &'static str;
}
