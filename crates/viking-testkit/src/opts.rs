//! What a test cluster is made of: [`ClusterOpts`], the images, and where the
//! host's `viking` binary is.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The job image loaded into every node's engine.
pub const BUSYBOX_IMAGE: &str = "viking-test/busybox:latest";
/// The default node image (see `scripts/test-images.sh --node`).
pub const NODE_IMAGE: &str = "viking-test/node:latest";

/// Options for [`Cluster::start`](crate::Cluster::start). Build with `ClusterOpts::default()` and set fields.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Start `viking server` in each node and wait for `/v1/ping` (default true).
    pub start_servers: bool,
    /// The host's `viking` binary, bind-mounted at `/usr/local/bin/viking` in the
    /// nodes and used by [`Node::cli`](crate::Node::cli). `None`: [`viking_bin`] locates it.
    pub viking_bin: Option<PathBuf>,
    /// `tags[i]` is passed as `--tags` to node `n{i+1}`; missing or empty: no `--tags`.
    pub tags: Vec<String>,
    /// Extra arguments for every `viking server`.
    pub server_args: Vec<String>,
    /// Extra flags for the cluster's etcd (e.g. `--quota-backend-bytes`).
    pub etcd_args: Vec<String>,
    /// How many etcd members (default 1; 3 to lose one and go on). The
    /// servers and `etcdctl` are given every member's endpoint.
    pub etcd_members: usize,
    /// Extra environment for every `viking server` (`VIKING_LOG`, the server's
    /// log filter, is passed through from the test's environment when set;
    /// `NO_COLOR=1` unless set here).
    pub server_env: Vec<(String, String)>,
    /// Give each node a Docker volume for `/var/lib/docker` instead of a tmpfs, so
    /// its images and containers survive [`Node::kill`](crate::Node::kill) + [`Node::restart`](crate::Node::restart).
    pub docker_volume: bool,
    /// Plain HTTP everywhere: etcd without TLS and every server with
    /// `--insecure-http` (the benchmark's baseline). Default false: the
    /// cluster has its own CA, etcd asks every client for a certificate
    /// from it, the servers serve TLS and call each other and etcd with
    /// their certificates, and the harness's clients trust only the CA.
    pub insecure_http: bool,
    /// Cluster token; `None`: a random one.
    pub token: Option<String>,
    /// Port of `viking server` in each node (default 8791).
    pub port: u16,
    /// The node image (default [`NODE_IMAGE`]).
    pub node_image: String,
    /// How long to wait for a node's dockerd (default 60 s).
    pub dockerd_timeout: Duration,
    /// How long to wait for a node's viking server to answer ping (default 30 s).
    pub server_timeout: Duration,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            start_servers: true,
            viking_bin: None,
            tags: Vec::new(),
            server_args: Vec::new(),
            etcd_args: Vec::new(),
            etcd_members: 1,
            server_env: Vec::new(),
            docker_volume: false,
            insecure_http: false,
            token: None,
            port: 8791,
            node_image: NODE_IMAGE.to_string(),
            dockerd_timeout: Duration::from_secs(60),
            server_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOpts {
    /// Default options but without viking servers (nodes with dockerd only).
    pub fn without_servers() -> Self {
        ClusterOpts {
            start_servers: false,
            ..Self::default()
        }
    }
}

/// Locates the `viking` binary: `$VIKING_BIN`, `$CARGO_BIN_EXE_viking`, then
/// `viking` next to (or one or two levels above) the running test executable,
/// i.e. `target/<profile>/viking`. Tests outside the `viking` crate need
/// `cargo build -p viking` first (cargo only builds the binaries of the crate
/// under test).
pub fn viking_bin() -> Result<PathBuf> {
    for var in ["VIKING_BIN", "CARGO_BIN_EXE_viking"] {
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            bail!("${var} = {} is not a file", p.display());
        }
    }
    let exe = std::env::current_exe().context("current_exe")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("viking");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no viking binary near {} (run `cargo build -p viking` or set VIKING_BIN)",
        exe.display()
    )
}
