//! A multi-host viking cluster on one machine: one Docker network, one etcd on
//! the network's gateway, and N node containers each running its own dockerd
//! (Docker-in-Docker) plus, optionally, `viking server`. By default the
//! cluster has its own CA (`pki.rs`): etcd and the servers speak TLS and ask
//! for certificates; [`ClusterOpts::insecure_http`] runs it all in plain HTTP.
//!
//! Everything created is labelled `viking-test=1` and removed on drop, even when
//! the test panics (then each node's viking log is printed first).

use crate::cleanup::cleanup_stale;
use crate::network::create_network;
use crate::node::{Node, Shared};
use crate::opts::{viking_bin, ClusterOpts, BUSYBOX_IMAGE};
use crate::pki::ClusterPki;
use crate::util::{check, host_docker, output, owner_id, random_u64};
use anyhow::{anyhow, bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use viking_store::testing::EtcdCluster;
use viking_store::EtcdTls;

/// A running test cluster; torn down on drop.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    subnet: String,
    nodes: Vec<Node>,
    etcd: Option<EtcdCluster>,
    network_created: bool,
    shared: Arc<Shared>,
    _tmp: TempDir,
}

impl Cluster {
    /// Starts a cluster of `n` nodes named `n1`..`n{n}`; see the crate docs.
    pub fn start(n: usize, opts: ClusterOpts) -> Result<Cluster> {
        let t0 = Instant::now();
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(|| {
            if let Err(e) = cleanup_stale() {
                eprintln!("viking-testkit: cleanup_stale: {e:#}");
            }
        });
        if host_docker(["image", "inspect", "--format", "{{.Id}}", &opts.node_image]).is_err() {
            bail!(
                "image {} not found: run `sudo scripts/test-images.sh --node` first",
                opts.node_image
            );
        }
        let viking_bin = match &opts.viking_bin {
            Some(p) => Some(
                p.canonicalize()
                    .with_context(|| format!("viking binary {}", p.display()))?,
            ),
            None => match viking_bin() {
                Ok(p) => Some(p),
                Err(e) if opts.start_servers => return Err(e),
                Err(_) => None,
            },
        };
        let tmp = tempfile::Builder::new()
            .prefix("viking-test-cluster-")
            .tempdir()
            .context("cluster temp dir")?;
        let busybox_tar = tmp.path().join("busybox.tar");
        check(
            Command::new("docker")
                .args(["save", "-o"])
                .arg(&busybox_tar)
                .arg(BUSYBOX_IMAGE),
        )
        .context("saving the busybox image (run scripts/test-images.sh)")?;

        let name = format!("vt{:08x}", random_u64() as u32);
        let token = opts
            .token
            .clone()
            .unwrap_or_else(|| format!("tok-{:016x}{:016x}", random_u64(), random_u64()));
        let owner = owner_id();
        let (subnet, gateway) = create_network(&name, &owner)?;
        let pki = if opts.insecure_http {
            None
        } else {
            Some(ClusterPki::create(&name, &tmp.path().join("pki"), gateway)?)
        };
        let mut cluster = Cluster {
            name: name.clone(),
            subnet: subnet.to_string(),
            nodes: Vec::new(),
            etcd: None,
            network_created: true,
            shared: Arc::new(Shared {
                network: name.clone(),
                gateway,
                token,
                etcd_endpoint: String::new(),
                viking_bin,
                busybox_tar,
                opts,
                pki,
            }),
            _tmp: tmp,
        };
        let etcd_tls = cluster.shared.pki.as_ref().map(ClusterPki::etcd_files);
        let etcd = EtcdCluster::start_tls(
            cluster.shared.opts.etcd_members.max(1),
            gateway.into(),
            &cluster.shared.opts.etcd_args,
            etcd_tls.as_ref(),
        )
        .map_err(|e| anyhow!("etcd for the cluster: {e}"))?;
        {
            let shared = Arc::get_mut(&mut cluster.shared)
                .ok_or_else(|| anyhow!("harness bug: shared state already cloned"))?;
            shared.etcd_endpoint = etcd.endpoints().join(",");
        }
        cluster.etcd = Some(etcd);

        let base = u32::from(gateway);
        for i in 0..n {
            let ip = Ipv4Addr::from(base + 10 + i as u32);
            let node = Node::new(i, &name, ip, Arc::clone(&cluster.shared))?;
            cluster.nodes.push(node);
        }
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = cluster
                .nodes
                .iter()
                .map(|node| s.spawn(|| node.create(&owner)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("node start thread panicked")))
                })
                .collect()
        });
        for (node, r) in cluster.nodes.iter().zip(results) {
            r.with_context(|| format!("starting node {}", node.name()))?;
        }
        eprintln!(
            "viking-testkit: cluster {} ({} nodes, {}, etcd {}) up in {:.1?}",
            cluster.name,
            n,
            cluster.subnet,
            cluster.shared.etcd_endpoint,
            t0.elapsed()
        );
        Ok(cluster)
    }

    /// The unique name of this cluster (also its Docker network's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Docker network's name.
    pub fn network(&self) -> &str {
        &self.shared.network
    }

    /// The network's subnet, e.g. `172.30.7.0/24`.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The network's gateway: the host's address on it (etcd listens there).
    pub fn gateway(&self) -> Ipv4Addr {
        self.shared.gateway
    }

    /// The cluster token (`--token`).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The cluster's etcd.
    pub fn etcd(&self) -> &EtcdCluster {
        self.etcd
            .as_ref()
            .expect("harness bug: etcd is set in Cluster::start")
    }

    /// The cluster's etcd, to kill and restart its members.
    pub fn etcd_mut(&mut self) -> &mut EtcdCluster {
        self.etcd
            .as_mut()
            .expect("harness bug: etcd is set in Cluster::start")
    }

    /// The first etcd member's client URL, e.g. `https://172.30.7.1:40123`
    /// (`http://` in plain mode).
    pub fn etcd_endpoint(&self) -> String {
        self.etcd().endpoint()
    }

    /// Every etcd member's client URL, comma-separated, as the nodes'
    /// servers are given them.
    pub fn etcd_endpoints(&self) -> &str {
        &self.shared.etcd_endpoint
    }

    /// Whether the cluster speaks TLS (the default; see
    /// [`ClusterOpts::insecure_http`]).
    pub fn tls(&self) -> bool {
        self.shared.pki.is_some()
    }

    /// The cluster's CA certificate file (PEM); `None` in plain mode.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.shared.pki.as_ref().map(ClusterPki::ca_file)
    }

    /// The cluster's CA certificate (PEM); `None` in plain mode.
    pub fn ca_pem(&self) -> Option<&str> {
        self.shared.pki.as_ref().map(ClusterPki::ca_pem)
    }

    /// The harness's own client certificate and key files (from the
    /// cluster's CA); `None` in plain mode.
    pub fn client_cert_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.shared.pki.as_ref().map(ClusterPki::client_files)
    }

    /// Puts the cluster's CA, with its key, into the store at `mesh/ca`
    /// (under the servers' default key prefix), as `viking mesh init`
    /// does: the servers can then sign certificates (an operator's client
    /// certificate).
    pub fn put_ca_in_store(&self) -> Result<()> {
        use viking_store::StoreExt;
        let pki = self
            .shared
            .pki
            .as_ref()
            .ok_or_else(|| anyhow!("a plain cluster has no CA"))?;
        let record = serde_json::json!({
            "v": 1,
            "data": {"cert_pem": pki.ca_pem(), "key_pem": pki.ca_key_pem()},
        });
        let endpoints = vec![self.etcd_endpoint()];
        let tls = pki.etcd_tls();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let store =
                viking_store::EtcdStore::connect_tls(&endpoints, "/viking", Some(&tls)).await?;
            store
                .put("mesh/ca", record.to_string().into_bytes())
                .await?;
            Ok::<_, viking_store::StoreError>(())
        })
        .map_err(|e| anyhow!("putting the CA into the store: {e}"))
    }

    /// What viking-store's `EtcdStore::connect_tls` needs to reach the
    /// cluster's etcd as the harness; `None` in plain mode.
    pub fn etcd_tls(&self) -> Option<EtcdTls> {
        self.shared.pki.as_ref().map(ClusterPki::etcd_tls)
    }

    /// A rustls client that trusts only the cluster's CA and shows the
    /// harness's certificate (for `viking_client::Client::with_tls`);
    /// `None` in plain mode.
    pub fn client_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.shared
            .pki
            .as_ref()
            .map(|p| Arc::clone(&p.client_config))
    }

    /// `etcdctl` (API v3) against the cluster's etcd, with the CA and the
    /// harness's certificate in TLS mode; add the command's arguments.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.shared.etcd_endpoint);
        if let Some(pki) = &self.shared.pki {
            let (cert, key) = pki.client_files();
            cmd.arg("--cacert")
                .arg(pki.ca_file())
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        cmd
    }

    /// All nodes; `nodes()[0]` is `n1`.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node by 0-based index: `node(0)` is `n1`. Panics when out of range.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Node by name (`"n2"`).
    pub fn node_named(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    /// Prints every node's viking log to stderr.
    pub fn print_logs(&self) {
        for n in &self.nodes {
            let log = n.logs().unwrap_or_else(|e| format!("<no log: {e:#}>"));
            eprintln!("===== viking log of {} ({}) =====\n{log}", n.name(), n.ip());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.shared.opts.start_servers {
            self.print_logs();
        }
        let containers: Vec<&str> = self.nodes.iter().map(|n| n.container()).collect();
        if !containers.is_empty() {
            let _ = output(
                Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&containers),
            );
        }
        let volumes: Vec<&str> = self.nodes.iter().filter_map(|n| n.volume()).collect();
        if !volumes.is_empty() {
            let _ = output(
                Command::new("docker")
                    .args(["volume", "rm", "-f"])
                    .args(&volumes),
            );
        }
        if self.network_created {
            for _ in 0..10 {
                if host_docker(["network", "rm", &self.name]).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        // etcd is killed when its field drops.
    }
}
