//! The `viking mesh` commands: `init`, `join`, `status`, `leave`, `start`,
//! `stop` and `up`.
//!
//! `init` and `join` check everything they can before they change
//! anything (the data directory is fresh, the token is accepted, the name is
//! free, the ports are free), and undo their own steps when a later one
//! fails: the supervisor is stopped, an etcd member they added is removed
//! again and the files they wrote are deleted.
//!
//! The join token is the cluster token. `join` proves it to the existing
//! cluster by calling the viking server's API with it (the server compares
//! it in constant time and answers 401 otherwise) before it touches etcd;
//! nothing derived from the token is stored in etcd. The joiner keeps it in
//! `<data-dir>/token` (mode 0600), where its server reads it: it is never on
//! the server's command line.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use serde::Serialize;
use tokio::time::Instant;
use viking_client::api::HostView;
use viking_client::{Client, ClientError};
use viking_core::keys;
use viking_core::records::{decode, HostRecord};
use viking_store::etcd::membership::{client_urls, initial_cluster, Member, Membership};
use viking_store::{EtcdStore, Store, StoreExt};

use crate::record::{self, MeshRecord, DEFAULT_KEY};
use crate::state::{new_token, url, DataDir, EtcdRunner, MeshState, Role, STATE_VERSION};
use crate::supervisor::{self, local_etcd, local_peer, log};
use crate::{
    IoContext, MeshError, Result, DEFAULT_API_PORT, DEFAULT_MAX_MEMBERS, ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
};

const ETCD_READY: Duration = Duration::from_secs(60);
const SERVER_READY: Duration = Duration::from_secs(60);
const PROMOTE_FOR: Duration = Duration::from_secs(60);
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// `viking mesh init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub tags: Vec<String>,
    /// The cluster token (default: a new random one).
    pub token: Option<String>,
    /// The viking server's `--listen` (default `0.0.0.0:8791`).
    pub listen: Option<String>,
    pub key: String,
    pub etcd_binary: Option<PathBuf>,
    pub etcd_image: Option<String>,
    /// Run the supervisor in this process instead of in the background.
    pub foreground: bool,
    /// Extra arguments for `viking server`.
    pub server_args: Vec<String>,
}

/// `viking mesh join`.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub data_dir: PathBuf,
    /// A viking server of the mesh: `HOST[:PORT]` or `http://HOST:PORT`.
    pub addr: String,
    pub token: String,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub tags: Vec<String>,
    pub listen: Option<String>,
    pub etcd_binary: Option<PathBuf>,
    pub etcd_image: Option<String>,
    /// How many etcd members the mesh grows to (default 3).
    pub max_members: Option<usize>,
    pub foreground: bool,
    pub server_args: Vec<String>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn check_name(name: Option<String>) -> Result<String> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(hostname);
    viking_core::job::validate_name(&name)
        .map_err(|e| MeshError::Invalid(format!("--name {name:?}: {}", e.message)))?;
    Ok(name)
}

fn check_tags(tags: &[String]) -> Result<Vec<String>> {
    let tags: Vec<String> = tags.iter().filter(|t| !t.is_empty()).cloned().collect();
    for t in &tags {
        if t.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(MeshError::Invalid(format!(
                "--tags: {t:?} is not a valid tag"
            )));
        }
    }
    Ok(tags)
}

/// The address this machine uses to reach `target` (or the default route).
fn detect_ip(target: Option<&str>) -> Result<String> {
    let to: SocketAddr = match target.and_then(|t| t.to_socket_addrs().ok()?.next()) {
        Some(a) => a,
        None => SocketAddr::from(([192, 0, 2, 1], 9)),
    };
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        "[::]:0"
            .parse()
            .map_err(|_| MeshError::Failed("bad address".into()))?
    };
    // A UDP "connect" sends nothing: it only picks the route.
    let sock = std::net::UdpSocket::bind(bind).ctx(|| "finding this machine's address".into())?;
    sock.connect(to)
        .and_then(|_| sock.local_addr())
        .map(|a| a.ip().to_string())
        .map_err(|e| {
            MeshError::Invalid(format!(
                "cannot find this machine's address ({e}): pass --ip"
            ))
        })
}

