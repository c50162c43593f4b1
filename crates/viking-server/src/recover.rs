//! Rebuilding the store from the fleet (`viking recover`).
//!
//! Every container carries its job (`viking_core::records::SpecLabel` in its
//! `viking.spec` label: the whole document and the service's ambassador
//! ports). A store that lost its records (emptied, a new etcd, a lost
//! embedded file) gets them back from the containers of every live host:
//! a running container's job goes back to viking-proc and viking-ps where
//! it runs, an exited one to viking-ps only (shown as stopped, never
//! restarted by a recovery), and its placement to its history. Nothing
//! that the store still has is overwritten. The cluster id is written last,
//! so no server acts on a half-rebuilt store; then every holding server of
//! the fleet goes on as before.

use std::collections::BTreeMap;

use viking_client::api::{HostContainer, RecoverRequest, RecoverSummary};
use viking_client::wire::JobState;
use viking_core::keys;
use viking_core::records::{encode, History, HostRecord, ProcRecord, PsRecord};
use viking_store::{Compare, Op};

use crate::error::{Result, ServerError};
use crate::standing::{self, Standing};
use crate::{identity, now_ms, Shared};

/// This host's daemonized containers of the cluster, with what they carry
/// of their jobs (containers made before the label existed are left out).
pub async fn host_containers(sh: &Shared) -> Result<Vec<HostContainer>> {
    let mut out = Vec::new();
    for c in sh.runtime.list(&sh.config.key).await? {
        if c.node != sh.config.name || !c.daemonize {
            continue;
        }
        let carried = match crate::container::carried_job(&c) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(job = %c.job, "its container's job label: {e}");
                continue;
            }
        };
        out.push(HostContainer {
            job: carried.job,
            ambassador: carried.ambassador,
            state: JobState::from(&crate::container::ps_from(sh, &c, 0)),
        });
    }
    Ok(out)
}

