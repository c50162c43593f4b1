//! `viking mesh join`: add this machine to a mesh, as an etcd member (a
//! learner first, promoted once it has caught up) while etcd has fewer than
//! `--max-members`, else as a viking server only.
//!
//! The join token is `VKJ-1-<CA fingerprint>-<secret>` (swarm's scheme):
//! 1. the machine asks a server of the mesh for the cluster's CA (over TLS
//!    it cannot verify yet; the answer carries nothing secret) and checks
//!    it against the token's fingerprint: a wrong one stops the join before
//!    the secret is sent;
//! 2. over TLS verified against that CA, it sends the secret, its name and
//!    address and a certificate request for a key that never leaves it;
//!    the cluster checks the secret and the name, adds the etcd member and
//!    signs the certificate (`viking_server::admission`), and answers with
//!    the operator's token, the store prefix and etcd's endpoints;
//! 3. it writes its files (the operator's token in `<data-dir>/token`, the
//!    CLI's context), starts its etcd member and server, and promotes its
//!    member once it has caught up.
//!
//! It checks what it can before it asks (the token's form, the ports are
//! free), and undoes its own steps when a later one fails: the supervisor
//! is stopped, the etcd member it was given is removed again and the files
//! it wrote are deleted.

use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use tokio::time::Instant;
use viking_client::api::{JoinRequest, JoinResponse, JoinRole};
use viking_client::context::Context;
use viking_client::{Client, ClientError};
use viking_pki::JoinToken;
use viking_store::etcd::membership::Membership;
use viking_store::EtcdTls;

use crate::launch::{launch, wait_server, with_logs, ETCD_READY, SERVER_READY};
use crate::net::{detect_ip, parse_addr, sock};
use crate::options::{
    check_ip, check_listen, check_name, check_ports_free, check_quota, check_tags, etcd_runner,
    JoinOptions,
};
use crate::state::{url, DataDir, MeshState, Role, STATE_VERSION};
use crate::supervisor::{self, local_etcd, log};
use crate::{MeshError, Result, DEFAULT_API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT};

const PROMOTE_FOR: Duration = Duration::from_secs(60);
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What a failed call to the mesh's server means for the join.
fn call_error(api: &str, what: &str, e: ClientError) -> MeshError {
    match e {
        ClientError::Connect { reason, .. } => MeshError::Unreachable {
            what: "the viking server".into(),
            addr: api.to_string(),
            reason,
        },
        e if e.status() == Some(401) => MeshError::WrongToken(api.to_string()),
        e if e.status() == Some(409) => MeshError::Failed(format!("{api} refused the join: {e}")),
        e => MeshError::Failed(format!("{what} at {api}: {e}")),
    }
}

/// Step 1: the cluster's CA from the server at `api`, checked against the
/// fingerprint the join token names.
async fn fetch_ca(api: &str, token: &JoinToken) -> Result<String> {
    let client = Client::with_tls(api, None, Some(viking_pki::unverified_client_config()?))?
        .with_deadline(API_TIMEOUT);
    let ca = client
        .mesh_ca()
        .await
        .map_err(|e| call_error(api, "asking for the cluster's CA", e))?;
    let shown = viking_pki::fingerprint(&ca.ca_pem)?;
    if shown != token.fingerprint {
        return Err(MeshError::WrongCa {
            addr: api.to_string(),
            shown,
            expected: token.fingerprint.clone(),
        });
    }
    Ok(ca.ca_pem)
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
    let token = JoinToken::parse(&o.token).map_err(|e| {
        MeshError::Invalid(format!(
            "--token: {e}; `viking mesh token` on a machine of the mesh prints it"
        ))
    })?;
    let runner = etcd_runner(o.etcd_binary, o.etcd_image)?;
    let max = o.max_members.unwrap_or(crate::DEFAULT_MAX_MEMBERS).max(1);
    let api = url(&host, port);

    // 1. The CA, before anything secret is sent.
    let ca_pem = fetch_ca(&api, &token).await?;
    let ip = match o.ip {
        Some(ip) => ip,
        None => detect_ip(Some(&sock(&host, port)))?,
    };
    check_ip(&ip)?;
    check_ports_free(&[
        listen.clone(),
        sock(&ip, ETCD_CLIENT_PORT),
        sock(&ip, ETCD_PEER_PORT),
    ])?;

    // 2. The cluster admits this machine (or refuses, changing nothing).
    let request = viking_pki::key_and_request(&name)?;
    let trusted = viking_pki::client_config(&ca_pem, None)?;
    let client = Client::with_tls(&api, None, Some(trusted))?;
    let admitted: JoinResponse = client
        .mesh_join(&JoinRequest {
            secret: token.secret.clone(),
            name: name.clone(),
            ip: ip.clone(),
            csr_pem: request.cert_pem.clone(),
            max_members: max,
            can_be_member: true,
        })
        .await
        .map_err(|e| call_error(&api, "joining", e))?;
    let role = match admitted.role {
        JoinRole::Member => Role::Member,
        JoinRole::Server => Role::Server,
    };
    let added: Option<u64> = match admitted.member_id.as_deref() {
        Some(hex) => Some(u64::from_str_radix(hex, 16).map_err(|_| {
            MeshError::Failed(format!(
                "{api} gave an etcd member id {hex:?} that is not hex"
            ))
        })?),
        None => None,
    };
    let tls = EtcdTls {
        ca_pem: admitted.ca_pem.clone(),
        cert_pem: admitted.cert_pem.clone(),
        key_pem: request.key_pem.clone(),
    };
    let cluster = Membership::new(admitted.etcd_endpoints.clone()).with_tls(Some(tls));
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
    let mut st = MeshState {
        v: STATE_VERSION,
        name: name.clone(),
        ip: ip.clone(),
        role,
        tags,
        listen,
        key: admitted.key.clone(),
        etcd_endpoints: admitted.etcd_endpoints.clone(),
        initial_cluster: admitted.initial_cluster.clone(),
        initial_cluster_state: match role {
            Role::Member => "existing".into(),
            Role::Server => String::new(),
        },
        etcd: (role == Role::Member).then_some(runner),
        server_args: o.server_args,
        quota_backend_bytes: Some(quota),
    };
    if role == Role::Member {
        st.etcd_endpoints.insert(0, local_etcd(&st));
    }
    let my_port = st
        .listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_API_PORT);

    // 3. Files, then etcd and the server.
    let setup = async {
        dd.save_pki(&admitted.ca_pem, &admitted.cert_pem, &request.key_pem)?;
        dd.save_token(&admitted.token)?;
        Context {
            server: url(&ip, my_port),
            ca: Some(admitted.ca_pem.clone()),
            token: Some(admitted.token.clone()),
        }
        .save(&dd.context_file())?;
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
    let ready = async {
        if let Some(id) = added {
            let ep = local_etcd(&st);
            if !supervisor::wait_etcd(&dd, &ep, ETCD_READY).await {
                return Err(MeshError::Failed(format!(
                    "etcd at {ep} did not join within {ETCD_READY:?}"
                )));
            }
            promote_when_ready(&cluster, id).await?;
        }
        wait_server(&dd, &st, &admitted.token, SERVER_READY).await
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
            admitted.members
        ),
        Role::Server => println!(
            "{name}: joined the mesh at {ip} as a viking server (etcd already has {} members).",
            admitted.members
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
