//! A multi-host viking cluster on one machine: one Docker network, one etcd on
//! the network's gateway, and N node containers each running its own dockerd
//! (Docker-in-Docker) plus, optionally, `viking server`.
//!
//! Everything created is labelled `viking-test=1` and removed on drop, even when
//! the test panics (then each node's viking log is printed first).

use crate::etcd::Etcd;
use crate::http::http_get;
use crate::util::{
    check, host_docker, output, owner_alive, owner_id, random_u64, sh_quote, wait_until, LABEL,
    OWNER_LABEL,
};
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The job image loaded into every node's engine.
pub const BUSYBOX_IMAGE: &str = "viking-test/busybox:latest";
/// The default node image (see `scripts/test-images.sh --node`).
pub const NODE_IMAGE: &str = "viking-test/node:latest";
/// Where viking's log goes inside a node.
pub const VIKING_LOG: &str = "/var/log/viking.log";
const PID_FILE: &str = "/run/viking.pid";

/// Options for [`Cluster::start`]. Build with `ClusterOpts::default()` and set fields.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Start `viking server` in each node and wait for `/v1/ping` (default true).
    pub start_servers: bool,
    /// The host's `viking` binary, bind-mounted at `/usr/local/bin/viking` in the
    /// nodes and used by [`Node::cli`]. `None`: [`viking_bin`] locates it.
    pub viking_bin: Option<PathBuf>,
    /// `tags[i]` is passed as `--tags` to node `n{i+1}`; missing or empty: no `--tags`.
    pub tags: Vec<String>,
    /// Extra arguments for every `viking server`.
    pub server_args: Vec<String>,
    /// Extra environment for every `viking server` (`RUST_LOG` is passed through
    /// from the test's environment when set; `NO_COLOR=1` unless set here).
    pub server_env: Vec<(String, String)>,
    /// Give each node a Docker volume for `/var/lib/docker` instead of a tmpfs, so
    /// its images and containers survive [`Node::kill`] + [`Node::restart`].
    pub docker_volume: bool,
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
            server_env: Vec::new(),
            docker_volume: false,
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

/// Removes containers, volumes and networks labelled `viking-test=1` whose
/// owning test process is gone (leftovers of crashed runs). Resources of tests
/// still running (in this or another process) are left alone.
pub fn cleanup_stale() -> Result<()> {
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let stale = |listing: String| -> Vec<String> {
        listing
            .lines()
            .filter_map(|l| {
                let (id, owner) = l.split_once(' ').unwrap_or((l, ""));
                (!id.is_empty() && !owner_alive(owner)).then(|| id.to_string())
            })
            .collect()
    };
    let filter = format!("label={LABEL}");
    let containers = stale(host_docker([
        "ps", "-a", "--filter", &filter, "--format", &fmt,
    ])?);
    if !containers.is_empty() {
        host_docker(
            ["rm", "-f", "-v"]
                .into_iter()
                .chain(containers.iter().map(|s| s.as_str())),
        )?;
    }
    let vfmt = fmt.replace(".ID", ".Name");
    let volumes = stale(host_docker([
        "volume", "ls", "--filter", &filter, "--format", &vfmt,
    ])?);
    if !volumes.is_empty() {
        host_docker(
            ["volume", "rm", "-f"]
                .into_iter()
                .chain(volumes.iter().map(|s| s.as_str())),
        )?;
    }
    let networks = stale(host_docker([
        "network", "ls", "--filter", &filter, "--format", &fmt,
    ])?);
    for n in networks {
        let _ = host_docker(["network", "rm", &n]);
    }
    Ok(())
}

/// What the nodes of one cluster share.
#[derive(Debug)]
struct Shared {
    network: String,
    gateway: Ipv4Addr,
    token: String,
    etcd_endpoint: String,
    viking_bin: Option<PathBuf>,
    busybox_tar: PathBuf,
    opts: ClusterOpts,
}

