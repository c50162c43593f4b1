//! `viking mesh join`: add this machine to a mesh, as an etcd member (a
//! learner first, promoted once it has caught up) while etcd has fewer than
//! `--max-members`, else as a viking server only.
//!
//! The join token is the cluster token. `join` proves it to the existing
//! cluster by calling the viking server's API with it (the server compares
//! it in constant time and answers 401 otherwise) before it touches etcd;
//! nothing derived from the token is stored in etcd. The joiner keeps it in
//! `<data-dir>/token` (mode 0600), where its server reads it: it is never on
//! the server's command line.
//!
//! It checks everything it can before it changes anything (the token is
//! accepted, the name is free, the ports are free), and undoes its own steps
//! when a later one fails: the supervisor is stopped, the etcd member it
//! added is removed again and the files it wrote are deleted.

use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use hyper::Method;
use tokio::time::Instant;
use viking_client::api::HostView;
use viking_client::{Client, ClientError};
use viking_store::etcd::membership::{client_urls, initial_cluster, Membership};

use crate::launch::{launch, wait_server, with_logs, ETCD_READY, SERVER_READY};
use crate::net::{detect_ip, parse_addr, sock};
use crate::options::{
    check_ip, check_listen, check_name, check_ports_free, check_quota, check_tags, etcd_runner,
    JoinOptions,
};
use crate::record::{self, DEFAULT_KEY};
use crate::state::{url, DataDir, MeshState, Role, STATE_VERSION};
use crate::supervisor::{self, local_etcd, log};
use crate::{MeshError, Result, DEFAULT_MAX_MEMBERS, ETCD_CLIENT_PORT, ETCD_PEER_PORT};

const PROMOTE_FOR: Duration = Duration::from_secs(60);
const API_TIMEOUT: Duration = Duration::from_secs(10);

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
    let quota = check_quota(o.quota_backend_bytes)?;
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
        quota_backend_bytes: Some(quota),
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
                // Five tries, a second apart.
                let tries = ConstantBuilder::default()
                    .with_delay(Duration::from_secs(1))
                    .with_max_times(4);
                let removed = (|| cluster.remove(id))
                    .retry(tries)
                    .notify(|e, _| log(format!("removing the etcd member {id:x} again: {e}")))
                    .await;
                if let Err(e) = removed {
                    log(format!("could not remove the etcd member {id:x}: {e}"));
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

/// Promote a learner, retrying every 500 ms while it is still catching up,
/// for up to [`PROMOTE_FOR`].
async fn promote_when_ready(cluster: &Membership, id: u64) -> Result<()> {
    let until = Instant::now() + PROMOTE_FOR;
    let pauses = ConstantBuilder::default()
        .with_delay(Duration::from_millis(500))
        .without_max_times();
    (|| cluster.promote(id))
        .retry(pauses)
        .when(|_| Instant::now() < until)
        .notify(|e, _| tracing::debug!("promote {id:x}: {e}"))
        .await
        .map_err(|e| {
            MeshError::Failed(format!(
                "the new etcd member did not catch up within {PROMOTE_FOR:?}: {e}"
            ))
        })
}
