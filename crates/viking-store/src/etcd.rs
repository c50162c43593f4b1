//! The etcd backend, for multi-host clusters.
//!
//! This module owns [`EtcdStore`]: the mapping of the [`Store`] primitives
//! onto etcd v3 (via `etcd-client`), the key prefix, error mapping, and the
//! fault tolerance around it:
//!
//! - every endpoint is handed to the client, which balances requests over
//!   them; a request that lands on a dead member fails, so idempotent
//!   requests (reads, lease keep-alives, grants, revokes) are retried a few
//!   times with a short backoff, and transactions are retried only when the
//!   error shows the request never reached etcd (connection refused, member
//!   without a leader, ...);
//! - requests require a leader, so a member cut off from the majority fails
//!   fast instead of hanging;
//! - a watch reconnects after an error and resumes at the revision after the
//!   last one it delivered, so no change is lost or repeated; a compacted
//!   start revision is reported as [`StoreError::Compacted`].
//!
//! - a client certificate renewed while the process runs
//!   ([`EtcdStore::set_identity`]): a new client is connected with it and
//!   used for every request from then on; watch streams opened before go
//!   on over the old connection until they reconnect.
//!
//! It also owns the classification of etcd's errors (`Failure`), which
//! [`membership`] (etcd's member list, add, promote, remove) shares.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions, WatchResponse,
};

pub mod membership;

use crate::ops::validate_txn;
use crate::{
    Compare, EventKind, KeyValue, LeaseId, Op, Result, Revision, Store, StoreError, TxnResponse,
    WatchEvent, WatchSender, WatchStream,
};

/// How long to keep retrying a request that failed transiently.
const RETRY_FOR: Duration = Duration::from_secs(6);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const WATCH_BUFFER: usize = 1024;

/// The largest value etcd accepts in one request (its default
/// `--max-request-bytes`, 1.5 MiB): no stored record is larger.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;
/// How many keys one page of a list asks for at most.
pub const DEFAULT_PAGE_KEYS: i64 = 64;
/// The largest gRPC message the client decodes: a full page of the largest
/// values, with room for the keys and headers. tonic's default (4 MiB)
/// would refuse a page of a few large records.
const MAX_MESSAGE_BYTES: usize = DEFAULT_PAGE_KEYS as usize * MAX_VALUE_BYTES + (4 << 20);

// gRPC status codes (tonic::Code discriminants).
const CODE_CANCELLED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;
const CODE_DEADLINE_EXCEEDED: i32 = 4;
const CODE_NOT_FOUND: i32 = 5;
const CODE_ABORTED: i32 = 10;
const CODE_OUT_OF_RANGE: i32 = 11;
const CODE_UNAVAILABLE: i32 = 14;

/// A store on an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    /// Shared by every clone, replaced whole by [`EtcdStore::set_identity`].
    client: std::sync::Arc<std::sync::RwLock<Client>>,
    /// The cluster prefix, with a trailing `/`.
    prefix: String,
    endpoints: Vec<String>,
    /// How many keys one page of a list asks for.
    page_keys: i64,
    /// Each lease's keep-alive stream, kept open between refreshes: a
    /// refresh is one message on it, not a new stream (at a thousand
    /// hosts, two leases each, a stream per refresh was most of etcd's
    /// idle work).
    /// With each, when it was last used: one not used for
    /// [`KEEPER_IDLE`] (its lease's keep-alive task was dropped without a
    /// revoke) is closed.
    keepers: Arc<std::sync::Mutex<HashMap<LeaseId, (std::time::Instant, KeeperSlot)>>>,
}

type KeeperSlot = Arc<tokio::sync::Mutex<Option<Keeper>>>;

/// How long an unused keep-alive stream stays open.
const KEEPER_IDLE: Duration = Duration::from_secs(600);

/// An open keep-alive stream of one lease.
type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// How long a refresh on an open stream may take before the stream is
/// given up and a new one is opened (as long as a request may take).
const KEEP_ALIVE_ANSWER: Duration = Duration::from_secs(5);

