//! `viking mesh status`: etcd's members with their health and the leader,
//! and the viking servers (alive or gone), as tables or JSON; also the etcd
//! endpoints and server list `leave` uses.

use std::path::Path;

use serde::Serialize;
use viking_cli::table;
use viking_core::keys;
use viking_core::records::{decode, HostRecord};
use viking_store::Store;

use crate::state::{DataDir, MeshState, Role};
use crate::supervisor::{self, local_etcd};
use crate::{MeshError, Result};

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
    /// The member's database file and the part of it in use, in bytes
    /// (`None` when it did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_size_in_use: Option<i64>,
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

/// A database size as the tables print it: KiB below a MiB, else MiB.
pub(crate) fn size(bytes: i64) -> String {
    if bytes < 1 << 20 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

pub(crate) fn endpoints_of(st: &MeshState) -> Vec<String> {
    let mut eps = st.etcd_endpoints.clone();
    if st.role == Role::Member && !eps.contains(&local_etcd(st)) {
        eps.insert(0, local_etcd(st));
    }
    eps
}

pub(crate) async fn servers(
    dd: &DataDir,
    endpoints: &[String],
    key: &str,
) -> Result<Vec<ServerView>> {
    let store = dd.store(endpoints, key).await?;
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
    let known = read(keys::FLEET).await?;
    Ok(viking_core::records::fleet(alive, known)
        .into_iter()
        .map(|(h, alive)| view(h, alive))
        .collect())
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
    let list = dd.members(eps.clone())?.list().await?;
    let mut views = Vec::new();
    for m in list {
        let s = match m.client_urls.first() {
            Some(u) => dd
                .members(vec![u.clone()])?
                .status()
                .await
                .map_err(MeshError::from),
            None => Err(MeshError::Failed("not started".into())),
        };
        let (healthy, leader, error, sizes) = match s {
            Ok(s) => (
                s.is_healthy(),
                s.leader == m.id,
                (!s.errors.is_empty()).then(|| s.errors.join("; ")),
                Some((s.db_size, s.db_size_in_use)),
            ),
            Err(e) => (false, false, Some(e.to_string()), None),
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
            db_size: sizes.map(|s| s.0),
            db_size_in_use: sizes.map(|s| s.1),
        });
    }
    let servers = servers(&dd, &eps, &st.key).await?;
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
    let rows: Vec<Vec<String>> = v
        .members
        .iter()
        .map(|m| {
            vec![
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
                m.db_size.map(size).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ETCD MEMBER",
                "ID",
                "PEER URL",
                "CLIENT URL",
                "HEALTH",
                "ROLE",
                "DB SIZE"
            ],
            &rows
        )
    );
    println!();
    let rows: Vec<Vec<String>> = v
        .servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.api.clone(),
                if s.alive { "alive" } else { "gone" }.into(),
                s.tags.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["SERVER", "ADDRESS", "STATUS", "TAGS"], &rows)
    );
    Ok(())
}
