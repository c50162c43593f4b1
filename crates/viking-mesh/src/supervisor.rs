//! `viking mesh up`: the supervisor that keeps this machine's part of the
//! mesh running, and starting/stopping it in the background.
//!
//! The supervisor reads `mesh.json`, starts the etcd member (members only:
//! as its child process with `--etcd-binary`, or as a container with a
//! restart policy with `--etcd-image`, through viking-docker's `plain`
//! containers), waits until it is healthy, refreshes
//! the list of etcd endpoints from the member list, then starts
//! `viking server` as its child. A child that exits is started again after
//! a delay that doubles from 1 s to 30 s (back to 1 s after a minute of
//! running). SIGTERM or Ctrl-C stops the server, then etcd, then the
//! supervisor; SIGHUP restarts the server (it stops to restart, keeping
//! embassy's kernel rules, and starts again from the binary at its path: an
//! upgrade). Each child's output is appended to `<data-dir>/<name>.log`
//! and its pid kept in `<data-dir>/<name>.pid`, so a supervisor that was
//! killed leaves nothing the next one cannot clean up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use viking_docker::{DockerRuntime, PlainSpec, Restart, Runtime};
use viking_store::etcd::membership::client_urls;

use crate::state::{url, DataDir, EtcdRunner, MeshState, Role};
use crate::{IoContext, MeshError, Result, ETCD_CLIENT_PORT, ETCD_PEER_PORT};

/// The name of the etcd container in image mode.
pub const ETCD_CONTAINER: &str = "viking-etcd";
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the supervisor waits for its etcd member before starting the
/// server anyway (the server retries on its own).
const ETCD_WAIT: Duration = Duration::from_secs(30);

/// A line in the supervisor's log (stderr, which is `mesh.log` when it runs
/// in the background).
pub(crate) fn log(msg: impl std::fmt::Display) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    eprintln!("[{secs}] viking mesh: {msg}");
}

/// This machine's etcd client URL.
pub fn local_etcd(st: &MeshState) -> String {
    url(&st.ip, ETCD_CLIENT_PORT)
}

/// This machine's etcd peer URL.
pub fn local_peer(st: &MeshState) -> String {
    url(&st.ip, ETCD_PEER_PORT)
}

