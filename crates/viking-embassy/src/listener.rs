//! One accept loop per ambassador port: accepts connections and hands each
//! to a `forward` task with the route current at accept time. Stops when its
//! port is closed (the route sender is dropped) or on shutdown; the listening
//! socket closes with it, so new connects are refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::forward;
use crate::route::RouteState;
use crate::shutdown::{Shutdown, TaskGuard};

/// `guard` comes first so that it is dropped last: when the shutdown sees
/// every guard gone, the listening socket is closed too.
pub(crate) async fn run(
    guard: TaskGuard,
    listener: TcpListener,
    port: u16,
    mut route: watch::Receiver<Arc<RouteState>>,
    config: Config,
    shutdown_rx: watch::Receiver<bool>,
) {
    let mut shutdown = Shutdown::new(shutdown_rx.clone());
    let mut backoff = Duration::from_millis(5);
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
                tokio::spawn(forward::serve(
                    guard.clone(),
                    client,
                    peer,
                    port,
                    route,
                    config,
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
