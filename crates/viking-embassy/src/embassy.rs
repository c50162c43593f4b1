//! The running ambassador: owns the set of listeners (one per ambassador
//! port), brings it in line with a [`RoutingTable`] on [`Embassy::apply`],
//! swaps each route's endpoints atomically, exposes per-route stats and shuts
//! everything down gracefully.
//!
//! Listeners and connections run on embassy's own thread, a single-threaded
//! tokio runtime: a byte that arrives is forwarded by the thread that was
//! woken for it, never handed to another worker, which is what keeps the
//! added latency low. The caller's runtime only drives `apply`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::buffer::BufferPool;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::listener;
use crate::route::RouteState;
use crate::shutdown::TaskGuard;
use crate::stats::RouteStats;
use crate::table::RoutingTable;

/// What [`Embassy::apply`] did, port by port (each list ascending).
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Ports now listening that were not before.
    pub opened: Vec<u16>,
    /// Ports no longer served: listener closed, their connections closed.
    pub closed: Vec<u16>,
    /// Ports whose endpoints changed, or that now serve another service.
    pub updated: Vec<u16>,
    /// Ports of the table that could not be opened; the others are unaffected.
    /// Each is tried again by the next `apply`.
    pub failed: Vec<PortFailure>,
}

impl ApplyReport {
    /// Whether every port of the table is served.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One port of the table that embassy could not serve.
#[derive(Debug)]
pub struct PortFailure {
    pub port: u16,
    pub error: Error,
}

/// One open ambassador port.
struct Port {
    /// The route the listener serves; dropping it stops the listener.
    route: watch::Sender<Arc<RouteState>>,
    /// The accept loop; awaited on close so the socket is gone when `apply`
    /// returns.
    task: JoinHandle<()>,
}

struct Inner {
    ports: BTreeMap<u16, Port>,
    /// Cloned into every task; `None` once shut down.
    guard: Option<TaskGuard>,
}

/// The ambassador of one node. See the crate documentation.
///
/// Dropping it stops every listener and connection too, without waiting;
/// [`Embassy::shutdown`] waits until they are all gone.
pub struct Embassy {
    config: Config,
    /// The buffers every connection borrows from while bytes are in transit.
    buffers: Arc<BufferPool>,
    /// The runtime of embassy's own thread, where every task runs.
    runtime: tokio::runtime::Handle,
    /// That thread; joined on drop, so every socket is closed by then.
    thread: Option<std::thread::JoinHandle<()>>,
    inner: Mutex<Inner>,
    /// Serializes `apply` and `shutdown` (a port closed by one apply must be
    /// gone before the next one may bind it again).
    apply_lock: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Embassy {
    /// An embassy listening on `bind`, with the default [`Config`]. It
    /// serves nothing until the first [`Embassy::apply`].
    pub fn start(bind: IpAddr) -> Embassy {
        Embassy::with_config(Config::new(bind))
    }

    /// An embassy with explicit tunables.
    pub fn with_config(config: Config) -> Embassy {
        let (guard, done) = mpsc::channel(1);
        let shutdown = watch::Sender::new(false);
        let (runtime, thread) = spawn_runtime(shutdown.subscribe());
        Embassy {
            config,
            buffers: Arc::new(BufferPool::new(config.buffer_size.max(4096))),
            runtime,
            thread,
            inner: Mutex::new(Inner {
                ports: BTreeMap::new(),
                guard: Some(guard),
            }),
            apply_lock: tokio::sync::Mutex::new(()),
            shutdown,
            done: tokio::sync::Mutex::new(done),
        }
    }

    /// The tunables this embassy runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Brings the listeners in line with `table`: opens new ports, closes
    /// removed ones (and their connections), swaps changed endpoints
    /// atomically. Open connections whose endpoint is still in its route are
    /// untouched; those whose endpoint was removed are closed. A port that
    /// cannot be opened is reported in [`ApplyReport::failed`]; the others
    /// are applied regardless.
    ///
    /// Must be called within a tokio runtime. Fails only after `shutdown`.
    pub async fn apply(&self, table: RoutingTable) -> Result<ApplyReport> {
        let _serial = self.apply_lock.lock().await;
        let mut report = ApplyReport::default();
        let mut closing = Vec::new();
        {
            let mut inner = self.lock();
            let Some(guard) = inner.guard.clone() else {
                return Err(Error::ShutDown);
            };
            let removed: Vec<u16> = inner
                .ports
                .keys()
                .copied()
                .filter(|port| table.get(*port).is_none())
                .collect();
            for port in removed {
                if let Some(old) = inner.ports.remove(&port) {
                    old.route.borrow().retire();
                    closing.push(old.task); // dropping `old.route` stops it
                    report.closed.push(port);
                }
            }
            for (port, route) in table {
                if let Some(open) = inner.ports.get(&port) {
                    let current = open.route.borrow().clone();
                    if current.service.same_service(&route) {
                        if current.set_endpoints(route.endpoints) {
                            report.updated.push(port);
                        }
                    } else {
                        // Another service on this port: fresh state and
                        // counters; the old service's connections close.
                        open.route.send_replace(Arc::new(RouteState::new(route)));
                        current.retire();
                        report.updated.push(port);
                    }
                    continue;
                }
                match self.listen(port) {
                    Ok(socket) => {
                        let (route_tx, route_rx) = watch::channel(Arc::new(RouteState::new(route)));
                        let task = self.runtime.spawn(listener::run(
                            guard.clone(),
                            socket,
                            port,
                            route_rx,
                            self.config,
                            self.buffers.clone(),
                            self.shutdown.subscribe(),
                        ));
                        inner.ports.insert(
                            port,
                            Port {
                                route: route_tx,
                                task,
                            },
                        );
                        report.opened.push(port);
                    }
                    Err(error) => {
                        tracing::warn!(port, %error, "ambassador port not served");
                        report.failed.push(PortFailure { port, error });
                    }
                }
            }
        }
        for task in closing {
            // A listener that panicked is gone as well; nothing else to do.
            let _ = task.await;
        }
        Ok(report)
    }

    /// Per-route counters, by ascending ambassador port.
    pub fn stats(&self) -> Vec<RouteStats> {
        self.lock()
            .ports
            .iter()
            .map(|(port, open)| {
                let route = open.route.borrow().clone();
                let endpoints = route.endpoints.borrow().to_vec();
                route.counters.snapshot(
                    *port,
                    route.name(),
                    route.service.container_port,
                    endpoints,
                )
            })
            .collect()
    }

    /// Buffers held by connections now: one per direction with bytes read
    /// and not yet written. An idle connection holds none.
    pub fn buffers_lent(&self) -> usize {
        self.buffers.lent()
    }

    /// The ambassador ports being served, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.lock().ports.keys().copied().collect()
    }