/// Rebuild the records the store lacks from the containers of every live
/// host, then give the store this cluster's id.
pub async fn recover(sh: &Shared, req: &RecoverRequest) -> Result<RecoverSummary> {
    let Some(cluster) = sh.cluster_id() else {
        return Err(ServerError::Conflict(
            "this server never belonged to a cluster: run `viking recover` on a server that did"
                .to_string(),
        ));
    };
    let current = standing::store_id(sh.store.as_ref()).await?;
    if let Some(other) = current.as_deref().filter(|s| *s != cluster) {
        if !req.adopt {
            return Err(ServerError::Conflict(format!(
                "the store belongs to another cluster ({other}); `viking recover --adopt` makes it \
                 this cluster's ({cluster})"
            )));
        }
    }
    let mut summary = RecoverSummary {
        cluster: cluster.clone(),
        ..Default::default()
    };

    // Every live host's containers (floki is rebuilt by the servers
    // themselves within a heartbeat).
    let mut found: Vec<(String, HostContainer)> = Vec::new();
    // This server always; the others as floki knows them (servers
    // re-register within a heartbeat of the store being emptied).
    let mut alive: Vec<HostRecord> = crate::state::list(sh.store.as_ref(), keys::HOSTS).await?;
    if !alive.iter().any(|h| h.name == sh.config.name) {
        alive.push(crate::floki::record(sh).await);
    }
    for h in alive {
        let name = h.name.clone();
        let got = if name == sh.config.name {
            host_containers(sh).await
        } else {
            match crate::peer::peer(sh, &h) {
                Ok(c) => c
                    .host_containers()
                    .await
                    .map_err(|e| ServerError::from_peer(&name, e)),
                Err(e) => Err(e),
            }
        };
        match got {
            Ok(cs) => {
                summary.hosts.push(name.clone());
                found.extend(cs.into_iter().map(|c| (name.clone(), c)));
            }
            Err(e) => {
                tracing::warn!(host = %name, "recover: {e}");
                summary.unreachable.push(name);
            }
        }
    }

    // One container per job: a running one first, then the newest.
    let mut best: BTreeMap<String, (String, HostContainer)> = BTreeMap::new();
    for (host, c) in found {
        let name = c.job.name.clone();
        let rank = |c: &HostContainer| (c.state.status == "running", c.state.started_at);
        match best.get(&name) {
            Some((h, b)) if rank(b) >= rank(&c) => {
                summary.skipped.push(format!(
                    "{name}: another copy on {host}; kept the one on {h}"
                ));
            }
            Some((h, _)) => {
                summary.skipped.push(format!(
                    "{name}: another copy on {h}; kept the one on {host}"
                ));
                best.insert(name, (host, c));
            }
            None => {
                best.insert(name, (host, c));
            }
        }
    }

    for (name, (host, c)) in best {
        let running = c.state.status == "running";
        let ps = PsRecord::from(&c.state);
        let mut compares = vec![
            Compare::Absent(keys::proc(&name)),
            Compare::Absent(keys::ps(&name)),
        ];
        let mut ops = vec![Op::Put {
            key: keys::ps(&name),
            value: encode(&ps)?,
            lease: None,
        }];
        if running {
            ops.push(Op::Put {
                key: keys::proc(&name),
                value: encode(&ProcRecord {
                    job: c.job.clone(),
                    created_at: now_ms(),
                    placed_on: Some(host.clone()),
                    waiting: None,
                })?,
                lease: None,
            });
        }
        if sh.store.get(&keys::history(&name)).await?.is_none() {
            let mut hist = History::default();
            hist.push(&host, ps.started_at.unwrap_or_else(now_ms));
            compares.push(Compare::Absent(keys::history(&name)));
            ops.push(Op::Put {
                key: keys::history(&name),
                value: encode(&hist)?,
                lease: None,
            });
        }
        if let Some(service) = &c.job.service {
            // The service's name, held again.
            ops.push(Op::Put {
                key: keys::service(service),
                value: Vec::new(),
                lease: None,
            });
        }
        for (cport, aport) in &c.ambassador {
            // A service's instances share its ports.
            let key = keys::ambassador_port(c.job.service_name(), *cport);
            if sh.store.get(&key).await?.is_none() {
                ops.push(Op::Put {
                    key,
                    value: aport.to_string().into_bytes(),
                    lease: None,
                });
            }
        }
        if sh.store.txn(compares, ops, vec![]).await?.succeeded {
            if running {
                summary.recovered.push(name);
            } else {
                summary.stopped.push(name);
            }
        } else {
            summary
                .skipped
                .push(format!("{name}: the store already has its records"));
        }
    }

    // Last: the store is this cluster's again, and every server acts.
    let mark = match current {
        None => sh.store.txn(
            vec![Compare::Absent(keys::CLUSTER_ID.to_string())],
            vec![put_id(&cluster)],
            vec![],
        ),
        Some(other) => sh.store.txn(
            vec![Compare::Value(
                keys::CLUSTER_ID.to_string(),
                other.into_bytes(),
            )],
            vec![put_id(&cluster)],
            vec![],
        ),
    };
    if !mark.await?.succeeded {
        return Err(ServerError::Conflict(
            "the store's cluster id changed during the recovery; run it again".to_string(),
        ));
    }
    identity::save_cluster_id(&sh.config.data_dir, &cluster)
        .map_err(|e| ServerError::Internal(format!("{e:#}")))?;
    if standing::check(sh).await? != Standing::Member {
        return Err(ServerError::Conflict(
            "the store's cluster id changed right after the recovery; run it again".to_string(),
        ));
    }
    tracing::info!(
        recovered = summary.recovered.len(),
        stopped = summary.stopped.len(),
        hosts = summary.hosts.len(),
        "recovered the store from the fleet's containers"
    );
    Ok(summary)
}

fn put_id(id: &str) -> Op {
    Op::Put {
        key: keys::CLUSTER_ID.to_string(),
        value: id.as_bytes().to_vec(),
        lease: None,
    }
}
