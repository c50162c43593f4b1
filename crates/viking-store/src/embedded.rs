//! The embedded backend: the whole store in one redb file.
//!
//! This module owns [`EmbeddedStore`], used when viking runs on a single
//! machine so `viking server` needs nothing else.
//!
//! Why redb: it is durable and crash-safe (every commit is fsynced and its
//! copy-on-write B-trees never overwrite live pages, so a crash leaves either
//! the old or the new state), pure Rust (no C dependency to build or ship),
//! and single-writer, which fits one server process; it also takes a file
//! lock, which gives us "one viking server per data directory" for free.
//!
//! Layout (all keys carry the cluster prefix):
//! - table `kv`: key -> create_revision, mod_revision, lease, value;
//! - table `meta`: `revision` -> the store-wide revision counter;
//! - table `leases`: lease id -> ttl in milliseconds.
//!
//! Writes are serialized (one redb write transaction at a time, under a
//! mutex that also orders the publication of watch events). Lease deadlines
//! live in memory only: after a restart every persisted lease gets a fresh
//! deadline of now + ttl. A background task expires leases; it holds only a
//! `Weak` reference and stops once the store is dropped. Watches are served
//! from an in-memory history of recent events plus a broadcast channel;
//! revisions older than that history (including anything before this
//! process opened the file) are reported as [`StoreError::Compacted`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, DatabaseError, ReadableTable, Table, TableDefinition};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::ops::validate_txn;
use crate::{
    Compare, EventKind, KeyValue, LeaseId, Op, Result, Revision, Store, StoreError, TxnResponse,
    WatchEvent, WatchSender, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
const REVISION_KEY: &str = "revision";

/// How many recent events are kept in memory for watches.
pub const HISTORY_LEN: usize = 10_000;
/// How often the background task looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered batches per live watcher before it must catch up from history.
const BROADCAST_CAPACITY: usize = 1024;
/// Buffered events per watch stream.
const WATCH_BUFFER: usize = 1024;

/// The store in a local redb file. See the module docs.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    path: PathBuf,
    /// The cluster prefix, with a trailing `/`.
    prefix: String,
    /// Serializes writes and orders event publication; also guards the
    /// watch history.
    writer: Mutex<WriterState>,
    /// Live leases and their deadlines.
    leases: Mutex<HashMap<LeaseId, LeaseState>>,
    /// Every committed write's events (relative keys), one batch per
    /// revision.
    events: broadcast::Sender<Arc<Vec<WatchEvent>>>,
}

struct WriterState {
    /// The last committed revision.
    revision: Revision,
    /// Recent events, in revision order.
    history: VecDeque<WatchEvent>,
    /// The oldest revision whose events are all in `history`.
    first_retained: Revision,
}

#[derive(Clone, Copy)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave redb inconsistent (the
    // transaction is aborted), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Io(format!("{what}: {e}"))
}

/// Per-transaction write context.
struct WriteCtx<'a, 't> {
    kv: &'a mut Table<'t, &'static str, &'static [u8]>,
    leases: &'a mut Table<'t, i64, u64>,
    /// The revision this write gets if it changes any key.
    revision: Revision,
    /// Events produced (relative keys).
    events: Vec<WatchEvent>,
    /// Whether anything was written (keys or leases).
    dirty: bool,
    prefix: &'a str,
}