    /// Closes every listener and connection and waits until every task has
    /// finished. Idempotent; `apply` fails afterwards.
    pub async fn shutdown(&self) {
        let _serial = self.apply_lock.lock().await;
        let (ports, guard) = {
            let mut inner = self.lock();
            (std::mem::take(&mut inner.ports), inner.guard.take())
        };
        self.shutdown.send_replace(true);
        drop(ports);
        drop(guard);
        // Nothing is ever sent: `recv` returns `None` once every task has
        // dropped its guard.
        let _ = self.done.lock().await.recv().await;
        tracing::debug!("embassy shut down");
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every change
        // is a single insert or remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listen(&self, port: u16) -> Result<TcpListener> {
        // Register the socket with embassy's own runtime.
        let _rt = self.runtime.enter();
        let addr = SocketAddr::new(self.config.bind, port);
        if port == 0 {
            return Err(Error::InvalidRoute {
                port,
                reason: "ambassador port 0 is not a port",
            });
        }
        let bind_err = |source| Error::Bind { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(addr).map_err(bind_err)?;
        socket.listen(self.config.backlog).map_err(bind_err)
    }
}

/// Start embassy's thread: a single-threaded runtime that runs until
/// shutdown (or until the [`Embassy`] is dropped); its handle and the thread.
fn spawn_runtime(
    mut shutdown: watch::Receiver<bool>,
) -> (tokio::runtime::Handle, Option<std::thread::JoinHandle<()>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let built = std::thread::Builder::new()
        .name("embassy".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "embassy: cannot build its runtime");
                    return;
                }
            };
            let _ = tx.send(rt.handle().clone());
            // Ends on shutdown, or when the sender (the Embassy) is dropped.
            rt.block_on(async move {
                let _ = shutdown.wait_for(|stopped| *stopped).await;
            });
            // Let the tasks finish their current step before the runtime goes.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
    match built {
        Ok(thread) => match rx.recv() {
            Ok(handle) => (handle, Some(thread)),
            Err(_) => (tokio::runtime::Handle::current(), None),
        },
        // No thread (out of resources): run on the caller's runtime instead.
        Err(_) => (tokio::runtime::Handle::current(), None),
    }
}

impl Drop for Embassy {
    fn drop(&mut self) {
        // Stop embassy's thread and wait for it: its runtime drops every
        // listener and connection on the way out.
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Embassy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embassy")
            .field("config", &self.config)
            .field("ports", &self.ports())
            .finish()
    }
}
