//! Whether this server may act: on its host's containers (the agent) and on
//! the fleet's records (the reconciler, a recovery).
//!
//! The store carries the cluster's id (`cluster-id`, made at the cluster's
//! first start); each server keeps the id it belongs to in its data
//! directory. While the two agree the server is a [`Standing::Member`]. A
//! store without an id (emptied by `etcdctl del --prefix`, a new etcd by
//! mistake, an embedded store file lost) or with another cluster's id makes
//! the server hold: it keeps every container exactly as it is, says why in
//! its log, in floki (`viking hosts`) and at `GET /v1/health`, and waits for
//! an operator (`viking recover`, which rebuilds the records from the
//! containers and puts the id back). A missing record is never a reason to
//! remove a container.

use std::path::Path;

use viking_core::keys;
use viking_core::records::{decode, HostRecord};
use viking_store::{Compare, Op, Store};

use crate::error::{Result, ServerError};
use crate::{identity, Shared};

/// How this server stands with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The store is this server's cluster's.
    Member,
    /// The store has no cluster id: it was emptied, or it is new.
    StoreEmpty,
    /// The store belongs to another cluster.
    Foreign { store: String },
}

impl Standing {
    /// Why the server holds, if it does (for the log, floki and health).
    pub fn held(&self) -> Option<String> {
        match self {
            Standing::Member => None,
            Standing::StoreEmpty => Some(
                "the store has no cluster id (emptied, or a new store): holding every \
                 container as it is; run `viking recover` to rebuild the records from them"
                    .to_string(),
            ),
            Standing::Foreign { store } => Some(format!(
                "the store belongs to another cluster ({store}): holding every container as \
                 it is; run `viking recover --adopt` to make it this cluster's"
            )),
        }
    }
}

/// The store's cluster id, if it has one.
pub async fn store_id(store: &dyn Store) -> Result<Option<String>> {
    Ok(store
        .get(keys::CLUSTER_ID)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// At start: the cluster this server belongs to and how it stands. A server
/// that never belonged to a cluster joins the store's, or founds one on a
/// store that has none, unless a live server already holds on it (then the
/// store was emptied under a running fleet, and this one holds too).
pub async fn establish(
    store: &dyn Store,
    dir: &Path,
) -> anyhow::Result<(Option<String>, Standing)> {
    let local = identity::cluster_id(dir)?;
    let current = store_id(store).await?;
    let (local, standing) = match (local, current) {
        (Some(l), Some(s)) if l == s => (Some(l), Standing::Member),
        (Some(l), Some(s)) => (Some(l), Standing::Foreign { store: s }),
        (Some(l), None) => (Some(l), Standing::StoreEmpty),
        (None, Some(s)) => {
            identity::save_cluster_id(dir, &s)?;
            tracing::info!(cluster = %s, "joined the store's cluster");
            (Some(s), Standing::Member)
        }
        (None, None) if fleet_holds(store).await? => (None, Standing::StoreEmpty),
        (None, None) => {
            let id = found(store).await?;
            identity::save_cluster_id(dir, &id)?;
            (Some(id), Standing::Member)
        }
    };
    if let Some(why) = standing.held() {
        tracing::error!("{why}");
    }
    Ok((local, standing))
}

/// Whether a live server says it holds.
async fn fleet_holds(store: &dyn Store) -> Result<bool> {
    let (kvs, _) = store.list(keys::HOSTS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode::<HostRecord>(&kv.value).ok())
        .any(|h| h.held.is_some()))
}

/// Give a store without an id a new one (or the one a racing server gave
/// it first).
async fn found(store: &dyn Store) -> Result<String> {
    let id = identity::new_id();
    let r = store
        .txn(
            vec![Compare::Absent(keys::CLUSTER_ID.to_string())],
            vec![Op::Put {
                key: keys::CLUSTER_ID.to_string(),
                value: id.clone().into_bytes(),
                lease: None,
            }],
            vec![],
        )
        .await?;
    if r.succeeded {
        tracing::info!(cluster = %id, "founded a new cluster in the store");
        return Ok(id);
    }
    store_id(store)
        .await?
        .ok_or_else(|| ServerError::Internal("the cluster id vanished as it was made".into()))
}

/// How this server stands now (one read of the store's id); a change is
/// logged and remembered for floki and health.
pub async fn check(sh: &Shared) -> Result<Standing> {
    let current = store_id(sh.store.as_ref()).await?;
    Ok(judge(sh, current))
}

/// How this server stands with a store whose id was just read as
/// `current` (with other records, in the same request); a change is
/// logged and remembered, as by [`check`].
pub fn judge(sh: &Shared, current: Option<String>) -> Standing {
    let local = sh.cluster_id();
    let now = match (local.as_deref(), current) {
        (Some(l), Some(s)) if l == s => Standing::Member,
        (_, Some(s)) => Standing::Foreign { store: s },
        (_, None) => Standing::StoreEmpty,
    };
    let before = sh.set_standing(now.clone());
    if before != now {
        match now.held() {
            Some(why) => tracing::error!("{why}"),
            None => tracing::info!("the store is this cluster's again: acting on containers"),
        }
    }
    now
}

/// Whether this server may act now: `Ok(false)` while it holds.
pub async fn may_act(sh: &Shared) -> Result<bool> {
    Ok(check(sh).await? == Standing::Member)
}

/// Refuse work that changes the fleet while this server holds.
pub async fn require_member(sh: &Shared) -> Result<()> {
    refuse_held(sh, &check(sh).await?)
}

/// Refuse work while this server is known to hold (no read: the write
/// that follows carries the cluster id in its own transaction, or checks
/// it with the records it reads).
pub fn require_known_member(sh: &Shared) -> Result<()> {
    refuse_held(sh, &sh.standing())
}

/// Why a write whose transaction compared the cluster id was refused: the
/// store's id as it is now (read, logged and remembered).
pub async fn refusal(sh: &Shared) -> ServerError {
    match require_member(sh).await {
        Err(e) => e,
        Ok(()) => ServerError::Unavailable(
            "the store's cluster id changed while the job was claimed; try again".into(),
        ),
    }
}

/// [`require_member`] by a store id read with other records.
pub fn require_member_by(sh: &Shared, current: Option<String>) -> Result<()> {
    refuse_held(sh, &judge(sh, current))
}

fn refuse_held(sh: &Shared, standing: &Standing) -> Result<()> {
    match standing.held() {
        None => Ok(()),
        Some(why) => Err(ServerError::Unavailable(format!(
            "server {} holds: {why}",
            sh.config.name
        ))),
    }
}