/// etcd's flags for this member.
pub fn etcd_args(st: &MeshState, dd: &DataDir) -> Vec<String> {
    let client = local_etcd(st);
    let mut listen_client = client.clone();
    let loopback = st
        .ip
        .parse::<std::net::IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(false);
    if !loopback {
        listen_client.push_str(&format!(",{}", url("127.0.0.1", ETCD_CLIENT_PORT)));
    }
    let peer = local_peer(st);
    let file = |p: PathBuf| p.display().to_string();
    [
        ("--name", st.name.clone()),
        ("--data-dir", dd.etcd_dir().display().to_string()),
        ("--listen-client-urls", listen_client),
        ("--advertise-client-urls", client),
        ("--listen-peer-urls", peer.clone()),
        ("--initial-advertise-peer-urls", peer),
        ("--initial-cluster", st.initial_cluster.clone()),
        ("--initial-cluster-state", st.initial_cluster_state.clone()),
        ("--initial-cluster-token", "viking-mesh".to_string()),
        (
            "--quota-backend-bytes",
            st.quota_backend_bytes
                .unwrap_or(crate::options::DEFAULT_QUOTA_BACKEND_BYTES)
                .to_string(),
        ),
        // The second guard behind the leader's compaction.
        ("--auto-compaction-mode", "revision".to_string()),
        (
            "--auto-compaction-retention",
            crate::options::AUTO_COMPACTION_RETENTION.to_string(),
        ),
        // Clients and peers on TLS, and only with a certificate from the
        // cluster's CA: nothing else gets an answer.
        ("--cert-file", file(dd.cert_file())),
        ("--key-file", file(dd.key_file())),
        ("--trusted-ca-file", file(dd.ca_file())),
        ("--peer-cert-file", file(dd.cert_file())),
        ("--peer-key-file", file(dd.key_file())),
        ("--peer-trusted-ca-file", file(dd.ca_file())),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    // Certificates required: etcd's boolean flags take no separate value.
    .chain([
        "--client-cert-auth".to_string(),
        "--peer-client-cert-auth".to_string(),
    ])
    .collect()
}

#[cfg(test)]
mod etcd_flag_tests {
    use super::*;

    /// etcd runs with the mesh's backend quota and auto-compaction.
    #[test]
    fn etcd_gets_its_quota_and_auto_compaction() {
        let d = tempfile::tempdir().expect("tmp");
        let dd = DataDir::new(d.path()).expect("dir");
        let mut st: MeshState = serde_json::from_value(serde_json::json!({
            "v": 2, "name": "n1", "ip": "10.0.0.1", "role": "member", "tags": [],
            "listen": "0.0.0.0:8791", "key": "/viking", "etcd_endpoints": [],
        }))
        .expect("a mesh state without a quota (an older file)");
        let flag = |st: &MeshState, f: &str| {
            let a = etcd_args(st, &dd);
            let i = a
                .iter()
                .position(|x| x == f)
                .unwrap_or_else(|| panic!("{f} in {a:?}"));
            a[i + 1].clone()
        };
        assert_eq!(flag(&st, "--quota-backend-bytes"), "2147483648");
        assert_eq!(flag(&st, "--auto-compaction-mode"), "revision");
        assert_eq!(flag(&st, "--auto-compaction-retention"), "100000");
        st.quota_backend_bytes = Some(8 << 20);
        assert_eq!(flag(&st, "--quota-backend-bytes"), "8388608");
        // TLS for clients and peers, certificates required.
        let a = etcd_args(&st, &dd);
        assert!(a.contains(&"--client-cert-auth".to_string()), "{a:?}");
        assert!(a.contains(&"--peer-client-cert-auth".to_string()), "{a:?}");
        assert_eq!(
            flag(&st, "--listen-client-urls"),
            "https://10.0.0.1:2379,https://127.0.0.1:2379"
        );
        assert_eq!(flag(&st, "--listen-peer-urls"), "https://10.0.0.1:2380");
        assert!(flag(&st, "--trusted-ca-file").ends_with("pki/ca.pem"));
        assert!(crate::options::check_quota(Some(1 << 20)).is_err());
        assert!(crate::options::check_quota(Some(16 << 30)).is_err());
        assert_eq!(crate::options::check_quota(None).ok(), Some(2 << 30));
    }
}

/// `viking server`'s flags for this machine.
pub fn server_args(st: &MeshState, dd: &DataDir) -> Vec<String> {
    let mut a: Vec<String> = [
        "server",
        "--name",
        &st.name,
        "--ip",
        &st.ip,
        "--listen",
        &st.listen,
        "--key",
        &st.key,
        "--data-dir",
        &dd.dir.display().to_string(),
        "--etcd",
        &st.etcd_endpoints.join(","),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The API on TLS with this machine's certificate, which it also shows
    // to etcd and to the other servers.
    for (flag, path) in [
        ("--tls-cert", dd.cert_file()),
        ("--tls-key", dd.key_file()),
        ("--ca", dd.ca_file()),
    ] {
        a.push(flag.into());
        a.push(path.display().to_string());
    }
    if !st.tags.is_empty() {
        a.push("--tags".into());
        a.push(st.tags.join(","));
    }
    a.extend(st.server_args.iter().cloned());
    a
}

/// The path of the running `viking` binary.
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().ctx(|| "finding the viking binary".to_string())
}

/// Whether process `pid` is alive, is not this process, and its command
/// line contains every one of `needles` (so a pid recycled after a reboot is
/// not mistaken for ours).
pub fn alive_with(pid: i32, needles: &[&str]) -> bool {
    if pid <= 0 || pid as u32 == std::process::id() || !is_process(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n))
        }
        Err(_) => false,
    }
}

/// Whether `pid` names a process rather than one of a process's threads:
/// `/proc/<tid>/cmdline` answers for a thread id too, with its process's
/// command line. After a reboot (a fresh pid namespace) the pid recorded by
/// the previous supervisor can be the id of one of the new supervisor's own
/// threads, which must not count as "a supervisor already runs".
fn is_process(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        == Some(pid)
}

/// What identifies each of our processes in its command line.
fn needles(dd: &DataDir, what: &str) -> Vec<String> {
    let dir = dd.dir.display().to_string();
    match what {
        "etcd" => vec!["etcd".into(), dd.etcd_dir().display().to_string()],
        "server" => vec!["server".into(), "--data-dir".into(), dir],
        // `viking mesh up`, or init/join/start --foreground.
        _ => vec!["mesh ".into()],
    }
}

