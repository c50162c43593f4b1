//! The API's connections: accepted under a cap, served by hyper's HTTP/1
//! with timeouts, closed gracefully at shutdown; and the open-files limit
//! raised at start. Nothing here knows a route: the router comes in whole.
//!
//! - **Header-read timeout** (hyper's, with `TokioTimer`): a connection
//!   that does not deliver a complete request head within it is closed.
//!   hyper starts the timer whenever it waits for a head, so it also bounds
//!   the silence between two requests of a keep-alive connection.
//! - **Idle timeout**: a connection with no request in flight for that long
//!   is closed gracefully. A request is in flight until its response body
//!   has ended, so a `logs -f` stream stays open however quiet it is; an
//!   upgraded connection (`Upgrade: viking-attach`) leaves hyper, and this
//!   module, once upgraded: its session lives as long as it needs.
//! - **Pending connections**: a connection is *pending* until it has sent a
//!   request carrying the cluster token. Pending connections may take at most
//!   a quarter of the cap; past that the oldest pending one is closed to make
//!   room, so a flood of silent or unauthenticated sockets cannot keep an
//!   operator out. A response to a request without the token closes its
//!   connection (`Connection: close`): only token holders keep a connection
//!   between requests.
//! - **Cap** (`--max-connections`): a connection accepted at the cap closes
//!   the oldest pending connection, or, if every open connection is
//!   authenticated, is closed at once (its client sees the connection
//!   close; nothing waits in a queue holding a descriptor).
//!
//! Accept errors (out of descriptors) close the oldest pending connection
//! and back off briefly rather than spin.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION};
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ApiLimits;
use crate::token;

/// How long shutdown waits for open requests to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// At most one log line of each kind (refused, made room, accept failed)
/// this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Raise the soft limit of open files to the hard limit (a server holds a
/// descriptor per connection, API and embassy); returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Serve `app` on `listener` under `limits` until `shutdown` resolves; then
/// close every connection gracefully (open requests get [`DRAIN`] to finish).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    token: Arc<str>,
    limits: ApiLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let registry = Arc::new(Registry::new(limits));
    let (closing_tx, closing) = watch::channel(false);
    // Every connection task holds a sender; `recv` ends once all are gone.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    let (mut refused, mut evicted, mut failed) = (
        LogEvery::default(),
        LogEvery::default(),
        LogEvery::default(),
    );
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(&e, &registry, &mut failed).await;
                continue;
            }
        };
        let (admitted, made_room) = registry.admit();
        if let Some(n) = evicted.count(made_room) {
            tracing::warn!(
                closed = n,
                max_pending = limits.max_pending(),
                "API connections that sent no request with the token were closed to make room"
            );
        }
        let Some(open) = admitted else {
            // Every connection is authenticated and the cap is reached.
            drop(stream);
            if let Some(n) = refused.count(1) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = n,
                    "the API is at its connection cap with every connection authenticated; closing new connections"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, token, http, closing, alive) = (
            app.clone(),
            token.clone(),
            http.clone(),
            closing.clone(),
            alive.clone(),
        );
        let idle = limits.idle_timeout;
        match &tls {
            None => {
                tokio::spawn(connection(
                    stream, app, token, false, open, http, closing, idle, alive,
                ));
            }
            Some(acceptor) => {
                // The handshake counts as the request head: it must end
                // within the header timeout, and the connection stays
                // pending (evictable) meanwhile.
                let acceptor = acceptor.clone();
                let within = limits.header_timeout;
                tokio::spawn(async move {
                    let conn = open.0.clone();
                    let handshake = tokio::time::timeout(within, acceptor.accept(stream));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = conn.evicted.notified() => return,
                    };
                    // A client certificate the cluster's CA signed (the
                    // handshake verified it) is a credential like the token.
                    let certified = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    connection(
                        stream, app, token, certified, open, http, closing, idle, alive,
                    )
                    .await;
                });
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(alive);
    if tokio::time::timeout(DRAIN, all_gone.recv()).await.is_err() {
        tracing::warn!(
            open = registry.open(),
            "API connections still open after {DRAIN:?}; closing them"
        );
    }
}

/// Out of descriptors (or another accept error): make room by closing the
/// oldest pending connection, and back off a little.
async fn accept_failed(e: &std::io::Error, registry: &Registry, failed: &mut LogEvery) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        return;
    }
    let evicted = registry.evict_oldest_pending();
    if let Some(n) = failed.count(1) {
        tracing::warn!(error = %e, failures = n, closed_a_pending_one = evicted, "accepting an API connection failed");
    }
    tokio::time::sleep(Duration::from_millis(if evicted { 1 } else { 50 })).await;
}