/// What a failed etcd request says, read from the error's type and its
/// gRPC status code. The store's retries, its error mapping and the
/// [`membership`] calls all decide from this one classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// etcd did not answer: no connection, a connection lost, or the
    /// client's own deadline (a status the client made itself).
    NoAnswer,
    /// etcd answered that it cannot serve the request now (UNAVAILABLE: no
    /// leader, a cluster not healthy enough for a membership change, a
    /// learner asked, ...).
    Unavailable,
    /// etcd cut the call short (CANCELLED, UNKNOWN, DEADLINE_EXCEEDED,
    /// ABORTED): it may or may not have been applied.
    Interrupted,
    /// The request is malformed (bad arguments or URI, OUT_OF_RANGE).
    Invalid,
    /// Any other refusal (NOT_FOUND, FAILED_PRECONDITION, ...).
    Refused,
}

impl Failure {
    /// Whether asking again (the same or another member) may succeed.
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            Failure::NoAnswer | Failure::Unavailable | Failure::Interrupted
        )
    }
}

/// Classify an etcd error; see [`Failure`].
pub(crate) fn failure(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => Failure::NoAnswer,
        E::InvalidArgs(_) | E::InvalidUri(_) => Failure::Invalid,
        E::GRpcStatus(s) => {
            // A status the client made itself (from a connect error, a lost
            // connection or its own timeout) carries that cause as its
            // source; a status etcd sent has none.
            let from_etcd = std::error::Error::source(s).is_none();
            match s.code() as i32 {
                CODE_UNAVAILABLE if from_etcd => Failure::Unavailable,
                CODE_UNAVAILABLE
                | CODE_CANCELLED
                | CODE_DEADLINE_EXCEEDED
                | CODE_UNKNOWN
                | CODE_ABORTED
                    if !from_etcd =>
                {
                    Failure::NoAnswer
                }
                CODE_CANCELLED | CODE_UNKNOWN | CODE_DEADLINE_EXCEEDED | CODE_ABORTED => {
                    Failure::Interrupted
                }
                CODE_OUT_OF_RANGE => Failure::Invalid,
                _ => Failure::Refused,
            }
        }
        _ => Failure::Refused,
    }
}

/// Whether retrying an idempotent request may help.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        // The keep-alive stream ended before answering: etcd-client reports
        // it as a bare message, without a status.
        etcd_client::Error::WatchError(m) => m.contains("failed to create lease keeper"),
        _ => failure(e).is_transient(),
    }
}

/// Whether the error proves the request never reached (or was rejected
/// before being applied by) etcd, so even a non-idempotent request may be
/// retried. The code alone cannot say: UNAVAILABLE is also what etcd
/// answers to a proposal that timed out (and may still be applied) and what
/// the client reports for a connection lost mid-request, so the message
/// tells the safe cases apart.
fn never_applied(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) => true,
        E::GRpcStatus(s) if s.code() as i32 == CODE_UNAVAILABLE => {
            let m = s.message().to_ascii_lowercase();
            [
                "connect",
                "not ready",
                "no leader",
                "dns error",
                "connection refused",
            ]
            .iter()
            .any(|p| m.contains(p))
        }
        _ => false,
    }
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(s) => {
            s.code() as i32 == CODE_NOT_FOUND && s.message().contains("lease not found")
        }
        _ => false,
    }
}

/// Map an etcd error to a [`StoreError`], with context.
pub(crate) fn map_err(what: &str, e: etcd_client::Error) -> StoreError {
    match failure(&e) {
        Failure::Invalid => StoreError::Invalid(format!("etcd {what}: {e}")),
        _ => StoreError::Unavailable(format!("etcd {what}: {e}")),
    }
}

/// The pauses between tries of a failed call, and between reconnects of
/// a watch: 50 ms doubling up to 800 ms, for as long as the caller goes on.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(BACKOFF_START)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times()
}

/// Run `f` until it succeeds, fails with an error `retryable` rejects, or
/// [`RETRY_FOR`] has passed.
async fn retry<T, F, Fut>(
    what: &str,
    retryable: fn(&etcd_client::Error) -> bool,
    f: F,
) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    f.retry(backoff().with_total_delay(Some(RETRY_FOR)))
        .when(|e| retryable(e) && tokio::time::Instant::now() < deadline)
        .notify(|e, pause| tracing::debug!(error = %e, "etcd {what} failed, retrying in {pause:?}"))
        .await
}

/// What an etcd client shows and trusts over TLS (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificates (the cluster's CA).
    pub ca_pem: String,
    /// This client's certificate and key, signed by the same CA.
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdTls { .. }")
    }
}

