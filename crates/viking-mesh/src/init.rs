//! `viking mesh init`: the first machine of a mesh, its etcd member (a new
//! cluster) and its viking server, and the cluster's CA.
//!
//! The CA signs this machine's certificate (its server's and its etcd
//! member's); once etcd runs, the CA and a join token go into the store,
//! where every server finds them to admit the next machines
//! (`viking_server::admission`). The join token it prints (`VKJ-1-<CA
//! fingerprint>-<secret>`) is not the operator's token, which stays in the
//! data directory and in the CLI's context (`context.json`).
//!
//! It checks everything it can before it changes anything (the data
//! directory is fresh, the token, the ports are free), and undoes its own
//! steps when a later one fails: the supervisor is stopped and the files it
//! wrote are deleted.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use viking_client::context::Context;
use viking_core::keys;
use viking_core::records::{encode, CaRecord, JoinRecord};
use viking_pki::{Ca, JoinToken};
use viking_store::StoreExt;

use crate::launch::{launch, wait_server, with_logs, ETCD_READY, SERVER_READY};
use crate::net::{detect_ip, sock};
use crate::options::{
    check_ip, check_listen, check_name, check_ports_free, check_quota, check_tags, check_token,
    etcd_runner, InitOptions,
};
use crate::state::{new_token, url, DataDir, MeshState, Role, STATE_VERSION};
use crate::supervisor::{self, local_etcd};
use crate::{MeshError, Result, DEFAULT_API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT};

/// The CA and this machine's certificate.
fn make_pki(name: &str, ip: &str) -> Result<(Ca, viking_pki::Issued)> {
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| MeshError::Invalid(format!("--ip {ip:?} is not an IP address")))?;
    let ca = Ca::generate(name)?;
    let issued = ca.issue(
        name,
        &[addr, IpAddr::from([127, 0, 0, 1])],
        &["localhost".to_string()],
        viking_pki::configured_lifetime(),
    )?;
    Ok((ca, issued))
}

/// Put the CA and the join token into the cluster's store, where every
/// server finds them to admit machines.
async fn store_pki(dd: &DataDir, st: &MeshState, ca: &Ca, join: &JoinToken) -> Result<()> {
    let store = dd.store(&st.etcd_endpoints, &st.key).await?;
    let ca_rec = CaRecord {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().to_string(),
    };
    let join_rec = JoinRecord {
        fingerprint: join.fingerprint.clone(),
        secret: join.secret.clone(),
    };
    let enc = |e: viking_core::records::RecordError| MeshError::Failed(e.to_string());
    store
        .put(keys::MESH_CA, encode(&ca_rec).map_err(enc)?)
        .await
        .map_err(|e| MeshError::Etcd(format!("writing the CA: {e}")))?;
    store
        .put(keys::MESH_JOIN, encode(&join_rec).map_err(enc)?)
        .await
        .map_err(|e| MeshError::Etcd(format!("writing the join token: {e}")))?;
    Ok(())
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
    let quota = check_quota(o.quota_backend_bytes)?;
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
    let (ca, issued) = make_pki(&name, &ip)?;
    let join_token = JoinToken::new(&ca.fingerprint()?);
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
        quota_backend_bytes: Some(quota),
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
    let port = st
        .listen
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_API_PORT);
    let setup = async {
        if new_token_file {
            dd.save_token(&token)?;
        }
        dd.save_pki(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)?;
        dd.save_ca_key(ca.key_pem())?;
        Context {
            server: url(&ip, port),
            ca: Some(ca.cert_pem().to_string()),
            token: Some(token.clone()),
        }
        .save(&dd.context_file())?;
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
        if !supervisor::wait_etcd(&dd, &local_etcd(&st), ETCD_READY).await {
            return Err(MeshError::Failed(format!(
                "etcd at {} did not become healthy within {ETCD_READY:?}",
                local_etcd(&st)
            )));
        }
        store_pki(&dd, &st, &ca, &join_token).await?;
        wait_server(&dd, &st, &token, SERVER_READY).await
    };
    if let Err(e) = ready.await {
        let e = with_logs(e, &dd, Role::Member);
        launched.abort(&dd).await;
        undo_files(&dd);
        return Err(e);
    }
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
        "  viking mesh join {} --token {join_token}{data_flag}",
        sock(&ip, port)
    );
    println!();
    println!(
        "The join token admits machines, not operators: `viking mesh token` prints it, \
         `viking mesh token --rotate` replaces it. The operator's context (server, CA, token) \
         is in {}; `viking context export` prints it for another machine.",
        dd.context_file().display()
    );
    launched.wait().await
}

/// The data directory the CLI uses by default for root.
const DEFAULT_DATA_DIR: &str = "/var/lib/viking";