/// One connection: hyper's HTTP/1 with upgrades, closed when evicted, when
/// idle too long, or (gracefully) at shutdown.
#[allow(clippy::too_many_arguments)]
async fn connection<S>(
    stream: S,
    app: Router,
    token: Arc<str>,
    certified: bool,
    open: Open,
    http: Arc<hyper::server::conn::http1::Builder>,
    mut closing: watch::Receiver<bool>,
    idle_timeout: Duration,
    _alive: mpsc::Sender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = open.0.clone();
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let conn = conn.clone();
            if certified {
                req.extensions_mut().insert(ClientCertified);
            }
            let authenticated = certified || has_token(&req, &token) || has_session(&req, &token);
            let request = InFlight::start(conn, authenticated);
            let mut app = app.clone();
            async move {
                let mut res = match app.call(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                if !authenticated {
                    res.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                // In flight until the body has ended (or is dropped).
                Ok::<_, Infallible>(res.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &request;
                        frame
                    }))
                }))
            }
        })
    };
    let served = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(served);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut draining = *closing.borrow();
    if draining {
        served.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            done = served.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "API connection ended");
                }
                break;
            }
            _ = conn.evicted.notified() => {
                tracing::debug!("closing a pending API connection to make room");
                break;
            }
            changed = closing.changed(), if !draining => {
                if changed.is_err() || *closing.borrow() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            _ = &mut idle => {
                let now = Instant::now();
                let next = match conn.idle_since() {
                    Some(since) if since + idle_timeout <= now => {
                        tracing::debug!("closing an idle API connection");
                        served.as_mut().graceful_shutdown();
                        draining = true;
                        now + DRAIN
                    }
                    Some(since) => since + idle_timeout,
                    None => now + idle_timeout,
                };
                idle.as_mut().reset(next);
            }
        }
    }
}

/// Marks a request that came over TLS with a client certificate the
/// cluster's CA signed: the API takes it as the token.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertified;

/// Whether the request carries the cluster token (the API's own check, in
/// `api`, still decides what it may do).
fn has_token<B>(req: &Request<B>, expected: &str) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| token::matches(expected, given))
}

/// Whether `req` carries a valid dashboard login cookie: a credential too,
/// so a browser's feed is not taken for a connection that has not said
/// who it is.
fn has_session<B>(req: &Request<B>, token: &str) -> bool {
    crate::session::from_headers(req.headers())
        .is_some_and(|v| crate::session::valid(token, &v, crate::now_ms() / 1000))
}

/// The open connections and which of them are pending.
struct Registry {
    limits: ApiLimits,
    /// Open connections (their tasks are running).
    open: AtomicUsize,
    inner: Mutex<Pending>,
}

/// Pending connections by age (ids grow with time).
#[derive(Default)]
struct Pending {
    next_id: u64,
    by_age: BTreeMap<u64, Arc<Conn>>,
}

impl Registry {
    fn new(limits: ApiLimits) -> Self {
        Registry {
            limits,
            open: AtomicUsize::new(0),
            inner: Mutex::new(Pending::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every change is one insert or remove: consistent even after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Room for a new connection, which starts pending (`None` when the cap
    /// is reached and no pending connection can make room), and how many
    /// pending connections were closed to make it.
    fn admit(self: &Arc<Self>) -> (Option<Open>, u64) {
        let mut pending = self.lock();
        let mut made_room = 0;
        if self.open() >= self.limits.max_connections {
            if !evict_oldest(&mut pending) {
                return (None, 0);
            }
            made_room += 1;
        }
        while pending.by_age.len() >= self.limits.max_pending() && evict_oldest(&mut pending) {
            made_room += 1;
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            registry: self.clone(),
            pending: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evicted: Notify::new(),
        });
        pending.by_age.insert(id, conn.clone());
        self.open.fetch_add(1, Relaxed);
        (Some(Open(conn)), made_room)
    }

    fn evict_oldest_pending(&self) -> bool {
        evict_oldest(&mut self.lock())
    }
}

/// Tells the oldest pending connection to close, and forgets it; whether
/// there was one. Its slot is freed when its task ends, a moment later.
fn evict_oldest(pending: &mut Pending) -> bool {
    match pending.by_age.pop_first() {
        Some((_, conn)) => {
            conn.pending.store(false, Relaxed);
            conn.evicted.notify_one();
            true
        }
        None => false,
    }
}

/// One open API connection.
struct Conn {
    id: u64,
    registry: Arc<Registry>,
    /// No request with the token yet (and not evicted).
    pending: AtomicBool,
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened).
    idle_since: Mutex<Instant>,
    /// Notified when the connection must close to make room.
    evicted: Notify,
}

impl Conn {
    /// Since when the connection has had no request in flight; `None` while
    /// one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// A request with the token: the connection is no longer pending.
    fn authenticated(&self) {
        if self.pending.swap(false, Relaxed) {
            self.registry.lock().by_age.remove(&self.id);
        }
    }
}

/// An admitted connection, held by its task: when the task ends, however
/// it ends, the connection leaves the pending list and frees its slot.
struct Open(Arc<Conn>);

impl Drop for Open {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.pending.swap(false, Relaxed) {
            conn.registry.lock().by_age.remove(&conn.id);
        }
        conn.registry.open.fetch_sub(1, Relaxed);
    }
}

/// A request in flight on its connection, from its head to the end of its
/// response body.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: Arc<Conn>, authenticated: bool) -> Self {
        if authenticated {
            conn.authenticated();
        }
        conn.in_flight.fetch_add(1, Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The rate limit of one kind of log line: at most one per [`LOG_EVERY`],
/// telling how many events happened since the last.
#[derive(Default)]
struct LogEvery {
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    /// Counts `n` events; the number to log now, if a line is due.
    fn count(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        self.since += n;
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}