fn check_ip(ip: &str) -> Result<()> {
    let a: IpAddr = ip
        .parse()
        .map_err(|_| MeshError::Invalid(format!("--ip {ip:?} is not an IP address")))?;
    if a.is_unspecified() {
        return Err(MeshError::Invalid(format!(
            "--ip {ip} must be an address other machines can reach"
        )));
    }
    Ok(())
}

fn check_listen(listen: Option<String>) -> Result<String> {
    let l = listen.unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_API_PORT}"));
    l.parse::<SocketAddr>()
        .map_err(|_| MeshError::Invalid(format!("--listen {l:?} must be ADDR:PORT")))?;
    Ok(l)
}

fn check_token(t: &str) -> Result<()> {
    if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(MeshError::Invalid(
            "--token must be at least 16 characters without spaces".into(),
        ));
    }
    Ok(())
}

/// Fails when something already listens on one of the ports.
fn check_ports_free(addrs: &[String]) -> Result<()> {
    for a in addrs {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            if let Err(e) = std::net::TcpListener::bind(sa) {
                return Err(MeshError::Failed(format!(
                    "cannot use {a} ({e}): is another etcd or viking server running on this machine?"
                )));
            }
        }
    }
    Ok(())
}

fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// etcd's binary: `--etcd-binary`, else `etcd` on PATH.
fn etcd_runner(binary: Option<PathBuf>, image: Option<String>) -> Result<EtcdRunner> {
    if let Some(i) = image.filter(|i| !i.is_empty()) {
        return Ok(EtcdRunner::Image(i));
    }
    if let Some(b) = binary {
        if !b.is_file() {
            return Err(MeshError::Invalid(format!(
                "--etcd-binary {} is not a file",
                b.display()
            )));
        }
        return Ok(EtcdRunner::Binary(b));
    }
    // The default: etcd's official image, as a container with a restart
    // policy on this machine's Docker engine, which survives a reboot.
    Ok(EtcdRunner::Image(DEFAULT_ETCD_IMAGE.to_string()))
}

/// The etcd image used when neither `--etcd-image` nor `--etcd-binary` is
/// given: the etcd project's official release image.
pub const DEFAULT_ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";

/// The last `n` lines of `<data-dir>/<what>.log`.
fn tail(dd: &DataDir, what: &str, n: usize) -> String {
    let text = std::fs::read_to_string(dd.log_file(what)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn with_logs(e: MeshError, dd: &DataDir, role: Role) -> MeshError {
    let mut msg = e.to_string();
    let mut logs = vec!["mesh", "server"];
    if role == Role::Member {
        logs.insert(1, "etcd");
    }
    for what in logs {
        let t = tail(dd, what, 12);
        if !t.is_empty() {
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{t}",
                dd.log_file(what).display()
            ));
        }
    }
    MeshError::Failed(msg)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The supervisor, started in the background or in this process.
enum Launched {
    Background,
    Foreground {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<()>>,
    },
}

fn launch(dd: &DataDir, foreground: bool) -> Result<Launched> {
    if !foreground {
        supervisor::spawn_detached(dd)?;
        return Ok(Launched::Background);
    }
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let dd2 = dd.clone();
    let task = tokio::spawn(async move {
        let stopped = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = rx => {}
            }
        };
        supervisor::up(&dd2, stopped).await
    });
    Ok(Launched::Foreground { stop, task })
}