impl WriteCtx<'_, '_> {
    fn get(&self, full_key: &str) -> Result<Option<KeyValue>> {
        let v = self
            .kv
            .get(full_key)
            .map_err(io_err("reading a key"))?
            .map(|g| decode(strip(self.prefix, full_key), g.value()));
        v.transpose()
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<()> {
        if let Some(id) = lease {
            if self
                .leases
                .get(id)
                .map_err(io_err("reading a lease"))?
                .is_none()
            {
                return Err(StoreError::LeaseNotFound(id));
            }
        }
        let full = format!("{}{key}", self.prefix);
        let create_revision = self
            .get(&full)?
            .map_or(self.revision, |kv| kv.create_revision);
        let bytes = encode(create_revision, self.revision, lease.unwrap_or(0), value);
        self.kv
            .insert(full.as_str(), bytes.as_slice())
            .map_err(io_err("writing a key"))?;
        self.dirty = true;
        self.events.push(WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: self.revision,
                lease,
            },
        });
        Ok(())
    }

    fn delete_full(&mut self, full: &str) -> Result<bool> {
        let existed = self
            .kv
            .remove(full)
            .map_err(io_err("deleting a key"))?
            .is_some();
        if existed {
            self.dirty = true;
            self.events.push(WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: strip(self.prefix, full).to_string(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: self.revision,
                    lease: None,
                },
            });
        }
        Ok(existed)
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        let key = match c {
            Compare::Absent(k) | Compare::Exists(k) => k,
            Compare::ModRevision(k, _) | Compare::Value(k, _) => k,
        };
        let kv = self.get(&format!("{}{key}", self.prefix))?;
        Ok(match c {
            Compare::Absent(_) => kv.is_none(),
            Compare::Exists(_) => kv.is_some(),
            // Like etcd: an absent key has mod_revision 0.
            Compare::ModRevision(_, r) => kv.map_or(0, |kv| kv.mod_revision) == *r,
            // Like etcd: a value comparison on an absent key is false.
            Compare::Value(_, v) => kv.is_some_and(|kv| kv.value == *v),
        })
    }

    /// Delete the lease and every key attached to it.
    fn revoke(&mut self, id: LeaseId) -> Result<bool> {
        let existed = self
            .leases
            .remove(id)
            .map_err(io_err("deleting a lease"))?
            .is_some();
        if !existed {
            return Ok(false);
        }
        self.dirty = true;
        let mut doomed = Vec::new();
        for entry in self.kv.iter().map_err(io_err("scanning keys"))? {
            let (k, v) = entry.map_err(io_err("scanning keys"))?;
            if lease_of(v.value()) == id {
                doomed.push(k.value().to_string());
            }
        }
        for full in doomed {
            self.delete_full(&full)?;
        }
        Ok(true)
    }
}

fn strip<'k>(prefix: &str, full: &'k str) -> &'k str {
    full.strip_prefix(prefix).unwrap_or(full)
}

const HEADER: usize = 24;

/// The store file holds every job's environment (its secrets): make it, or
/// make it again, readable by its owner only (0600) before redb opens it
/// (redb itself creates files 0666 less the umask).
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io =
        |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let mode = f
        .metadata()
        .map_err(|e| io("reading", e))?
        .permissions()
        .mode();
    if mode & 0o777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("making private", e))?;
    }
    Ok(())
}

fn encode(create: Revision, modr: Revision, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modr.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn field(bytes: &[u8], i: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
    i64::from_le_bytes(b)
}

fn lease_of(bytes: &[u8]) -> LeaseId {
    if bytes.len() < HEADER {
        return 0;
    }
    field(bytes, 2)
}

fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    if bytes.len() < HEADER {
        return Err(StoreError::Io(format!(
            "corrupt record for key {key:?}: {} bytes",
            bytes.len()
        )));
    }
    let lease = field(bytes, 2);
    Ok(KeyValue {
        key: key.to_string(),
        value: bytes[HEADER..].to_vec(),
        create_revision: field(bytes, 0),
        mod_revision: field(bytes, 1),
        lease: (lease != 0).then_some(lease),
    })
}

