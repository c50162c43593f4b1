//! The runtime state of one served route, shared by its listener, its
//! connections and [`Embassy`](crate::Embassy): the service port it stands
//! for, its endpoints (swapped atomically and watched by the connections),
//! the round-robin cursor and the route's live counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::watch;

use crate::stats::Counters;
use crate::table::Route;

/// One route as the listener and its connections see it. Replaced as a whole
/// (fresh counters) when its port starts serving another service; otherwise
/// only its endpoints change.
pub(crate) struct RouteState {
    /// The service port served. Its `endpoints` are empty: the live list is
    /// the `endpoints` channel.
    pub(crate) service: Route,
    /// The endpoints, swapped atomically; connections watch it to learn that
    /// their endpoint was removed.
    pub(crate) endpoints: watch::Sender<Arc<[SocketAddr]>>,
    /// Round-robin cursor; reset when the endpoints change.
    pub(crate) next: AtomicUsize,
    pub(crate) counters: Counters,
}

impl RouteState {
    pub(crate) fn new(mut route: Route) -> Self {
        let endpoints = std::mem::take(&mut route.endpoints);
        RouteState {
            service: route,
            endpoints: watch::Sender::new(endpoints.into()),
            next: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// The service's name, for stats and logs.
    pub(crate) fn name(&self) -> &str {
        &self.service.service
    }

    /// Swaps in `endpoints`; returns whether they differ from the current ones.
    pub(crate) fn set_endpoints(&self, endpoints: Vec<SocketAddr>) -> bool {
        self.endpoints.send_if_modified(|current| {
            if **current == *endpoints {
                return false;
            }
            *current = endpoints.into();
            // The next connection starts with the first endpoint of the new list.
            self.next.store(0, Relaxed);
            true
        })
    }

    /// No endpoint any more: every open connection of this route closes.
    pub(crate) fn retire(&self) {
        self.endpoints.send_replace(Arc::from([]));
    }
}