fn is_ours(dd: &DataDir, what: &str, pid: i32) -> bool {
    let n = needles(dd, what);
    let refs: Vec<&str> = n.iter().map(|s| s.as_str()).collect();
    alive_with(pid, &refs)
        && (what != "mesh" || alive_with(pid, &["mesh up"]) || alive_with(pid, &["--foreground"]))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[allow(unsafe_code)]
fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The supervisor's pid, when one runs for this data directory.
pub fn running(dd: &DataDir) -> Option<i32> {
    read_pid(&dd.pid_file("mesh")).filter(|p| is_ours(dd, "mesh", *p))
}

/// Stop a process recorded in `<what>.pid` (if it is still ours): SIGTERM,
/// then SIGKILL after `grace`.
async fn stop_recorded(dd: &DataDir, what: &str, grace: Duration) {
    let file = dd.pid_file(what);
    if let Some(pid) = read_pid(&file) {
        if is_ours(dd, what, pid) {
            log(format!("stopping {what} (pid {pid})"));
            signal(pid, libc::SIGTERM);
            let until = Instant::now() + grace;
            while is_ours(dd, what, pid) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if is_ours(dd, what, pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
    let _ = std::fs::remove_file(file);
}

/// Start `viking mesh up` in the background (its own process group, output
/// to `mesh.log`); returns its pid.
pub fn spawn_detached(dd: &DataDir) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = self_exe()?;
    let log_path = dd.log_file("mesh");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .ctx(|| format!("opening {}", log_path.display()))?;
    let err = out
        .try_clone()
        .ctx(|| format!("opening {}", log_path.display()))?;
    let child = std::process::Command::new(exe)
        .args(["mesh", "up", "--data-dir"])
        .arg(&dd.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .ctx(|| "starting `viking mesh up`".to_string())?;
    Ok(child.id())
}

/// Stop this machine's supervisor and everything it runs (and, in image
/// mode, the etcd container when `etcd_container` is set).
pub async fn stop(dd: &DataDir, etcd_container: bool) -> Result<bool> {
    let was_running = running(dd).is_some();
    // The supervisor stops its children itself; give it time for both.
    stop_recorded(dd, "mesh", STOP_GRACE * 2 + Duration::from_secs(2)).await;
    // Children left by a supervisor that was killed.
    stop_recorded(dd, "server", STOP_GRACE).await;
    stop_recorded(dd, "etcd", STOP_GRACE).await;
    if etcd_container {
        if let Ok(MeshState {
            etcd: Some(EtcdRunner::Image(_)),
            ..
        }) = dd.load()
        {
            if let Err(e) = stop_etcd_container().await {
                log(format!("stopping the etcd container: {e}"));
            }
        }
    }
    Ok(was_running)
}

/// This machine's Docker engine: `DOCKER_HOST`, as the `docker` CLI reads
/// it, else the local socket.
async fn engine() -> Result<DockerRuntime> {
    let endpoint = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| viking_docker::plain::DEFAULT_ENDPOINT.to_string());
    Ok(DockerRuntime::connect(&endpoint).await?)
}

/// Image mode: stop the etcd container (its restart policy then leaves it
/// stopped until it is started again); a missing one is no error.
pub(crate) async fn stop_etcd_container() -> Result<()> {
    engine()
        .await?
        .stop_plain(ETCD_CONTAINER, STOP_GRACE.as_secs() as i64)
        .await?;
    Ok(())
}

/// Image mode: remove the etcd container, running or not; a missing one is
/// no error.
pub(crate) async fn remove_etcd_container() -> Result<()> {
    engine().await?.remove_plain(ETCD_CONTAINER).await?;
    Ok(())
}

/// Image mode: make sure the etcd container exists and runs (`docker run
/// -d --restart unless-stopped --network host`, pulling the image if the
/// engine does not have it).
async fn ensure_etcd_container(st: &MeshState, dd: &DataDir, image: &str) -> Result<()> {
    let docker = engine().await?;
    if docker.inspect_plain(ETCD_CONTAINER).await?.is_some() {
        docker.start_plain(ETCD_CONTAINER).await?;
        return Ok(());
    }
    let etcd_dir = dd.etcd_dir();
    std::fs::create_dir_all(&etcd_dir).ctx(|| format!("creating {}", etcd_dir.display()))?;
    if docker.image_id(image).await?.is_none() {
        log(format!("pulling {image}"));
        viking_docker::pull_quietly(&docker, image).await?;
    }
    let mut command = vec!["etcd".to_string()];
    command.extend(etcd_args(st, dd));
    let spec = PlainSpec {
        name: ETCD_CONTAINER.to_string(),
        role: "etcd".to_string(),
        image: image.to_string(),
        command,
        host_network: true,
        restart: Restart::UnlessStopped,
        binds: vec![
            (etcd_dir.clone(), etcd_dir.display().to_string()),
            (dd.pki_dir(), dd.pki_dir().display().to_string()),
        ],
    };
    docker.create_plain(&spec).await?;
    docker.start_plain(ETCD_CONTAINER).await?;
    Ok(())
}

/// The pauses before a supervised child is started again: 1 s doubling up
/// to 30 s, for as long as it keeps exiting.
fn restart_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .without_max_times()
        .build()
}

/// One supervised child.
struct Slot {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    started: Instant,
    restart_at: Option<Instant>,
    pauses: ExponentialBackoff,
}

enum Event {
    Exited(String),
    Restart,
}

impl Slot {
    fn new(what: &'static str, program: PathBuf, args: Vec<String>) -> Self {
        Self {
            what,
            program,
            args,
            child: None,
            started: Instant::now(),
            restart_at: None,
            pauses: restart_backoff(),
        }
    }

    fn spawn(&mut self, dd: &DataDir) -> Result<()> {
        let path = dd.log_file(self.what);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let err = out
            .try_clone()
            .ctx(|| format!("opening {}", path.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        for var in [
            "VIKING_TOKEN",
            "VIKING_ETCD",
            "VIKING_IP",
            "VIKING_LISTEN",
            "VIKING_KEY",
            "VIKING_TAGS",
            "VIKING_DATA",
            "VIKING_SERVER",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .ctx(|| format!("starting {} ({})", self.what, self.program.display()))?;
        let pid = child.id().unwrap_or(0);
        std::fs::write(dd.pid_file(self.what), format!("{pid}\n"))
            .ctx(|| format!("writing {}", dd.pid_file(self.what).display()))?;
        log(format!("started {} (pid {pid})", self.what));
        self.child = Some(child);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    async fn next(&mut self) -> Event {
        if let Some(c) = self.child.as_mut() {
            let status = match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            return Event::Exited(status);
        }
        match self.restart_at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                Event::Restart
            }
            None => std::future::pending().await,
        }
    }

    fn exited(&mut self, status: &str) {
        self.child = None;
        if self.started.elapsed() > Duration::from_secs(60) {
            self.pauses = restart_backoff();
        }
        let delay = self.pauses.next().unwrap_or(BACKOFF_MAX);
        log(format!(
            "{} exited ({status}); starting it again in {delay:?}",
            self.what
        ));
        self.restart_at = Some(Instant::now() + delay);
    }

    /// Tells the child to stop to restart (SIGHUP); `next` sees it exit
    /// and it is started again.
    fn hangup(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            signal(pid as i32, libc::SIGHUP);
        }
    }

    async fn stop(&mut self, dd: &DataDir) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                signal(pid as i32, libc::SIGTERM);
            }
            if tokio::time::timeout(STOP_GRACE, c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
            log(format!("stopped {}", self.what));
        }
        let _ = std::fs::remove_file(dd.pid_file(self.what));
    }
}

/// How `init`, `join` and `start` poll etcd and the server until they are
/// ready: every 300 ms (the callers bound it in time).
pub(crate) fn poll() -> ConstantBuilder {
    ConstantBuilder::default()
        .with_delay(Duration::from_millis(300))
        .without_max_times()
}

/// Wait until the local etcd member answers with a leader, up to `limit`.
pub async fn wait_etcd(dd: &DataDir, endpoint: &str, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let Ok(members) = dd.members(vec![endpoint.to_string()]) else {
        return false;
    };
    let healthy = || async {
        if members.healthy().await {
            Ok(())
        } else {
            Err(())
        }
    };
    healthy
        .retry(poll())
        .when(|_| Instant::now() < until)
        .await
        .is_ok()
}

/// The endpoints to use: the started members' client URLs, local first.
async fn refresh_endpoints(st: &mut MeshState, dd: &DataDir) {
    let mut known = st.etcd_endpoints.clone();
    if st.role == Role::Member {
        known.retain(|e| *e != local_etcd(st));
        known.insert(0, local_etcd(st));
    }
    let list = match dd.members(known) {
        Ok(m) => m.list().await.map_err(MeshError::from),
        Err(e) => Err(e),
    };
    match list {
        Ok(list) => {
            let mut eps = client_urls(&list);
            if st.role == Role::Member && eps.contains(&local_etcd(st)) {
                eps.retain(|e| *e != local_etcd(st));
                eps.insert(0, local_etcd(st));
            }
            if !eps.is_empty() && eps != st.etcd_endpoints {
                log(format!("etcd endpoints now {}", eps.join(",")));
                st.etcd_endpoints = eps;
                if let Err(e) = dd.save(st) {
                    log(format!("saving the endpoints: {e}"));
                }
            }
        }
        Err(e) => log(format!(
            "cannot list the etcd members ({e}); using {}",
            st.etcd_endpoints.join(",")
        )),
    }
}

/// `viking mesh up`: run this machine's part of the mesh until `shutdown`.
pub async fn up(dd: &DataDir, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut st = dd.load()?;
    // The starter may have recorded this very process already.
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    if let Some(pid) = running(dd).filter(|p| *p != me) {
        return Err(MeshError::Failed(format!(
            "the mesh supervisor already runs here (pid {pid}); `viking mesh stop` stops it"
        )));
    }
    std::fs::write(dd.pid_file("mesh"), format!("{}\n", std::process::id()))
        .ctx(|| format!("writing {}", dd.pid_file("mesh").display()))?;
    // Leftovers of a supervisor that was killed.
    stop_recorded(dd, "server", STOP_GRACE).await;
    stop_recorded(dd, "etcd", STOP_GRACE).await;
    log(format!(
        "starting {} ({:?}) in {}",
        st.name,
        st.role,
        dd.dir.display()
    ));
    tokio::pin!(shutdown);

    let mut etcd: Option<Slot> = None;
    if st.role == Role::Member {
        match st.etcd.clone() {
            Some(EtcdRunner::Image(image)) => {
                if let Err(e) = ensure_etcd_container(&st, dd, &image).await {
                    log(format!("starting the etcd container: {e}"));
                }
            }
            Some(EtcdRunner::Binary(bin)) => {
                let mut slot = Slot::new("etcd", bin, etcd_args(&st, dd));
                slot.spawn(dd)?;
                etcd = Some(slot);
            }
            None => {}
        }
        let ep = local_etcd(&st);
        tokio::select! {
            ok = wait_etcd(dd, &ep, ETCD_WAIT) => {
                if !ok {
                    log(format!("etcd at {ep} has no leader after {ETCD_WAIT:?}; starting the server anyway"));
                }
            }
            _ = &mut shutdown => {
                if let Some(s) = etcd.as_mut() { s.stop(dd).await; }
                let _ = std::fs::remove_file(dd.pid_file("mesh"));
                return Ok(());
            }
        }
    }
    refresh_endpoints(&mut st, dd).await;
    let mut server = Slot::new("server", self_exe()?, server_args(&st, dd));
    server.spawn(dd)?;

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let etcd_event = async {
            match etcd.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            // An upgrade: the server stops to restart (its embassy rules
            // stay, so traffic keeps flowing) and is started again, from
            // the binary now at its path.
            _ = hangup => {
                log("SIGHUP: restarting the server");
                server.hangup();
            }
            ev = etcd_event => {
                if let Some(s) = etcd.as_mut() {
                    match ev {
                        Event::Exited(status) => s.exited(&status),
                        Event::Restart => {
                            if let Err(e) = s.spawn(dd) {
                                log(format!("{e}"));
                                s.exited("could not start");
                            }
                        }
                    }
                }
            }
            ev = server.next() => match ev {
                Event::Exited(status) => server.exited(&status),
                Event::Restart => {
                    // The member list may have changed while it was down.
                    refresh_endpoints(&mut st, dd).await;
                    server.args = server_args(&st, dd);
                    if let Err(e) = server.spawn(dd) {
                        log(format!("{e}"));
                        server.exited("could not start");
                    }
                }
            },
        }
    }
    log("stopping");
    server.stop(dd).await;
    if let Some(s) = etcd.as_mut() {
        s.stop(dd).await;
    }
    let _ = std::fs::remove_file(dd.pid_file("mesh"));
    log("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause before each restart of a child that keeps exiting.
    fn pause(slot: &mut Slot) -> Duration {
        slot.exited("exit status: 1");
        slot.restart_at.expect("a restart is due") - Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashing_child_is_restarted_after_a_doubling_pause() {
        let mut slot = Slot::new("server", PathBuf::from("/bin/false"), vec![]);
        let secs: Vec<u64> = (0..8).map(|_| pause(&mut slot).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        // After a minute of running, back to the shortest pause.
        slot.started = Instant::now();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(pause(&mut slot), BACKOFF_MIN);
        // Started again (spawn sets `started`), and it exits at once.
        slot.started = Instant::now();
        assert_eq!(pause(&mut slot), BACKOFF_MIN * 2);
    }

    #[test]
    fn a_thread_id_is_not_a_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(is_process(me));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // `/proc/thread-self` is `<pid>/task/<tid>`.
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            let tid: i32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
            tid_tx.send(tid).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, me);
        // The thread's id answers in /proc with this process's command line...
        assert!(std::path::Path::new(&format!("/proc/{tid}/cmdline")).exists());
        // ... but it is not a process, so not a supervisor either.
        assert!(!is_process(tid));
        assert!(!alive_with(tid, &[]));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
    }
}
