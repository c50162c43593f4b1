//! Test harness for viking's integration tests.
//!
//! * [`EtcdCluster`]: a throwaway etcd on free ports (loopback or a given
//!   address), viking-store's test launcher re-exported.
//! * [`local::LocalServer`]: one `viking server` process on the machine's own
//!   Docker engine.
//! * [`Cluster`]: N "hosts" on one machine — node containers from
//!   `viking-test/node:latest`, each with its own dockerd, the host's `viking`
//!   binary bind-mounted, `viking-test/busybox` loaded and (optionally) a
//!   `viking server` running — on a private Docker network with its own etcd.
//!   Nodes can be killed, restarted, partitioned and healed. The cluster has
//!   its own CA: etcd asks every client for a certificate from it, the
//!   servers serve TLS and call each other and etcd with theirs, and the
//!   harness's clients ([`Node::cli`], [`Cluster::etcdctl`]) trust only the
//!   CA; [`ClusterOpts::insecure_http`] runs it all in plain HTTP.
//!
//! Prepare the machine once with `sudo scripts/test-images.sh --node`.
//! Everything the harness creates in Docker is labelled `viking-test=1` and is
//! removed on drop (also when the test panics, after printing the viking logs);
//! [`cleanup_stale`] removes leftovers of crashed runs.
//!
//! Tests wait for conditions with [`eventually`] (or [`wait_until`], which
//! returns an error instead of panicking), never with a fixed sleep.
//!
//! ```no_run
//! use viking_testkit::{Cluster, ClusterOpts};
//! // In the `viking` crate's own tests pass `env!("CARGO_BIN_EXE_viking")` as
//! // `viking_bin`; elsewhere it is located in target/<profile>/ (build it first).
//! let opts = ClusterOpts {
//!     tags: vec!["zone=a".into(), "zone=b".into(), "zone=b".into()],
//!     ..ClusterOpts::default()
//! };
//! let c = Cluster::start(3, opts).expect("cluster");
//! let out = c.node(0).cli(["ps"]);
//! assert!(out.status.success());
//! c.node(1).partition().unwrap();
//! ```

#![deny(unsafe_code)]

mod browser;
mod cleanup;
mod cluster;
mod http;
pub mod local;
mod network;
mod node;
mod opts;
mod pki;
mod util;
mod wait;

pub use browser::Browser;
pub use cleanup::cleanup_stale;
pub use cluster::Cluster;
pub use http::{http_get, https_get, HttpResponse};
pub use node::{Node, LOG_FILTER_VAR, SERVER_LOG_PATH};
pub use opts::{viking_bin, ClusterOpts, BUSYBOX_IMAGE, NODE_IMAGE};
pub use pki::NODE_TLS_DIR;
pub use util::{command_deadline, host_docker, run_bounded, run_with_stdin, unique, LABEL};
pub use viking_store::testing::EtcdCluster;
pub use wait::{eventually, eventually_async, wait_until, Outcome, POLL};