impl EtcdStore {
    /// Connect to the etcd cluster at `endpoints` (e.g.
    /// `http://10.0.0.1:2379`); keys live under `prefix`. Fails if no
    /// endpoint answers within a few seconds.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_tls(endpoints, prefix, None).await
    }

    /// Connect over TLS (`https://` endpoints), trusting only the CA in
    /// `tls` and showing its client certificate: an etcd that requires
    /// client certificates (`--client-cert-auth`) answers only such clients.
    pub async fn connect_tls(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints given".into()));
        }
        let plain = endpoints.iter().any(|e| e.starts_with("http://"));
        if tls.is_some() && plain {
            return Err(StoreError::Invalid(
                "etcd endpoints must be https:// when a client certificate is given".into(),
            ));
        }
        let client = Self::client_for(endpoints, tls).await?;
        let store = Self {
            client: std::sync::Arc::new(std::sync::RwLock::new(client)),
            prefix: format!("{}/", prefix.trim_end_matches('/')),
            endpoints: endpoints.to_vec(),
            page_keys: DEFAULT_PAGE_KEYS,
            keepers: Arc::default(),
        };
        // The client connects lazily: check that the cluster answers.
        store.revision().await.map_err(|e| {
            StoreError::Unavailable(format!("etcd at {endpoints:?} does not answer: {e}"))
        })?;
        Ok(store)
    }

    /// Show a new client certificate (a renewed one) from now on: a client
    /// is connected with it and, once etcd answered it, replaces the current
    /// one for every clone of this store. Fails, changing nothing, if etcd
    /// does not answer the new client.
    pub async fn set_identity(&self, tls: &EtcdTls) -> Result<()> {
        let client = Self::client_for(&self.endpoints, Some(tls)).await?;
        let kv = client.kv_client();
        retry("get", is_transient, || {
            let mut kv = kv.clone();
            async move { kv.get("\0", None).await.map(|_| ()) }
        })
        .await
        .map_err(|e| map_err("etcd with the renewed client certificate", e))?;
        *self
            .client
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        // Streams opened with the old certificate are opened again.
        self.keepers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// The slot of a lease's keep-alive stream.
    fn keeper(&self, lease: LeaseId) -> KeeperSlot {
        let now = std::time::Instant::now();
        let mut keepers = self
            .keepers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keepers.contains_key(&lease) {
            keepers.retain(|_, (used, _)| now.duration_since(*used) < KEEPER_IDLE);
        }
        let (used, slot) = keepers
            .entry(lease)
            .or_insert_with(|| (now, KeeperSlot::default()));
        *used = now;
        slot.clone()
    }

    fn forget_keeper(&self, lease: LeaseId) {
        self.keepers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&lease);
    }

    /// The current client (a cheap clone of its channel).
    fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn client_for(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Client> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(t) = tls {
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem))
                    .identity(etcd_client::Identity::from_pem(&t.cert_pem, &t.key_pem)),
            );
        }
        Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| map_err(&format!("connect to {endpoints:?}"), e))
    }

    /// Ask for at most `keys` keys per page of a list (1 to
    /// [`DEFAULT_PAGE_KEYS`], the default): a list is read page after page
    /// at one revision, so no answer outgrows the message limit however
    /// many keys a prefix holds. Tests set a small page to cross pages.
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.page_keys = i64::try_from(keys)
            .unwrap_or(DEFAULT_PAGE_KEYS)
            .clamp(1, DEFAULT_PAGE_KEYS);
        self
    }

    /// A KV client whose message limits fit a full page of the largest
    /// records.
    fn kv(&self) -> etcd_client::KvClient {
        self.client()
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The endpoints this store was given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn convert_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let full = std::str::from_utf8(kv.key())
            .map_err(|e| StoreError::Io(format!("etcd returned a non-UTF-8 key: {e}")))?;
        let key = full.strip_prefix(&self.prefix).unwrap_or(full).to_string();
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    fn convert_event(&self, ev: &etcd_client::Event) -> Result<Option<WatchEvent>> {
        let Some(kv) = ev.kv() else { return Ok(None) };
        let mut kv = self.convert_kv(kv)?;
        let kind = match ev.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => {
                kv.value.clear();
                kv.create_revision = 0;
                kv.lease = None;
                EventKind::Delete
            }
        };
        Ok(Some(WatchEvent { kind, kv }))
    }

    /// Open an etcd watch from `from` and wait for its creation; a
    /// compacted start revision gives [`StoreError::Compacted`].
    async fn open_watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<(etcd_client::WatchStream, Vec<WatchResponse>)> {
        let full = self.full(prefix);
        let (stream, first) = retry("watch", is_transient, || {
            let mut client = self
                .client()
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            let full = full.clone();
            async move {
                let mut stream = client
                    .watch(
                        full,
                        Some(WatchOptions::new().with_prefix().with_start_revision(from)),
                    )
                    .await?;
                let first = stream.message().await?;
                Ok((stream, first))
            }
        })
        .await
        .map_err(|e| map_err(&format!("watch {prefix:?} from {from}"), e))?;
        let Some(first) = first else {
            return Err(StoreError::Unavailable(format!(
                "etcd watch {prefix:?} from {from}: stream closed at creation"
            )));
        };
        let mut pending = Vec::new();
        if first.canceled() {
            if first.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: from,
                    oldest: first.compact_revision(),
                });
            }
            return Err(StoreError::Unavailable(format!(
                "etcd watch {prefix:?} from {from} canceled: {}",
                first.cancel_reason()
            )));
        }
        if !first.events().is_empty() {
            pending.push(first);
        }
        Ok((stream, pending))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        crate::ops::validate_key(key)?;
        let full = self.full(key);
        let resp = retry("get", is_transient, || {
            let mut kv = self.kv();
            let full = full.clone();
            async move { kv.get(full, None).await }
        })
        .await
        .map_err(|e| map_err(&format!("get {key:?}"), e))?;
        resp.kvs().first().map(|kv| self.convert_kv(kv)).transpose()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(crate::GET_MANY_CHUNK) {
            for k in chunk {
                crate::ops::validate_key(k)?;
            }
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::get(self.full(k), None))
                .collect();
            // A transaction of reads alone: etcd serves it as a read, at one
            // revision, without a write to its log.
            let resp = retry("get_many", is_transient, || {
                let mut kv = self.kv();
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|e| map_err("get_many", e))?;
            let mut got = 0;
            for r in resp.op_responses() {
                if let etcd_client::TxnOpResponse::Get(g) = r {
                    out.push(g.kvs().first().map(|kv| self.convert_kv(kv)).transpose()?);
                    got += 1;
                }
            }
            if got != chunk.len() {
                return Err(StoreError::Unavailable(format!(
                    "get_many: etcd answered {got} reads of {}",
                    chunk.len()
                )));
            }
        }
        Ok(out)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        // Page after page, each at the revision of the first, so the
        // listing is one consistent snapshot however many pages it takes.
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        let mut start = full.clone().into_bytes();
        let mut revision: Revision = 0;
        let mut kvs = Vec::new();
        loop {
            let resp = retry("list", is_transient, || {
                let mut kv = self.kv();
                let start = start.clone();
                let mut opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(self.page_keys);
                if revision > 0 {
                    opts = opts.with_revision(revision);
                }
                async move { kv.get(start, Some(opts)).await }
            })
            .await
            .map_err(|e| map_err(&format!("list {prefix:?}"), e))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            // etcd sorts a range by key (byte order) by default.
            for kv in resp.kvs() {
                kvs.push(self.convert_kv(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((kvs, revision))
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnResponse> {
        validate_txn(&compares, &success, &failure)?;
        let cmps: Vec<EtcdCompare> = compares
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => {
                    EtcdCompare::create_revision(self.full(k), CompareOp::Equal, 0)
                }
                Compare::Exists(k) => {
                    EtcdCompare::create_revision(self.full(k), CompareOp::Greater, 0)
                }
                Compare::ModRevision(k, r) => {
                    EtcdCompare::mod_revision(self.full(k), CompareOp::Equal, *r)
                }
                Compare::Value(k, v) => {
                    EtcdCompare::value(self.full(k), CompareOp::Equal, v.clone())
                }
            })
            .collect();
        let to_ops = |ops: &[Op]| -> Vec<TxnOp> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => TxnOp::put(
                        self.full(key),
                        value.clone(),
                        lease.map(|l| PutOptions::new().with_lease(l)),
                    ),
                    Op::Delete { key } => TxnOp::delete(self.full(key), None),
                })
                .collect()
        };
        let (then_ops, else_ops) = (to_ops(&success), to_ops(&failure));
        let resp = retry("txn", never_applied, || {
            let mut kv = self.kv();
            let txn = Txn::new()
                .when(cmps.clone())
                .and_then(then_ops.clone())
                .or_else(else_ops.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| {
            if is_lease_not_found(&e) {
                let lease = success
                    .iter()
                    .chain(failure.iter())
                    .find_map(|op| match op {
                        Op::Put { lease, .. } => *lease,
                        Op::Delete { .. } => None,
                    })
                    .unwrap_or(0);
                StoreError::LeaseNotFound(lease)
            } else {
                map_err("txn", e)
            }
        })?;
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("lease ttl must be positive".into()));
        }
        // etcd counts in whole seconds; round up.
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        // Retried: a grant whose answer was lost only leaks a lease that
        // expires by itself.
        let resp = retry("lease grant", is_transient, || {
            let mut lease = self.client().lease_client();
            async move { lease.grant(secs, None).await }
        })
        .await
        .map_err(|e| map_err(&format!("lease grant ({secs}s)"), e))?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<()> {
        let slot = self.keeper(lease);
        let mut open = slot.lock().await;
        if let Some((keeper, stream)) = open.as_mut() {
            // One more request on the open stream; etcd answers a lease it
            // does not know with a TTL of 0.
            let answer = tokio::time::timeout(KEEP_ALIVE_ANSWER, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => return Ok(()),
                Ok(Ok(Some(_))) => {
                    *open = None;
                    drop(open);
                    self.forget_keeper(lease);
                    return Err(StoreError::LeaseNotFound(lease));
                }
                // The stream ended, failed or stalled: open another.
                _ => *open = None,
            }
        }
        let opened = retry("lease keep-alive", is_transient, || {
            let mut client = self.client().lease_client();
            // A fresh stream: its first response tells whether the lease
            // still exists.
            async move { client.keep_alive(lease).await }
        })
        .await;
        match opened {
            Ok(k) => {
                *open = Some(k);
                Ok(())
            }
            Err(e) => {
                drop(open);
                if is_lease_not_found(&e) {
                    self.forget_keeper(lease);
                    Err(StoreError::LeaseNotFound(lease))
                } else {
                    Err(map_err(&format!("lease keep-alive {lease}"), e))
                }
            }
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.forget_keeper(lease);
        let mut attempts = 0u32;
        let result = retry("lease revoke", is_transient, || {
            attempts += 1;
            let mut client = self.client().lease_client();
            async move { client.revoke(lease).await.map(|_| ()) }
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            // An earlier attempt may have succeeded without us hearing back.
            Err(e) if is_lease_not_found(&e) && attempts > 1 => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(map_err(&format!("lease revoke {lease}"), e)),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let from = if from <= 0 {
            self.revision().await? + 1
        } else {
            from
        };
        let (stream, pending) = self.open_watch(prefix, from).await?;
        let (tx, watch) = WatchStream::channel(WATCH_BUFFER);
        tokio::spawn(run_watch(
            self.clone(),
            prefix.to_string(),
            from,
            stream,
            pending,
            tx,
        ));
        Ok(watch)
    }

    async fn revision(&self) -> Result<Revision> {
        // A point read of a key that need not exist: the header carries the
        // store's revision.
        let key = self.full("");
        let resp = retry("revision", is_transient, || {
            let mut kv = self.kv();
            let key = key.clone();
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await
        .map_err(|e| map_err("read revision", e))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let result = retry("compact", is_transient, || {
            let mut kv = self.kv();
            async move { kv.compact(revision, None).await.map(|_| ()) }
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            // OUT_OF_RANGE is both "already compacted" and "a future
            // revision": the store's revision tells them apart.
            Err(e) if failure(&e) == Failure::Invalid => {
                let now = self.revision().await?;
                if revision <= now {
                    Ok(())
                } else {
                    Err(StoreError::Invalid(format!(
                        "cannot compact at revision {revision}: the store is at {now}"
                    )))
                }
            }
            Err(e) => Err(map_err(&format!("compact at {revision}"), e)),
        }
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

/// The end of the range of every key that starts with `prefix`: the
/// prefix with its last byte below 0xff incremented (and what follows
/// dropped); `\0` (to the end of the keyspace) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Deliver one response's events, one batch per revision; returns false
/// when the stream must end: the receiver is gone, or an event could not be
/// decoded (then the error is delivered first: skipping the event would
/// leave a gap, and the receiver recovers by reading again and watching
/// anew).
async fn deliver(
    store: &EtcdStore,
    resp: &WatchResponse,
    last: &mut Revision,
    tx: &WatchSender,
) -> bool {
    // All events of one revision arrive in one response, so anything at or
    // below the revision delivered before this response was already sent
    // (before a reconnect).
    let delivered = *last;
    let mut events = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        match store.convert_event(ev) {
            Ok(Some(ev)) => {
                if ev.revision() > delivered {
                    events.push(ev);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx
                    .send(Err(StoreError::Io(format!(
                        "etcd watch: an event after revision {delivered} cannot be read ({e}); \
                         the watch ends, read again and watch anew"
                    ))))
                    .await;
                return false;
            }
        }
    }
    for batch in crate::by_revision(events) {
        *last = batch.last().map_or(*last, |ev| ev.revision().max(*last));
        if tx.send(Ok(batch)).await.is_err() {
            return false;
        }
    }
    true
}

/// Follow an etcd watch, reconnecting at `last + 1` after errors, until the
/// receiver is dropped or an unrecoverable error (compaction, an undecodable
/// event) is delivered.
async fn run_watch(
    store: EtcdStore,
    prefix: String,
    from: Revision,
    mut stream: etcd_client::WatchStream,
    pending: Vec<WatchResponse>,
    tx: WatchSender,
) {
    let mut last = from - 1;
    for resp in &pending {
        if !deliver(&store, resp, &mut last, &tx).await {
            return;
        }
    }
    let mut pauses = backoff().build();
    loop {
        // Follow the current stream until it fails.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            let _ = tx
                                .send(Err(StoreError::Compacted {
                                    requested: last + 1,
                                    oldest: resp.compact_revision(),
                                }))
                                .await;
                            return;
                        }
                        if resp.canceled() {
                            tracing::debug!(reason = resp.cancel_reason(), "etcd watch canceled; reconnecting");
                            break;
                        }
                        if !deliver(&store, &resp, &mut last, &tx).await {
                            return;
                        }
                        pauses = backoff().build();
                    }
                    Ok(None) => {
                        tracing::debug!(%prefix, "etcd watch stream ended; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%prefix, error = %e, "etcd watch failed; reconnecting");
                        break;
                    }
                },
            }
        }
        // Reconnect from the revision after the last delivered one.
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(pauses.next().unwrap_or(BACKOFF_MAX)) => {}
            }
            match store.open_watch(&prefix, last + 1).await {
                Ok((s, pending)) => {
                    stream = s;
                    for resp in &pending {
                        if !deliver(&store, resp, &mut last, &tx).await {
                            return;
                        }
                    }
                    break;
                }
                Err(e @ StoreError::Compacted { .. }) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(%prefix, error = %e, "etcd watch reconnect failed; retrying");
                }
            }
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::shared_etcd;

    /// A key etcd accepts but the store cannot read (not UTF-8) ends the
    /// watch with an error instead of leaving a gap.
    #[tokio::test]
    async fn an_undecodable_event_ends_the_watch_with_an_error() {
        let eps = shared_etcd().expect("etcd").endpoints();
        let prefix = "/unit-undecodable";
        let store = EtcdStore::connect(&eps, prefix).await.expect("connect");
        let mut watch = store.watch("", 0).await.expect("watch");
        let mut raw = Client::connect(&eps, None).await.expect("raw client");
        let mut bad = format!("{prefix}/").into_bytes();
        bad.push(0xff);
        raw.put(bad, "x", None).await.expect("put a non-UTF-8 key");
        let within = Duration::from_secs(10);
        let first = tokio::time::timeout(within, watch.next())
            .await
            .expect("an answer within 10 s");
        assert!(matches!(first, Some(Err(StoreError::Io(_)))), "{first:?}");
        let after = tokio::time::timeout(within, watch.next())
            .await
            .expect("the stream ends within 10 s");
        assert!(after.is_none(), "{after:?}");
    }
}
