//! Test support (cargo feature `testing`): real etcd servers.
//!
//! This module owns starting and stopping throwaway etcd clusters, for the
//! store's contract tests and benchmarks and (through viking-testkit, which
//! re-exports [`EtcdCluster`]) for every other test crate: free ports, a
//! temporary data directory, a wait until every member answers `/health`,
//! and a kill on drop (which also runs when a test panics). As a second line
//! of defence every etcd process is started with `PR_SET_PDEATHSIG`, so it
//! dies with the thread that started it even if `Drop` never runs (e.g. the
//! process-wide [`shared_etcd`]). Clients reach it on loopback, or on an
//! address of the caller's choice ([`EtcdCluster::start_on`], e.g. a test
//! network's gateway so containers can reach it); peers always talk on
//! loopback. With [`TlsFiles`] ([`EtcdCluster::start_tls`]) clients must
//! speak TLS and show a certificate from the given CA (`--client-cert-auth`);
//! readiness is then read from a plain metrics listener on loopback.
//!
//! The binary is `$VIKING_ETCD_BIN` (or `$VIKING_TEST_ETCD`), else `etcd` on
//! `PATH`, else `/usr/bin/etcd`. A missing binary is an error, never a skip.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long to wait for a cluster to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The files of an etcd that serves its clients over TLS and answers only
/// those that show a certificate from `ca` (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server certificate (its addresses must cover the client address).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA whose client certificates etcd accepts.
    pub ca: PathBuf,
}

/// One etcd member process.
#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    /// Where `/health` is read: the client address, or with TLS a plain
    /// metrics listener on loopback.
    health: SocketAddr,
    client_url: String,
    child: Option<Child>,
    log: PathBuf,
    /// Its command line (after the binary), to start it again after a kill.
    args: Vec<std::ffi::OsString>,
}

/// A running etcd cluster, killed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    /// More flags for every member (e.g. `--quota-backend-bytes`).
    extra: Vec<String>,
    tls: Option<TlsFiles>,
}

/// The etcd binary to run.
pub fn etcd_binary() -> Result<PathBuf, String> {
    for var in ["VIKING_ETCD_BIN", "VIKING_TEST_ETCD"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("etcd");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let fallback = PathBuf::from("/usr/bin/etcd");
    if fallback.is_file() {
        return Ok(fallback);
    }
    Err(
        "etcd binary not found: install etcd-server (Debian: `apt-get install etcd-server`) \
         or set VIKING_ETCD_BIN"
            .to_string(),
    )
}

/// `n` distinct ports free on `ip` (held open together, then released).
fn free_ports(ip: IpAddr, n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).map_err(|e| format!("binding a port on {ip}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("reading a port: {e}"))
        })
        .collect()
}

