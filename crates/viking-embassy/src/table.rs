//! The routing table: which ambassador port forwards to which endpoints.
//! Pure data, no I/O; the server builds it from the store.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One service port as seen through its ambassador port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The service (daemonized job) name; used in stats and logs.
    pub service: String,
    /// The container port this route stands for.
    pub container_port: u16,
    /// Live endpoints: host IP + published host port. Order matters only for
    /// round robin: after a change the next connection tries the first one.
    pub endpoints: Vec<SocketAddr>,
}

impl Route {
    /// A route for `service`'s `container_port` over `endpoints`.
    pub fn new(
        service: impl Into<String>,
        container_port: u16,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) -> Self {
        Route {
            service: service.into(),
            container_port,
            endpoints: endpoints.into_iter().collect(),
        }
    }

    /// Whether `other` is the same service port (the endpoints may differ).
    pub fn same_service(&self, other: &Route) -> bool {
        self.service == other.service && self.container_port == other.container_port
    }
}

/// Ambassador port -> route. Ordered so that reports and stats are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    routes: BTreeMap<u16, Route>,
}

impl RoutingTable {
    /// An empty table: embassy serves nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the route of `port`, returning the one it replaces.
    pub fn insert(&mut self, port: u16, route: Route) -> Option<Route> {
        self.routes.insert(port, route)
    }

    /// Builder form of [`RoutingTable::insert`].
    pub fn with(mut self, port: u16, route: Route) -> Self {
        self.insert(port, route);
        self
    }

    /// Removes the route of `port`.
    pub fn remove(&mut self, port: u16) -> Option<Route> {
        self.routes.remove(&port)
    }

    /// The route of `port`.
    pub fn get(&self, port: u16) -> Option<&Route> {
        self.routes.get(&port)
    }

    /// Routes by ascending port.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Route)> {
        self.routes.iter().map(|(p, r)| (*p, r))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl FromIterator<(u16, Route)> for RoutingTable {
    fn from_iter<I: IntoIterator<Item = (u16, Route)>>(iter: I) -> Self {
        RoutingTable {
            routes: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for RoutingTable {
    type Item = (u16, Route);
    type IntoIter = std::collections::btree_map::IntoIter<u16, Route>;
    fn into_iter(self) -> Self::IntoIter {
        self.routes.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_orders_by_port() {
        let ep: SocketAddr = "10.0.0.1:31000".parse().unwrap();
        let t = RoutingTable::new()
            .with(20002, Route::new("b", 80, [ep]))
            .with(20001, Route::new("a", 80, [ep]));
        let ports: Vec<u16> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(ports, vec![20001, 20002]);
        assert!(t.get(20001).unwrap().same_service(&Route::new("a", 80, [])));
        assert!(!t.get(20001).unwrap().same_service(&Route::new("a", 81, [])));
    }
}
