//! Per-route counters, updated lock-free by the connection tasks and read by
//! [`Embassy::stats`](crate::Embassy::stats); the per-port count of open
//! connections that enforces the connection cap (`PortSlots`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// A snapshot of one route's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// The ambassador port.
    pub port: u16,
    pub service: String,
    pub container_port: u16,
    /// The endpoints currently in the route.
    pub endpoints: Vec<SocketAddr>,
    /// Connections accepted since the route was opened.
    pub connections_total: u64,
    /// Connections open now (accepted and not yet closed).
    pub connections_active: u64,
    /// Connect attempts to an endpoint that failed (refused, timed out...).
    pub connect_failures: u64,
    /// Client connections closed because no endpoint could be reached.
    pub unserved: u64,
    /// Client connections closed at accept: the port was at its connection
    /// cap.
    pub refused: u64,
    /// Connections closed because no byte moved either way for the idle
    /// timeout.
    pub idle_closed: u64,
    /// Bytes from clients to endpoints.
    pub bytes_in: u64,
    /// Bytes from endpoints to clients.
    pub bytes_out: u64,
}

/// The live counters of one route.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) total: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) unserved: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl Counters {
    /// Counts a new connection; it stays active until the guard is dropped.
    pub(crate) fn open(&self) -> ActiveGuard<'_> {
        self.total.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ActiveGuard(self)
    }

    pub(crate) fn snapshot(
        &self,
        port: u16,
        service: &str,
        container_port: u16,
        endpoints: Vec<SocketAddr>,
    ) -> RouteStats {
        RouteStats {
            port,
            service: service.to_owned(),
            container_port,
            endpoints,
            connections_total: self.total.load(Relaxed),
            connections_active: self.active.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            unserved: self.unserved.load(Relaxed),
            refused: self.refused.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }
}

/// Decrements the active count when the connection ends, however it ends.
pub(crate) struct ActiveGuard<'a>(&'a Counters);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// The open connections of one ambassador port, against its cap. Outlives
/// route swaps: the cap is the port's, whatever service it serves.
#[derive(Debug, Clone)]
pub(crate) struct PortSlots {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl PortSlots {
    pub(crate) fn new(max: usize) -> Self {
        PortSlots {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot for one more connection, or `None` at the cap. Only the
    /// port's accept loop takes slots, so check-then-add does not race.
    pub(crate) fn take(&self) -> Option<Slot> {
        if self.open.load(Relaxed) >= self.max {
            return None;
        }
        self.open.fetch_add(1, Relaxed);
        Some(Slot(self.open.clone()))
    }
}

/// One open connection of a port; frees its slot when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
