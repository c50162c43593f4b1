//! One accept loop per ambassador port: accepts connections and hands each
//! to a `forward` task with the route current at accept time. A connection
//! beyond the port's cap (`Config::max_connections`) is closed at once and
//! counted as refused, with a log line at most every ten seconds. Stops when
//! its port is closed (the route sender is dropped) or on shutdown; the
//! listening socket closes with it, so new connects are refused.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::buffer::BufferPool;
use crate::config::Config;
use crate::forward;
use crate::route::RouteState;
use crate::shutdown::{Shutdown, TaskGuard};
use crate::stats::PortSlots;

/// At most one "at its connection cap" line per port this often.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// `guard` comes first so that it is dropped last: when the shutdown sees
/// every guard gone, the listening socket is closed too.
pub(crate) async fn run(
    guard: TaskGuard,
    listener: TcpListener,
    port: u16,
    mut route: watch::Receiver<Arc<RouteState>>,
    config: Config,
    buffers: Arc<BufferPool>,
    shutdown_rx: watch::Receiver<bool>,
) {
    let mut shutdown = Shutdown::new(shutdown_rx.clone());
    let mut backoff = Duration::from_millis(5);
    let slots = PortSlots::new(config.max_connections);
    let mut refused = RefusedLog::default();
    tracing::debug!(port, "ambassador port open");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            changed = route.changed() => {
                if changed.is_err() {
                    break; // the port was closed
                }
                continue; // a new route; picked up at the next accept
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = Duration::from_millis(5);
                let route = route.borrow().clone();
                let Some(slot) = slots.take() else {
                    drop(client);
                    route.counters.refused.fetch_add(1, Relaxed);
                    refused.note(port, route.name(), config.max_connections);
                    continue;
                };
                tokio::spawn(forward::serve(
                    guard.clone(),
                    slot,
                    client,
                    peer,
                    port,
                    route,
                    config,
                    buffers.clone(),
                    Shutdown::new(shutdown_rx.clone()),
                ));
            }
            Err(error) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(port, %error, "accept failed");
                tokio::select! {
                    _ = shutdown.recv() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::debug!(port, "ambassador port closed");
}

/// The rate limit of the "at its connection cap" log line.
#[derive(Default)]
struct RefusedLog {
    last: Option<Instant>,
    /// Refused since the last line.
    since: u64,
}

impl RefusedLog {
    fn note(&mut self, port: u16, service: &str, max: usize) {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + REFUSED_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            port,
            service,
            max_connections = max,
            refused = self.since,
            "ambassador port at its connection cap; closing new connections"
        );
        self.last = Some(now);
        self.since = 0;
    }
}