impl Launched {
    /// Undo: stop the supervisor and what it runs.
    async fn abort(self, dd: &DataDir) {
        match self {
            Launched::Background => {
                let _ = supervisor::stop(dd, true).await;
            }
            Launched::Foreground { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
        }
        if let Ok(MeshState {
            etcd: Some(EtcdRunner::Image(_)),
            ..
        }) = dd.load()
        {
            let _ = supervisor::docker(&["rm", "-f", supervisor::ETCD_CONTAINER]).await;
        }
    }

    /// Foreground: keep running until the supervisor ends.
    async fn wait(self) -> Result<()> {
        match self {
            Launched::Background => Ok(()),
            Launched::Foreground { stop, task } => {
                let r = task
                    .await
                    .map_err(|e| MeshError::Failed(format!("the supervisor failed: {e}")))?;
                drop(stop);
                r
            }
        }
    }
}

/// Wait until the viking server on this machine answers ping.
async fn wait_server(st: &MeshState, token: &str, limit: Duration) -> Result<()> {
    let port = st
        .listen
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_API_PORT);
    let api = url(&st.ip, port);
    let client = Client::new(&api, Some(token.to_string()))?;
    let until = Instant::now() + limit;
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            client.json::<serde_json::Value>(Method::GET, "/v1/ping", None),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(MeshError::Failed(format!(
                "the viking server at {api} did not answer within {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl From<ClientError> for MeshError {
    fn from(e: ClientError) -> Self {
        MeshError::Failed(e.to_string())
    }
}

/// `viking mesh init`: the first machine of a mesh.
pub async fn init(o: InitOptions) -> Result<()> {
    let dd = DataDir::new(&o.data_dir)?;
    dd.ensure_fresh()?;
    let name = check_name(o.name)?;
    let ip = match o.ip {
        Some(ip) => ip,
        None => detect_ip(None)?,
    };
    check_ip(&ip)?;
    let tags = check_tags(&o.tags)?;
    let listen = check_listen(o.listen)?;
    let runner = etcd_runner(o.etcd_binary, o.etcd_image)?;
    let (token, new_token_file) = match o.token.filter(|t| !t.is_empty()) {
        Some(t) => (t, true),
        None => match dd.token() {
            // A token left by an earlier single-machine server: keep it, so
            // the local CLI keeps working.
            Ok(t) if !t.is_empty() => (t, false),
            _ => (new_token()?, true),
        },
    };
    check_token(&token)?;
    check_ports_free(&[
        sock(&ip, ETCD_CLIENT_PORT),
        sock(&ip, ETCD_PEER_PORT),
        listen.clone(),
    ])?;
    let peer = url(&ip, ETCD_PEER_PORT);
    let st = MeshState {
        v: STATE_VERSION,
        name: name.clone(),
        ip: ip.clone(),
        role: Role::Member,
        tags,
        listen,
        key: o.key,
        etcd_endpoints: vec![url(&ip, ETCD_CLIENT_PORT)],
        initial_cluster: format!("{name}={peer}"),
        initial_cluster_state: "new".into(),
        etcd: Some(runner),
        server_args: o.server_args,
    };
    let undo_files = |dd: &DataDir| {
        let token = dd.token().ok();
        dd.remove_mesh_files();
        if !new_token_file {
            if let Some(t) = token {
                let _ = dd.save_token(&t);
            }
        }
    };
    let setup = async {
        if new_token_file {
            dd.save_token(&token)?;
        }
        dd.save(&st)
    };
    if let Err(e) = setup.await {
        undo_files(&dd);
        return Err(e);
    }
    let launched = match launch(&dd, o.foreground) {
        Ok(l) => l,
        Err(e) => {
            undo_files(&dd);
            return Err(e);
        }
    };
    let ready = async {
        if !supervisor::wait_etcd(&local_etcd(&st), ETCD_READY).await {
            return Err(MeshError::Failed(format!(
                "etcd at {} did not become healthy within {ETCD_READY:?}",
                local_etcd(&st)
            )));
        }
        // What a joining machine must learn from the mesh.
        record::write(
            &st.etcd_endpoints,
            &MeshRecord {
                key: st.key.clone(),
            },
        )
        .await?;
        wait_server(&st, &token, SERVER_READY).await
    };
    if let Err(e) = ready.await {
        let e = with_logs(e, &dd, Role::Member);
        launched.abort(&dd).await;
        undo_files(&dd);
        return Err(e);
    }
    let port = st
        .listen
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_API_PORT);
    let data_flag = if o.data_dir == Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", o.data_dir.display())
    };
    println!(
        "{name}: etcd member and viking server running at {ip} (data in {}).",
        dd.dir.display()
    );
    println!("To add a machine to this mesh, run on it:");
    println!();
    println!(
        "  viking mesh join {} --token {token}{data_flag}",
        sock(&ip, port)
    );
    println!();
    launched.wait().await
}

/// The data directory the CLI uses by default for root.
const DEFAULT_DATA_DIR: &str = "/var/lib/viking";

/// `HOST`, `HOST:PORT` or `http://HOST:PORT` as `(host, port)`.
fn parse_addr(addr: &str) -> Result<(String, u16)> {
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let rest = rest.trim_end_matches('/');
    let bad = || MeshError::Invalid(format!("{addr:?} is not HOST[:PORT]"));
    if rest.is_empty() || rest.contains('/') || addr.starts_with("https://") {
        return Err(bad());
    }
    if let Ok(sa) = rest.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = rest
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok((ip.to_string(), DEFAULT_API_PORT));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        None => Ok((rest.to_string(), DEFAULT_API_PORT)),
    }
}