impl EmbeddedStore {
    /// Open (or create) the store file at `path`; keys are stored under
    /// `prefix`. Must be called inside a tokio runtime (it starts the lease
    /// expiry task). Fails with [`StoreError::Locked`] if the file is
    /// already open, by this or another process.
    pub fn open(path: &Path, prefix: &str) -> Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Invalid("EmbeddedStore::open must be called inside a tokio runtime".into())
        })?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Io(format!("creating directory {}: {e}", parent.display()))
            })?;
        }
        private_file(path)?;
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(format!(
                "{} is already open by another store",
                path.display()
            )),
            other => StoreError::Io(format!("opening {}: {other}", path.display())),
        })?;

        // Create the tables and the revision counter on first open; load
        // the leases.
        let (revision, persisted_leases) = {
            let txn = db.begin_write().map_err(io_err("starting a write"))?;
            let result = {
                let mut meta = txn.open_table(META).map_err(io_err("opening meta"))?;
                txn.open_table(KV).map_err(io_err("opening kv"))?;
                let leases = txn.open_table(LEASES).map_err(io_err("opening leases"))?;
                let current = meta
                    .get(REVISION_KEY)
                    .map_err(io_err("reading the revision"))?
                    .map(|g| g.value());
                let revision = match current {
                    Some(r) => r,
                    None => {
                        // Like etcd, an empty store is at revision 1.
                        meta.insert(REVISION_KEY, 1)
                            .map_err(io_err("writing the revision"))?;
                        1
                    }
                };
                let mut ls = Vec::new();
                for entry in leases.iter().map_err(io_err("reading leases"))? {
                    let (id, ttl) = entry.map_err(io_err("reading leases"))?;
                    ls.push((id.value(), Duration::from_millis(ttl.value())));
                }
                (revision, ls)
            };
            txn.commit().map_err(io_err("committing"))?;
            result
        };

        let now = Instant::now();
        let leases = persisted_leases
            .into_iter()
            .map(|(id, ttl)| {
                (
                    id,
                    LeaseState {
                        ttl,
                        deadline: now + ttl,
                    },
                )
            })
            .collect();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let shared = Arc::new(Shared {
            db,
            path: path.to_path_buf(),
            prefix,
            writer: Mutex::new(WriterState {
                revision,
                history: VecDeque::new(),
                first_retained: revision + 1,
            }),
            leases: Mutex::new(leases),
            events,
        });
        runtime.spawn(reap_leases(Arc::downgrade(&shared)));
        tracing::info!(path = %path.display(), revision, "embedded store opened");
        Ok(Arc::new(Self { shared }))
    }

    /// The file backing this store.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn blocking<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Shared) -> Result<R> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Io(format!("store worker failed: {e}")))?
    }
}