/// A running test cluster; torn down on drop.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    subnet: String,
    nodes: Vec<Node>,
    etcd: Option<Etcd>,
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
        let mut cluster = Cluster {
            name: name.clone(),
            subnet,
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
            }),
            _tmp: tmp,
        };
        let etcd = Etcd::start(&gateway.to_string()).context("etcd for the cluster")?;
        {
            let shared = Arc::get_mut(&mut cluster.shared)
                .ok_or_else(|| anyhow!("harness bug: shared state already cloned"))?;
            shared.etcd_endpoint = etcd.endpoint();
        }
        cluster.etcd = Some(etcd);

        let base = u32::from(gateway);
        for i in 0..n {
            let node_name = format!("n{}", i + 1);
            cluster.nodes.push(Node {
                index: i,
                container: format!("{name}-{node_name}"),
                volume: cluster
                    .shared
                    .opts
                    .docker_volume
                    .then(|| format!("{name}-{node_name}-docker")),
                name: node_name,
                ip: Ipv4Addr::from(base + 10 + i as u32),
                shared: Arc::clone(&cluster.shared),
            });
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
            r.with_context(|| format!("starting node {}", node.name))?;
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
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .expect("harness bug: etcd is set in Cluster::start")
    }

    /// The etcd client URL the nodes use, e.g. `http://172.30.7.1:40123`.
    pub fn etcd_endpoint(&self) -> &str {
        &self.shared.etcd_endpoint
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
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Prints every node's viking log to stderr.
    pub fn print_logs(&self) {
        for n in &self.nodes {
            let log = n.logs().unwrap_or_else(|e| format!("<no log: {e:#}>"));
            eprintln!("===== viking log of {} ({}) =====\n{log}", n.name, n.ip);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.shared.opts.start_servers {
            self.print_logs();
        }
        let containers: Vec<&str> = self.nodes.iter().map(|n| n.container.as_str()).collect();
        if !containers.is_empty() {
            let _ = output(
                Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&containers),
            );
        }
        let volumes: Vec<&str> = self
            .nodes
            .iter()
            .filter_map(|n| n.volume.as_deref())
            .collect();
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

/// One node: a container with its own dockerd (and viking server).
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    container: String,
    ip: Ipv4Addr,
    volume: Option<String>,
    shared: Arc<Shared>,
}

impl Node {
    /// The node's name (`n1`…), also its hostname and `viking server --name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 0-based index in the cluster.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host-side container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The node's address on the test network.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `http://<ip>:<port>` of the node's viking server.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.shared.opts.port)
    }

    /// Runs the host's viking CLI against this node:
    /// `viking --server <url> --token <token> ARGS...`.
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cli_stdin(args, &[])
    }

    /// Like [`Node::cli`] with `stdin` fed to the process.
    pub fn cli_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = self
            .shared
            .viking_bin
            .as_ref()
            .expect("no viking binary: set ClusterOpts::viking_bin or build viking");
        let mut cmd = Command::new(bin);
        cmd.arg("--server")
            .arg(self.url())
            .arg("--token")
            .arg(&self.shared.token)
            .args(args);
        run_with_stdin(&mut cmd, stdin)
            .unwrap_or_else(|e| panic!("cannot run viking CLI {}: {e:#}", bin.display()))
    }

    /// Like [`Node::cli`] but fails unless the exit status is 0; returns stdout.
    pub fn cli_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.cli(&args);
        ok_stdout(&format!("viking {args:?} on {}", self.name), out)
    }

    /// Like [`Node::cli_ok`] and parses stdout as JSON.
    pub fn cli_json<I, S>(&self, args: I) -> Result<serde_json::Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.cli_ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("CLI output is not JSON: {out}"))
    }

    /// `docker exec <node> docker ARGS...`: the node's inner Docker engine.
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &self.container, "docker"]).args(args);
        output(&mut cmd).expect("harness bug: cannot run the docker CLI")
    }

    /// Like [`Node::docker`] but fails unless the exit status is 0; returns stdout.
    pub fn docker_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.docker(&args);
        ok_stdout(&format!("docker {args:?} in {}", self.name), out)
    }

    /// `docker exec <node> ARGS...`: any command in the node itself.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &self.container]).args(args);
        output(&mut cmd).expect("harness bug: cannot run the docker CLI")
    }

    /// `sh -c SCRIPT` in the node.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(["sh", "-c", script])
    }

    /// Whether the node container is running.
    pub fn is_running(&self) -> bool {
        host_docker(["inspect", "-f", "{{.State.Running}}", &self.container])
            .map(|s| s == "true")
            .unwrap_or(false)
    }

    /// Ends the node abruptly (`docker kill`): its dockerd, jobs and viking die.
    pub fn kill(&self) -> Result<()> {
        host_docker(["kill", &self.container]).map(|_| ())
    }

    /// Starts a killed/stopped node again: waits for its dockerd, reloads the
    /// busybox image when it is gone (tmpfs engine state) and, when the cluster
    /// runs servers, restarts `viking server` and waits for ping.
    pub fn restart(&self) -> Result<()> {
        host_docker(["start", &self.container])?;
        self.wait_dockerd()?;
        if self
            .docker(["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE])
            .status
            .success()
        {
            // still there (volume-backed engine state)
        } else {
            self.load_busybox()?;
        }
        if self.shared.opts.start_servers {
            self.start_server()?;
        }
        Ok(())
    }

    /// Cuts the node off the test network (from the other nodes, etcd and the host).
    pub fn partition(&self) -> Result<()> {
        host_docker([
            "network",
            "disconnect",
            &self.shared.network,
            &self.container,
        ])
        .map(|_| ())
    }

    /// Reconnects the node to the test network with its address.
    pub fn heal(&self) -> Result<()> {
        host_docker([
            "network",
            "connect",
            "--ip",
            &self.ip.to_string(),
            &self.shared.network,
            &self.container,
        ])
        .map(|_| ())
    }

    /// Starts `viking server` in the node (in the background, logging to
    /// [`VIKING_LOG`]) and waits until it answers ping. Fails if one is running.
    pub fn start_server(&self) -> Result<()> {
        if self.server_running()? {
            bail!("viking server already running in {}", self.name);
        }
        let o = &self.shared.opts;
        let mut args: Vec<String> = vec![
            "viking".into(),
            "server".into(),
            "--name".into(),
            self.name.clone(),
            "--ip".into(),
            self.ip.to_string(),
            "--listen".into(),
            format!("0.0.0.0:{}", o.port),
            "--etcd".into(),
            self.shared.etcd_endpoint.clone(),
            "--token".into(),
            self.shared.token.clone(),
            "--data-dir".into(),
            "/var/lib/viking".into(),
        ];
        if let Some(tags) = o.tags.get(self.index).filter(|t| !t.is_empty()) {
            args.push("--tags".into());
            args.push(tags.clone());
        }
        args.extend(o.server_args.iter().cloned());
        let cmdline: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "echo \"=== viking server start $(date -Is) ===\" >>{VIKING_LOG}; \
             echo $$ >{PID_FILE}; exec {} >>{VIKING_LOG} 2>&1",
            cmdline.join(" ")
        );
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-d"]);
        let mut env = o.server_env.clone();
        if !env.iter().any(|(k, _)| k == "NO_COLOR") {
            env.push(("NO_COLOR".into(), "1".into()));
        }
        if let Ok(v) = std::env::var("RUST_LOG") {
            if !env.iter().any(|(k, _)| k == "RUST_LOG") {
                env.push(("RUST_LOG".into(), v));
            }
        }
        for (k, v) in &env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.args([&self.container, "sh", "-c", &script]);
        check(&mut cmd)?;
        self.wait_ping(o.server_timeout)
    }

    /// Stops the node's viking server (SIGTERM, SIGKILL after 10 s), leaving the
    /// node and its dockerd running.
    pub fn stop_server(&self) -> Result<()> {
        self.signal_server("TERM", 50)
    }

    /// Kills the node's viking server with SIGKILL (a crash).
    pub fn kill_server(&self) -> Result<()> {
        self.signal_server("KILL", 50)
    }

    fn signal_server(&self, sig: &str, tries: u32) -> Result<()> {
        let script = format!(
            "p=$(cat {PID_FILE} 2>/dev/null) || exit 0; kill -{sig} $p 2>/dev/null || \
             {{ rm -f {PID_FILE}; exit 0; }}; i=0; while kill -0 $p 2>/dev/null; do \
             i=$((i+1)); [ $i -gt {tries} ] && kill -KILL $p; sleep 0.2; done; rm -f {PID_FILE}"
        );
        ok_stdout(&format!("stop viking in {}", self.name), self.sh(&script)).map(|_| ())
    }

    /// Whether a viking server process is alive in the node.
    pub fn server_running(&self) -> Result<bool> {
        let out = self.sh(&format!(
            "p=$(cat {PID_FILE} 2>/dev/null) || exit 1; kill -0 $p 2>/dev/null"
        ));
        Ok(out.status.success())
    }

    /// `GET /v1/ping` on the node's server with the cluster token.
    pub fn ping(&self) -> Result<bool> {
        let addr = format!("{}:{}", self.ip, self.shared.opts.port);
        let r = http_get(
            &addr,
            "/v1/ping",
            Some(&self.shared.token),
            Duration::from_secs(2),
        )?;
        Ok(r.is_success())
    }

    /// Waits until the server answers ping; fails early (with the log) if it died.
    pub fn wait_ping(&self, timeout: Duration) -> Result<()> {
        let r = wait_until(
            &format!("viking server on {}", self.name),
            timeout,
            Duration::from_millis(200),
            || {
                if self.ping().unwrap_or(false) {
                    return Ok(true);
                }
                // The pid file appears right after `docker exec -d`; no file yet = starting.
                let out = self.sh(&format!(
                    "test -f {PID_FILE} || exit 0; kill -0 $(cat {PID_FILE}) 2>/dev/null"
                ));
                if !out.status.success() {
                    bail!("viking server exited");
                }
                Ok(false)
            },
        );
        r.map_err(|e| anyhow!("{e:#}\n--- {} ---\n{}", VIKING_LOG, self.log_tail(40)))
    }

    /// The node's viking log (works on stopped nodes too).
    pub fn logs(&self) -> Result<String> {
        let out = self.exec(["cat", VIKING_LOG]);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        // Not running: copy it out of the container's filesystem as a tar stream.
        let out = output(Command::new("docker").args([
            "cp",
            &format!("{}:{VIKING_LOG}", self.container),
            "-",
        ]))?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(untar_first(&out.stdout)).into_owned())
    }

    /// The node's dockerd output (`docker logs`).
    pub fn dockerd_logs(&self) -> Result<String> {
        let out = output(Command::new("docker").args(["logs", &self.container]))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.logs().unwrap_or_else(|e| format!("<no log: {e:#}>"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Creates and starts the node container, then dockerd, busybox and viking.
    fn create(&self, owner: &str) -> Result<()> {
        let s = &self.shared;
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", &self.container])
            .args(["--hostname", &self.name])
            .args(["--network", &s.network, "--ip", &self.ip.to_string()])
            .args(["--label", LABEL])
            .arg("--label")
            .arg(format!("{OWNER_LABEL}={owner}"))
            .arg("--label")
            .arg(format!("viking-test.cluster={}", s.network))
            .args(["--cap-add=ALL", "--cap-drop=SYS_RESOURCE"])
            .args(["--security-opt", "seccomp=unconfined"])
            .args(["--security-opt", "apparmor=unconfined"])
            .arg("--device-cgroup-rule=a *:* rwm")
            .args(["--tmpfs", "/run"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup"]);
        match &self.volume {
            Some(vol) => {
                host_docker([
                    "volume",
                    "create",
                    "--label",
                    LABEL,
                    "--label",
                    &format!("{OWNER_LABEL}={owner}"),
                    vol,
                ])?;
                cmd.args(["-v", &format!("{vol}:/var/lib/docker")]);
            }
            None => {
                cmd.args(["--tmpfs", "/var/lib/docker:exec"]);
            }
        }
        if let Some(bin) = &s.viking_bin {
            cmd.arg("-v")
                .arg(format!("{}:/usr/local/bin/viking:ro", path_str(bin)?));
        }
        cmd.arg(&s.opts.node_image)
            .args(["dockerd", "--host", "unix:///var/run/docker.sock"]);
        check(&mut cmd)?;
        self.wait_dockerd()?;
        self.load_busybox()?;
        if s.opts.start_servers {
            self.start_server()?;
        }
        Ok(())
    }

    fn wait_dockerd(&self) -> Result<()> {
        let r = wait_until(
            &format!("dockerd in {}", self.name),
            self.shared.opts.dockerd_timeout,
            Duration::from_millis(250),
            || {
                if !self.is_running() {
                    bail!("node container is not running");
                }
                Ok(self
                    .docker(["info", "--format", "{{.ID}}"])
                    .status
                    .success())
            },
        );
        r.map_err(|e| {
            let logs = self.dockerd_logs().unwrap_or_default();
            let lines: Vec<&str> = logs.lines().collect();
            anyhow!(
                "{e:#}\n--- dockerd output ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        })
    }

    fn load_busybox(&self) -> Result<()> {
        let tar = File::open(&self.shared.busybox_tar).context("busybox tar")?;
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-i", &self.container, "docker", "load", "-q"])
            .stdin(tar);
        let out = cmd.output().context("docker load")?;
        ok_stdout(&format!("loading busybox into {}", self.name), out).map(|_| ())
    }
}

fn ok_stdout(what: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): stderr: {} stdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut pipe = child.stdin.take().context("stdin pipe")?;
    let data = stdin.to_vec();
    // Write from a thread so a child that does not read stdin cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// The content of the first file in a tar stream (as produced by `docker cp - `).
fn untar_first(tar: &[u8]) -> &[u8] {
    if tar.len() < 512 {
        return &[];
    }
    let size_field = String::from_utf8_lossy(&tar[124..136]);
    let size = usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
        .unwrap_or(0);
    &tar[512..(512 + size).min(tar.len())]
}

/// Subnets in use on the host: Docker networks and routes. Another test may
/// remove a network between the listing and the inspection: then look again.
fn used_subnets() -> Result<Vec<(u32, u32)>> {
    let mut tries = 0;
    loop {
        match used_subnets_once() {
            Ok(v) => return Ok(v),
            Err(e) if tries < 10 && format!("{e:#}").contains("not found") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn used_subnets_once() -> Result<Vec<(u32, u32)>> {
    let mut cidrs = Vec::new();
    let ids = host_docker(["network", "ls", "-q"])?;
    let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
    if !ids.is_empty() {
        let json = host_docker(
            ["network", "inspect"]
                .into_iter()
                .chain(ids.iter().copied()),
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).context("docker network inspect")?;
        for net in v.as_array().into_iter().flatten() {
            for cfg in net["IPAM"]["Config"].as_array().into_iter().flatten() {
                if let Some(s) = cfg["Subnet"].as_str() {
                    cidrs.push(s.to_string());
                }
            }
        }
    }
    if let Ok(routes) = check(Command::new("ip").args(["-4", "route", "show"])) {
        for l in routes.lines() {
            if let Some(first) = l.split_whitespace().next() {
                cidrs.push(first.to_string());
            }
        }
    }
    Ok(cidrs.iter().filter_map(|c| parse_cidr(c)).collect())
}

/// `a.b.c.d/len` (or a bare address: /32) as (network, mask).
fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    Some((u32::from(addr) & mask, mask))
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let mask = a.1 & b.1;
    a.0 & mask == b.0 & mask
}

/// Creates the cluster's network on a free /24 in 172.30.0.0/15.
fn create_network(name: &str, owner: &str) -> Result<(String, Ipv4Addr)> {
    let mut used = used_subnets()?;
    used.push((u32::from(Ipv4Addr::new(172, 17, 0, 0)), 0xffff_0000));
    let base = u32::from(Ipv4Addr::new(172, 30, 0, 0));
    let start = (random_u64() % 512) as u32;
    let mut attempts = 0;
    for k in 0..512u32 {
        let net = base + ((start + k) % 512) * 256;
        let cand = (net, 0xffff_ff00);
        if used.iter().any(|u| overlaps(*u, cand)) {
            continue;
        }
        let subnet = format!("{}/24", Ipv4Addr::from(net));
        let gateway = Ipv4Addr::from(net + 1);
        let out = output(Command::new("docker").args([
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--gateway",
            &gateway.to_string(),
            "--label",
            LABEL,
            "--label",
            &format!("{OWNER_LABEL}={owner}"),
            name,
        ]))?;
        if out.status.success() {
            return Ok((subnet, gateway));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        attempts += 1;
        if !err.contains("overlap") || attempts > 20 {
            bail!("docker network create {name} {subnet}: {}", err.trim());
        }
        // Taken by a concurrent run: try the next one.
        used.push(cand);
    }
    bail!("no free /24 in 172.30.0.0/15")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_overlap() {
        let a = parse_cidr("172.17.0.0/16").unwrap();
        assert!(overlaps(a, parse_cidr("172.17.3.0/24").unwrap()));
        assert!(!overlaps(a, parse_cidr("172.30.0.0/24").unwrap()));
        assert!(overlaps(
            parse_cidr("172.30.0.0/15").unwrap(),
            parse_cidr("172.31.9.0/24").unwrap()
        ));
        assert!(overlaps(
            parse_cidr("0.0.0.0/0").unwrap(),
            parse_cidr("1.2.3.0/24").unwrap()
        ));
        assert_eq!(parse_cidr("default"), None);
    }
}
