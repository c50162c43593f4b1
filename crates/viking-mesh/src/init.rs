//! `viking mesh init`: the first machine of a mesh, its etcd member (a new
//! cluster) and its viking server.
//!
//! It checks everything it can before it changes anything (the data
//! directory is fresh, the token, the ports are free), and undoes its own
//! steps when a later one fails: the supervisor is stopped and the files it
//! wrote are deleted.

use std::net::SocketAddr;
use std::path::Path;

use crate::launch::{launch, wait_server, with_logs, ETCD_READY, SERVER_READY};
use crate::net::{detect_ip, sock};
use crate::options::{
    check_ip, check_listen, check_name, check_ports_free, check_quota, check_tags, check_token,
    etcd_runner, InitOptions,
};
use crate::record::{self, MeshRecord};
use crate::state::{new_token, url, DataDir, MeshState, Role, STATE_VERSION};
use crate::supervisor::{self, local_etcd};
use crate::{MeshError, Result, DEFAULT_API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT};

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