impl EtcdCluster {
    /// Start an `n`-member cluster on loopback in a fresh temporary
    /// directory. Call it from a thread that outlives the cluster (see the
    /// module docs).
    pub fn start(n: usize) -> Result<Self, String> {
        Self::start_on(n, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Start an `n`-member cluster whose clients connect on `client_ip`
    /// (e.g. a test network's gateway, so containers on it can reach etcd).
    pub fn start_on(n: usize, client_ip: IpAddr) -> Result<Self, String> {
        Self::start_with(n, client_ip, &[])
    }

    /// Like [`EtcdCluster::start_on`], every member also given `extra`
    /// flags (e.g. `--quota-backend-bytes 8388608`).
    pub fn start_with(n: usize, client_ip: IpAddr, extra: &[String]) -> Result<Self, String> {
        Self::start_tls(n, client_ip, extra, None)
    }

    /// Like [`EtcdCluster::start_with`]; with `tls` the client URLs are
    /// `https://` and every client must show a certificate from its CA.
    pub fn start_tls(
        n: usize,
        client_ip: IpAddr,
        extra: &[String],
        tls: Option<&TlsFiles>,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("viking-etcd-")
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?;
        let root = dir.path().to_path_buf();
        Self::start_in(n, client_ip, root, Some(dir), extra, tls)
    }

    fn start_in(
        n: usize,
        client_ip: IpAddr,
        root: PathBuf,
        dir: Option<tempfile::TempDir>,
        extra: &[String],
        tls: Option<&TlsFiles>,
    ) -> Result<Self, String> {
        if n == 0 {
            return Err("an etcd cluster needs at least one member".into());
        }
        let mut last_err = String::new();
        // Ports are released before etcd binds them; retry if another
        // process grabbed one in between.
        for attempt in 0..3 {
            let clients = free_ports(client_ip, n)?;
            // Peers, and (with TLS) the plain metrics listeners.
            let local = free_ports(IpAddr::V4(Ipv4Addr::LOCALHOST), 2 * n)?;
            let (peers, metrics) = local.split_at(n);
            let clients: Vec<SocketAddr> = clients
                .into_iter()
                .map(|p| SocketAddr::new(client_ip, p))
                .collect();
            let mut cluster = Self {
                members: Vec::new(),
                extra: extra.to_vec(),
                tls: tls.cloned(),
                dir: None,
                root: root.join(format!("attempt-{attempt}")),
            };
            match cluster
                .launch(&clients, peers, metrics)
                .and_then(|()| cluster.wait_healthy())
            {
                Ok(()) => {
                    cluster.dir = dir;
                    cluster.root = root;
                    return Ok(cluster);
                }
                Err(e) => last_err = e, // `cluster` is dropped: members killed
            }
        }
        Err(last_err)
    }

    fn launch(
        &mut self,
        clients: &[SocketAddr],
        peers: &[u16],
        metrics: &[u16],
    ) -> Result<(), String> {
        let bin = etcd_binary()?;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| format!("creating {}: {e}", self.root.display()))?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", peers[i]);
        let initial_cluster = (0..clients.len())
            .map(|i| format!("m{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        for (i, client) in clients.iter().enumerate() {
            let name = format!("m{i}");
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let client_url = format!("{scheme}://{client}");
            let log = self.root.join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)
                .map_err(|e| format!("creating {}: {e}", log.display()))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(self.root.join(format!("{name}.data")))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(format!("viking-test-{}", peers[0]))
                .arg("--snapshot-count")
                .arg("10000")
                // Fast elections and a 1 s minimum lease TTL.
                .arg("--heartbeat-interval")
                .arg("50")
                .arg("--election-timeout")
                .arg("500")
                .arg("--logger")
                .arg("zap")
                .arg("--log-level")
                .arg("warn")
                .args(&self.extra);
            let mut health = *client;
            if let Some(tls) = &self.tls {
                let metrics_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), metrics[i]);
                cmd.arg("--cert-file")
                    .arg(&tls.cert)
                    .arg("--key-file")
                    .arg(&tls.key)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth")
                    .arg("--listen-metrics-urls")
                    .arg(format!("http://{metrics_addr}"));
                health = metrics_addr;
            }
            let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
            let child = spawn_member(&bin, &args, log_file)?;
            self.members.push(Member {
                name,
                client: *client,
                health,
                client_url,
                child: Some(child),
                log,
                args,
            });
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut all = true;
            for m in &mut self.members {
                if let Some(child) = m.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "etcd member {} exited during startup ({status}); log:\n{}",
                            m.name,
                            tail(&m.log)
                        ));
                    }
                }
                if !healthy(m.health) {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs = self
                    .members
                    .iter()
                    .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(format!(
                    "etcd cluster not healthy after {START_TIMEOUT:?}; logs:\n{logs}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every member's client URL (including killed ones).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The first member's client URL, e.g. `http://127.0.0.1:40123`
    /// (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.members
            .first()
            .map(|m| m.client_url.clone())
            .unwrap_or_default()
    }

    /// The first member's client address without scheme, e.g.
    /// `127.0.0.1:40123`.
    pub fn host_port(&self) -> String {
        self.members
            .first()
            .map(|m| m.client.to_string())
            .unwrap_or_default()
    }

    /// The first member's client port.
    pub fn port(&self) -> u16 {
        self.members.first().map(|m| m.client.port()).unwrap_or(0)
    }

    /// The members' own logs so far (the last lines of each).
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kill member `i` (SIGKILL) and wait for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Start member `i` again after [`EtcdCluster::kill`], on its data
    /// (it rejoins as the member it was), and wait until it answers
    /// `/health`. Nothing to do if it runs.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let bin = etcd_binary()?;
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| format!("no etcd member {i}"))?;
        if m.child.is_none() {
            let log = std::fs::OpenOptions::new()
                .append(true)
                .open(&m.log)
                .map_err(|e| format!("opening {}: {e}", m.log.display()))?;
            m.child = Some(spawn_member(&bin, &m.args, log)?);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy(m.health) {
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd member {} not healthy {START_TIMEOUT:?} after its restart; log:\n{}",
                    m.name,
                    tail(&m.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// How many members the cluster has (killed ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never: it starts with one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The TLS files the members serve with, if any.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Start one member: `bin` with `args`, its output to `log`, killed with
/// the thread that started it.
fn spawn_member(
    bin: &Path,
    args: &[std::ffi::OsString],
    log: std::fs::File,
) -> Result<Child, String> {
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cloning a log handle: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if std::env::consts::ARCH == "aarch64" {
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    set_parent_death_signal(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether the member at `addr` answers `GET /health` with
/// `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// A single-member etcd shared by every test of this process, started on
/// first use. It lives until the process exits: it is started from a thread
/// that never ends, so `PR_SET_PDEATHSIG` kills it when the process does.
/// Tests sharing it must use distinct key prefixes.
pub fn shared_etcd() -> Result<&'static EtcdCluster, String> {
    static SHARED: OnceLock<Result<EtcdCluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            remove_stale_shared_dirs();
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("shared-etcd".into())
                .spawn(move || {
                    let dir = std::env::temp_dir()
                        .join(format!("viking-etcd-shared-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = tx.send(EtcdCluster::start_in(
                        1,
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        dir,
                        None,
                        &[],
                        None,
                    ));
                    loop {
                        std::thread::park();
                    }
                });
            match spawned {
                Ok(_) => rx
                    .recv()
                    .map_err(|e| format!("shared etcd thread died: {e}"))
                    .and_then(|r| r),
                Err(e) => Err(format!("spawning the shared etcd thread: {e}")),
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Remove data directories of shared etcds whose test process is gone.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("viking-etcd-shared-"))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