/// Ask the mesh's server for its hosts with the token: proves the token.
async fn hosts_with_token(host: &str, port: u16, token: &str) -> Result<Vec<HostView>> {
    let api = url(host, port);
    let client = Client::new(&api, Some(token.to_string()))?;
    let r = tokio::time::timeout(
        API_TIMEOUT,
        client.json::<Vec<HostView>>(Method::GET, "/v1/hosts", None),
    )
    .await;
    match r {
        Err(_) => Err(MeshError::Unreachable {
            what: "the viking server".into(),
            addr: api,
            reason: format!("no answer within {API_TIMEOUT:?}"),
        }),
        Ok(Err(ClientError::Connect { reason, .. })) => Err(MeshError::Unreachable {
            what: "the viking server".into(),
            addr: api,
            reason,
        }),
        Ok(Err(e)) if e.status() == Some(401) => Err(MeshError::WrongToken(api)),
        Ok(Err(e)) => Err(MeshError::Failed(format!(
            "asking {api} for its hosts: {e}"
        ))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// The cluster's store prefix (`--key`), which this machine's server must
/// use too. The server's ping says it when it knows to; otherwise the mesh
/// record that `init` wrote in etcd does; a mesh made before that record
/// existed uses the default, `/viking`.
async fn cluster_key(host: &str, port: u16, token: &str, etcd: &[String]) -> Result<String> {
    /// The part of the ping answer read here.
    #[derive(serde::Deserialize)]
    struct Ping {
        #[serde(default)]
        key: Option<String>,
    }
    let api = url(host, port);
    let client = Client::new(&api, Some(token.to_string()))?;
    let ping = tokio::time::timeout(
        API_TIMEOUT,
        client.json::<Ping>(Method::GET, "/v1/ping", None),
    )
    .await
    .map_err(|_| MeshError::Unreachable {
        what: "the viking server".into(),
        addr: api.clone(),
        reason: format!("no answer within {API_TIMEOUT:?}"),
    })??;
    let key = match ping.key {
        Some(k) => k,
        None => match record::read(etcd).await? {
            Some(r) => r.key,
            None => DEFAULT_KEY.to_string(),
        },
    };
    if !key.starts_with('/') || key.len() < 2 || key.ends_with('/') {
        return Err(MeshError::Failed(format!(
            "the mesh at {api} gives {key:?} as its store prefix, which is not an absolute prefix like /viking"
        )));
    }
    Ok(key)
}

/// `viking mesh join`: add this machine to the mesh of the server at
/// `addr`.
pub async fn join(o: JoinOptions) -> Result<()> {
    let dd = DataDir::new(&o.data_dir)?;
    dd.ensure_fresh()?;
    let (host, port) = parse_addr(&o.addr)?;
    let name = check_name(o.name)?;
    let tags = check_tags(&o.tags)?;
    let listen = check_listen(o.listen)?;
    if o.token.is_empty() {
        return Err(MeshError::Invalid(
            "--token is required (printed by `viking mesh init`)".into(),
        ));
    }
    // 1. The token, against the existing cluster's API.
    let hosts = hosts_with_token(&host, port, &o.token).await?;
    let ip = match o.ip {
        Some(ip) => ip,
        None => detect_ip(Some(&sock(&host, port)))?,
    };
    check_ip(&ip)?;
    if hosts.iter().any(|h| h.alive && h.host.name == name) {
        return Err(MeshError::NameTaken(name));
    }
    if let Some(h) = hosts.iter().find(|h| h.alive && h.host.ip == ip) {
        return Err(MeshError::Failed(format!(
            "{ip} is already in the mesh as {:?}: this machine has joined already (with another --data-dir?)",
            h.host.name
        )));
    }
    // 2. etcd: at the given address first, then at the other servers'.
    let mut candidates = vec![url(&host, ETCD_CLIENT_PORT)];
    for h in hosts.iter().filter(|h| h.alive) {
        let c = url(&h.host.ip, ETCD_CLIENT_PORT);
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    let mut list = Membership::new(candidates).list().await?;
    let my_peer = url(&ip, ETCD_PEER_PORT);
    if list.iter().any(|m| m.name == name) {
        return Err(MeshError::NameTaken(name));
    }
    let endpoints = client_urls(&list);
    let cluster = Membership::new(endpoints.clone());
    let key = cluster_key(&host, port, &o.token, &endpoints).await?;
    // A member added by an earlier attempt from this machine that never
    // started: take it out again.
    for m in list.iter().filter(|m| m.name.is_empty()) {
        if m.peer_urls.contains(&my_peer) {
            cluster.remove(m.id).await?;
        } else {
            return Err(MeshError::Failed(format!(
                "etcd member {:x} ({}) was added but has not started: another machine is joining; \
                 try again in a minute (or remove it: etcdctl member remove {:x})",
                m.id,
                m.peer_urls.join(","),
                m.id
            )));
        }
    }
    list.retain(|m| !m.name.is_empty());
    if let Some(m) = list.iter().find(|m| m.learner) {
        return Err(MeshError::Failed(format!(
            "etcd member {} is still joining (a learner); try again in a minute",
            m.name
        )));
    }
    let max = o.max_members.unwrap_or(DEFAULT_MAX_MEMBERS).max(1);
    let role = if list.len() < max {
        Role::Member
    } else {
        Role::Server
    };
    let runner = match role {
        Role::Member => Some(etcd_runner(o.etcd_binary, o.etcd_image)?),
        Role::Server => None,
    };
    let mut ports = vec![listen.clone()];
    if role == Role::Member {
        ports.push(sock(&ip, ETCD_CLIENT_PORT));
        ports.push(sock(&ip, ETCD_PEER_PORT));
    }
    check_ports_free(&ports)?;
    let mut st = MeshState {
        v: STATE_VERSION,
        name: name.clone(),
        ip: ip.clone(),
        role,
        tags,
        listen,
        key,
        etcd_endpoints: endpoints.clone(),
        initial_cluster: String::new(),
        initial_cluster_state: String::new(),
        etcd: runner,
        server_args: o.server_args,
    };
    // 3. Add the member (a learner: it does not count for the quorum until
    //    it has caught up and is promoted).
    let mut added: Option<u64> = None;
    if role == Role::Member {
        let (id, now) = cluster.add_learner(&my_peer).await?;
        added = Some(id);
        st.initial_cluster = initial_cluster(&now, id, &name);
        st.initial_cluster_state = "existing".into();
        st.etcd_endpoints.insert(0, local_etcd(&st));
    }
    let undo_member = |id: Option<u64>| {
        let cluster = cluster.clone();
        async move {
            if let Some(id) = id {
                for _ in 0..5 {
                    match cluster.remove(id).await {
                        Ok(()) => break,
                        Err(e) => log(format!("removing the etcd member {id:x} again: {e}")),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    let setup = async {
        dd.save_token(&o.token)?;
        dd.save(&st)?;
        launch(&dd, o.foreground)
    };
    let launched = match setup.await {
        Ok(l) => l,
        Err(e) => {
            undo_member(added).await;
            dd.remove_mesh_files();
            return Err(e);
        }
    };
    // 4. Wait for the member, promote it, wait for the server.
    let ready = async {
        if let Some(id) = added {
            let ep = local_etcd(&st);
            if !supervisor::wait_etcd(&ep, ETCD_READY).await {
                return Err(MeshError::Failed(format!(
                    "etcd at {ep} did not join within {ETCD_READY:?}"
                )));
            }
            promote_when_ready(&cluster, id).await?;
        }
        wait_server(&st, &o.token, SERVER_READY).await
    };
    if let Err(e) = ready.await {
        let e = with_logs(e, &dd, role);
        launched.abort(&dd).await;
        undo_member(added).await;
        dd.remove_mesh_files();
        return Err(e);
    }
    match role {
        Role::Member => println!(
            "{name}: joined the mesh at {ip} as an etcd member ({} of {max}) and viking server.",
            list.len() + 1
        ),
        Role::Server => println!(
            "{name}: joined the mesh at {ip} as a viking server (etcd already has {} members).",
            list.len()
        ),
    }
    launched.wait().await
}

/// Promote a learner, retrying while it is still catching up.
async fn promote_when_ready(cluster: &Membership, id: u64) -> Result<()> {
    let until = Instant::now() + PROMOTE_FOR;
    loop {
        match cluster.promote(id).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < until => {
                tracing::debug!("promote {id:x}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(MeshError::Failed(format!(
                    "the new etcd member did not catch up within {PROMOTE_FOR:?}: {e}"
                )))
            }
        }
    }
}

/// One etcd member in `viking mesh status`.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    /// Empty while an added member has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub healthy: bool,
    pub leader: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One viking server in `viking mesh status`.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub ip: String,
    pub api: String,
    pub tags: Vec<String>,
    pub alive: bool,
}

/// `viking mesh status --json`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub name: String,
    pub role: Role,
    pub supervisor: bool,
    pub members: Vec<MemberView>,
    pub servers: Vec<ServerView>,
}

fn endpoints_of(st: &MeshState) -> Vec<String> {
    let mut eps = st.etcd_endpoints.clone();
    if st.role == Role::Member && !eps.contains(&local_etcd(st)) {
        eps.insert(0, local_etcd(st));
    }
    eps
}

async fn servers(endpoints: &[String], key: &str) -> Result<Vec<ServerView>> {
    let store = tokio::time::timeout(Duration::from_secs(15), EtcdStore::connect(endpoints, key))
        .await
        .map_err(|_| MeshError::Etcd("no answer within 15s".into()))?
        .map_err(|e| MeshError::Etcd(e.to_string()))?;
    let read = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let (kvs, _) = store
                .list(prefix)
                .await
                .map_err(|e| MeshError::Etcd(e.to_string()))?;
            Ok::<Vec<HostRecord>, MeshError>(
                kvs.iter()
                    .filter_map(|kv| decode::<HostRecord>(&kv.value).ok())
                    .collect(),
            )
        }
    };
    let alive = read(keys::HOSTS).await?;
    let mut all: std::collections::BTreeMap<String, ServerView> = read(keys::FLEET)
        .await?
        .into_iter()
        .map(|h| (h.name.clone(), view(h, false)))
        .collect();
    for h in alive {
        all.insert(h.name.clone(), view(h, true));
    }
    Ok(all.into_values().collect())
}

fn view(h: HostRecord, alive: bool) -> ServerView {
    ServerView {
        name: h.name,
        ip: h.ip,
        api: h.api,
        tags: h.tags,
        alive,
    }
}

/// `viking mesh status`: etcd's members with health and leader, and the
/// viking servers.
pub async fn status(data_dir: &Path, json: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let eps = endpoints_of(&st);
    let list = Membership::new(eps.clone()).list().await?;
    let mut views = Vec::new();
    for m in list {
        let s = match m.client_urls.first() {
            Some(u) => Membership::new(vec![u.clone()])
                .status()
                .await
                .map_err(MeshError::from),
            None => Err(MeshError::Failed("not started".into())),
        };
        let (healthy, leader, error) = match s {
            Ok(s) => (
                s.is_healthy(),
                s.leader == m.id,
                (!s.errors.is_empty()).then(|| s.errors.join("; ")),
            ),
            Err(e) => (false, false, Some(e.to_string())),
        };
        views.push(MemberView {
            id: m.id,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            learner: m.learner,
            healthy,
            leader,
            error,
        });
    }
    let servers = servers(&eps, &st.key).await?;
    let v = StatusView {
        name: st.name.clone(),
        role: st.role,
        supervisor: supervisor::running(&dd).is_some(),
        members: views,
        servers,
    };
    if json {
        let s = serde_json::to_string_pretty(&v)
            .map_err(|e| MeshError::Failed(format!("encoding the status: {e}")))?;
        println!("{s}");
        return Ok(());
    }
    println!(
        "this machine: {} ({:?}), supervisor {}",
        v.name,
        v.role,
        if v.supervisor { "running" } else { "stopped" }
    );
    println!();
    let mut rows = vec![vec![
        "ETCD MEMBER".to_string(),
        "ID".into(),
        "PEER URL".into(),
        "CLIENT URL".into(),
        "HEALTH".into(),
        "ROLE".into(),
    ]];
    for m in &v.members {
        rows.push(vec![
            if m.name.is_empty() {
                "(starting)".into()
            } else {
                m.name.clone()
            },
            format!("{:x}", m.id),
            m.peer_urls.join(","),
            m.client_urls.join(","),
            match (&m.error, m.healthy) {
                (_, true) => "healthy".into(),
                (Some(e), false) => format!("unhealthy: {e}"),
                (None, false) => "unhealthy".into(),
            },
            if m.leader {
                "leader".into()
            } else if m.learner {
                "learner".into()
            } else {
                "follower".into()
            },
        ]);
    }
    print_table(&rows);
    println!();
    let mut rows = vec![vec![
        "SERVER".to_string(),
        "ADDRESS".into(),
        "STATUS".into(),
        "TAGS".into(),
    ]];
    for s in &v.servers {
        rows.push(vec![
            s.name.clone(),
            s.api.clone(),
            if s.alive { "alive" } else { "gone" }.into(),
            s.tags.join(","),
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `viking mesh leave`: take this machine out of the mesh.
pub async fn leave(data_dir: &Path, force: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let eps = endpoints_of(&st);
    let mut last_member = false;
    let mut remaining: Vec<String> = eps.clone();
    if st.role == Role::Member {
        match Membership::new(eps.clone()).list().await {
            Ok(list) => {
                let me = list
                    .iter()
                    .find(|m| m.name == st.name || m.peer_urls.contains(&local_peer(&st)));
                let others: Vec<Member> = list
                    .iter()
                    .filter(|m| Some(m.id) != me.map(|m| m.id))
                    .cloned()
                    .collect();
                remaining = client_urls(&others);
                if others.is_empty() {
                    last_member = true;
                    let alive: Vec<String> = servers(&eps, &st.key)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|s| s.alive && s.name != st.name)
                        .map(|s| s.name)
                        .collect();
                    if !alive.is_empty() && !force {
                        return Err(MeshError::Failed(format!(
                            "{} runs the last etcd member and {} still use it: \
                             run `viking mesh leave` on them first (or --force to end the mesh)",
                            st.name,
                            alive.join(", ")
                        )));
                    }
                } else if let Some(me) = me {
                    let ids: Vec<String> = others.iter().map(|m| m.name.clone()).collect();
                    Membership::new(remaining.clone())
                        .remove(me.id)
                        .await
                        .map_err(|e| {
                            MeshError::Failed(format!(
                                "removing this machine's etcd member through {}: {e}",
                                ids.join(", ")
                            ))
                        })?;
                    println!("removed etcd member {} ({:x})", st.name, me.id);
                }
            }
            Err(e) if force => log(format!("cannot list the etcd members ({e}); --force")),
            Err(e) => return Err(e.into()),
        }
    }
    supervisor::stop(&dd, true).await?;
    if matches!(st.etcd, Some(EtcdRunner::Image(_))) && st.role == Role::Member {
        let _ = supervisor::docker(&["rm", "-f", supervisor::ETCD_CONTAINER]).await;
    }
    println!("stopped the viking server{}", {
        if st.role == Role::Member {
            " and etcd"
        } else {
            ""
        }
    });
    if !last_member {
        let gone = async {
            let store = EtcdStore::connect(&remaining, &st.key)
                .await
                .map_err(|e| MeshError::Etcd(e.to_string()))?;
            for k in [keys::host(&st.name), keys::fleet(&st.name)] {
                store
                    .delete(&k)
                    .await
                    .map_err(|e| MeshError::Etcd(e.to_string()))?;
            }
            Ok::<(), MeshError>(())
        };
        match tokio::time::timeout(Duration::from_secs(20), gone).await {
            Ok(Ok(())) => println!("removed {} from the fleet", st.name),
            Ok(Err(e)) if force => log(format!("removing {} from floki: {e}", st.name)),
            Ok(Err(e)) => return Err(e),
            Err(_) if force => log("removing from floki timed out"),
            Err(_) => {
                return Err(MeshError::Etcd(
                    "removing this server from floki timed out".into(),
                ))
            }
        }
    }
    dd.remove_mesh_files();
    println!("{} has left the mesh", st.name);
    Ok(())
}

/// `viking mesh start`: bring this machine's part of the mesh back (after
/// `stop` or a reboot) from the data directory.
pub async fn start(data_dir: &Path, foreground: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    if let Some(pid) = supervisor::running(&dd) {
        println!("{}: already running (supervisor pid {pid})", st.name);
        return Ok(());
    }
    let token = dd.token()?;
    let launched = launch(&dd, foreground)?;
    let ready = async {
        if st.role == Role::Member && !supervisor::wait_etcd(&local_etcd(&st), ETCD_READY).await {
            return Err(MeshError::Failed(format!(
                "etcd at {} has no leader after {ETCD_READY:?} (are the other members down?); \
                 the supervisor keeps trying",
                local_etcd(&st)
            )));
        }
        wait_server(&st, &token, SERVER_READY).await
    };
    if let Err(e) = ready.await {
        return Err(with_logs(e, &dd, st.role));
    }
    println!("{}: running", st.name);
    launched.wait().await
}

/// `viking mesh stop`: stop this machine's server and etcd member (it stays
/// in the mesh; `start` brings it back).
pub async fn stop(data_dir: &Path) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let was = supervisor::stop(&dd, true).await?;
    println!(
        "{}: {}",
        st.name,
        if was { "stopped" } else { "was not running" }
    );
    Ok(())
}

/// `viking mesh up`: the supervisor, in the foreground (what a systemd unit
/// runs).
pub async fn up(data_dir: &Path, shutdown: impl Future<Output = ()>) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    supervisor::up(&dd, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_addr("10.0.0.1").unwrap(), ("10.0.0.1".into(), 8791));
        assert_eq!(parse_addr("10.0.0.1:9").unwrap(), ("10.0.0.1".into(), 9));
        assert_eq!(
            parse_addr("http://h.example:80/").unwrap(),
            ("h.example".into(), 80)
        );
        assert!(parse_addr("https://x:1").is_err());
        assert!(parse_addr("").is_err());
    }
}