impl Shared {
    /// Run `f` in one redb write transaction (serialized with every other
    /// write), commit if it changed anything, then publish its events.
    /// Returns `f`'s result and the store's revision afterwards.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut WriteCtx<'_, '_>) -> Result<R>,
    ) -> Result<(R, Revision)> {
        let mut w = lock(&self.writer);
        let txn = self.db.begin_write().map_err(io_err("starting a write"))?;
        let outcome = {
            let mut kv = txn.open_table(KV).map_err(io_err("opening kv"))?;
            let mut leases = txn.open_table(LEASES).map_err(io_err("opening leases"))?;
            let mut ctx = WriteCtx {
                kv: &mut kv,
                leases: &mut leases,
                revision: w.revision + 1,
                events: Vec::new(),
                dirty: false,
                prefix: &self.prefix,
            };
            match f(&mut ctx) {
                Ok(r) => Ok((r, ctx.events, ctx.dirty)),
                Err(e) => Err(e),
            }
        };
        let (result, events, dirty) = match outcome {
            Ok(o) => o,
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a failed store write");
                }
                return Err(e);
            }
        };
        if !dirty {
            txn.abort().map_err(io_err("aborting a read-only write"))?;
            return Ok((result, w.revision));
        }
        let new_revision = if events.is_empty() {
            w.revision
        } else {
            w.revision + 1
        };
        if new_revision != w.revision {
            let mut meta = txn.open_table(META).map_err(io_err("opening meta"))?;
            meta.insert(REVISION_KEY, new_revision)
                .map_err(io_err("writing the revision"))?;
        }
        txn.commit().map_err(io_err("committing"))?;
        w.revision = new_revision;
        if !events.is_empty() {
            w.history.extend(events.iter().cloned());
            while w.history.len() > HISTORY_LEN {
                let Some(old) = w.history.pop_front() else {
                    break;
                };
                // Drop whole revisions so `first_retained` stays exact.
                let rev = old.revision();
                while w.history.front().is_some_and(|e| e.revision() == rev) {
                    w.history.pop_front();
                }
                w.first_retained = rev + 1;
            }
            // No receivers is fine.
            let _ = self.events.send(Arc::new(events));
        }
        Ok((result, w.revision))
    }

    fn read_kv(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(io_err("starting a read"))?;
        let table = txn.open_table(KV).map_err(io_err("opening kv"))?;
        let full = format!("{}{key}", self.prefix);
        let v = table
            .get(full.as_str())
            .map_err(io_err("reading a key"))?
            .map(|g| decode(key, g.value()));
        v.transpose()
    }

    fn read_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let txn = self.db.begin_read().map_err(io_err("starting a read"))?;
        let table = txn.open_table(KV).map_err(io_err("opening kv"))?;
        let meta = txn.open_table(META).map_err(io_err("opening meta"))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(io_err("reading the revision"))?
            .map_or(1, |g| g.value());
        let full = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        for entry in table
            .range(full.as_str()..)
            .map_err(io_err("listing keys"))?
        {
            let (k, v) = entry.map_err(io_err("listing keys"))?;
            let k = k.value();
            if !k.starts_with(full.as_str()) {
                break;
            }
            out.push(decode(strip(&self.prefix, k), v.value())?);
        }
        Ok((out, revision))
    }

    /// Expire every lease whose deadline has passed.
    fn reap(&self) -> Result<()> {
        let now = Instant::now();
        let expired: Vec<LeaseId> = lock(&self.leases)
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        self.write(|ctx| {
            for id in &expired {
                ctx.revoke(*id)?;
            }
            Ok(())
        })?;
        let mut leases = lock(&self.leases);
        for id in &expired {
            leases.remove(id);
        }
        tracing::debug!(?expired, "leases expired");
        Ok(())
    }
}

async fn reap_leases(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else {
            return; // the store is gone
        };
        let due = {
            let now = Instant::now();
            lock(&s.leases).values().any(|l| l.deadline <= now)
        };
        if !due {
            continue;
        }
        match tokio::task::spawn_blocking(move || s.reap()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "expiring leases failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "lease expiry worker failed; will retry"),
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        crate::ops::validate_key(key)?;
        self.shared.read_kv(key)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.shared.read_prefix(prefix)
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse> {
        validate_txn(&compares, &success, &failure)?;
        let (succeeded, revision) = self
            .blocking(move |s| {
                s.write(|ctx| {
                    let mut ok = true;
                    for c in &compares {
                        if !ctx.compare(c)? {
                            ok = false;
                            break;
                        }
                    }
                    for op in if ok { &success } else { &failure } {
                        match op {
                            Op::Put { key, value, lease } => ctx.put(key, value, *lease)?,
                            Op::Delete { key } => {
                                ctx.delete_full(&format!("{}{key}", ctx.prefix))?;
                            }
                        }
                    }
                    Ok(ok)
                })
            })
            .await?;
        Ok(TxnResponse {
            succeeded,
            revision,
        })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("lease ttl must be positive".into()));
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let (id, _) = self
            .blocking(move |s| {
                s.write(|ctx| {
                    let id = loop {
                        let candidate = (rand::random::<u64>() >> 1) as i64;
                        if candidate == 0 {
                            continue;
                        }
                        let taken = ctx
                            .leases
                            .get(candidate)
                            .map_err(io_err("reading a lease"))?
                            .is_some();
                        if !taken {
                            break candidate;
                        }
                    };
                    ctx.leases
                        .insert(id, ttl_ms)
                        .map_err(io_err("writing a lease"))?;
                    ctx.dirty = true;
                    Ok(id)
                })
            })
            .await?;
        lock(&self.shared.leases).insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        Ok(id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut leases = lock(&self.shared.leases);
        match leases.get_mut(&lease) {
            Some(l) if l.deadline > Instant::now() => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let (existed, _) = self
            .blocking(move |s| s.write(|ctx| ctx.revoke(lease)))
            .await?;
        lock(&self.shared.leases).remove(&lease);
        if existed {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let prefix = prefix.to_string();
        // Under the writer lock no write can commit, so subscribing and
        // copying the history here leaves neither a gap nor an overlap.
        let (live, replay, from) = {
            let w = lock(&self.shared.writer);
            let from = if from <= 0 { w.revision + 1 } else { from };
            if from < w.first_retained {
                return Err(StoreError::Compacted {
                    requested: from,
                    oldest: w.first_retained,
                });
            }
            let live = self.shared.events.subscribe();
            let replay: Vec<WatchEvent> = w
                .history
                .iter()
                .filter(|e| e.revision() >= from && e.kv.key.starts_with(&prefix))
                .cloned()
                .collect();
            (live, replay, from)
        };
        let (tx, stream) = WatchStream::channel(WATCH_BUFFER);
        tokio::spawn(forward_events(
            Arc::downgrade(&self.shared),
            prefix,
            from,
            live,
            replay,
            tx,
        ));
        Ok(stream)
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(lock(&self.shared.writer).revision)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut w = lock(&self.shared.writer);
        if revision > w.revision {
            return Err(StoreError::Invalid(format!(
                "cannot compact at revision {revision}: the store is at {}",
                w.revision
            )));
        }
        if revision <= w.first_retained {
            return Ok(());
        }
        while w.history.front().is_some_and(|e| e.revision() < revision) {
            w.history.pop_front();
        }
        w.first_retained = revision;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// Feed one watch: the replayed history first, then live events, skipping
/// anything at or below the last revision seen. A watcher that falls too far
/// behind the broadcast channel catches up from the history, or gets
/// [`StoreError::Compacted`] if the history has moved past it.
async fn forward_events(
    shared: Weak<Shared>,
    prefix: String,
    from: Revision,
    mut live: broadcast::Receiver<Arc<Vec<WatchEvent>>>,
    replay: Vec<WatchEvent>,
    tx: WatchSender,
) {
    let mut last = from - 1;
    for batch in crate::by_revision(replay) {
        last = batch.last().map_or(last, |ev| ev.revision());
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
    }
    loop {
        match live.recv().await {
            Ok(batch) => {
                // One write's events, all of one revision.
                let mine: Vec<WatchEvent> = batch
                    .iter()
                    .filter(|ev| ev.revision() > last && ev.kv.key.starts_with(&prefix))
                    .cloned()
                    .collect();
                if !mine.is_empty() && tx.send(Ok(mine)).await.is_err() {
                    return;
                }
                if let Some(ev) = batch.last() {
                    last = last.max(ev.revision());
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let Some(s) = shared.upgrade() else { return };
                // Under the writer lock: resubscribe and copy what was
                // missed, up to the revision of the resubscription.
                let caught_up = {
                    let w = lock(&s.writer);
                    if last + 1 < w.first_retained {
                        Err(StoreError::Compacted {
                            requested: last + 1,
                            oldest: w.first_retained,
                        })
                    } else {
                        live = s.events.subscribe();
                        let replay: Vec<WatchEvent> = w
                            .history
                            .iter()
                            .filter(|e| e.revision() > last && e.kv.key.starts_with(&prefix))
                            .cloned()
                            .collect();
                        Ok((replay, w.revision))
                    }
                };
                drop(s);
                let (replay, resubscribed_at) = match caught_up {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for batch in crate::by_revision(replay) {
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
                last = last.max(resubscribed_at);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
