//! Calls to the other servers of the fleet: a client with the cluster
//! token and a deadline (`--peer-timeout`: a peer that accepts and never
//! answers is treated as unreachable, see [`viking_client::client`]), where
//! a job's container lives (here, on a live peer, or on a host that is
//! gone), and forwarding a start to the host dowding chose, with the
//! revision of the claim that asks.

use viking_client::Client;
use viking_core::records::{decode, HostRecord, PsRecord};
use viking_core::{keys, Job};
use viking_store::Revision;

use crate::error::{Result, ServerError};
use crate::Shared;

/// A client of another server of the fleet, with the cluster token and the
/// server's deadline for calls to its peers (`--peer-timeout`).
pub fn peer(sh: &Shared, host: &HostRecord) -> Result<Client> {
    Client::with_tls(
        &host.api,
        Some(sh.token.clone()),
        sh.tls.as_ref().map(|t| t.client.clone()),
    )
    .map(|c| c.with_deadline(sh.config.peer_timeout))
    .map_err(|e| ServerError::Upstream(format!("host {}: {e}", host.name)))
}

/// Ask the chosen host's server to start a job this server claimed.
pub async fn forward_start(
    sh: &Shared,
    host: &HostRecord,
    job: &Job,
    claim_rev: Revision,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    let doc = serde_json::to_vec(job).map_err(|e| ServerError::Internal(e.to_string()))?;
    let r = peer(sh, host)?
        .start_placed(doc, Some(claim_rev), progress)
        .await
        .map_err(|e| ServerError::from_peer(&host.name, e))?;
    r.ps.as_ref().map(PsRecord::from).ok_or_else(|| {
        ServerError::Upstream(format!(
            "host {} did not start job {:?}",
            host.name, job.name
        ))
    })
}

/// Where a job's container lives, seen from this server.
pub enum Owner {
    Here,
    /// Another server, alive in floki.
    Peer(Client, String),
    /// Another server that is not alive: its container cannot be reached.
    Gone(String),
}

pub async fn owner(sh: &Shared, ps: &PsRecord) -> Result<Owner> {
    owner_of(sh, &ps.node).await
}

/// Server `node` seen from this one: this one, a live peer, or gone.
pub async fn owner_of(sh: &Shared, node: &str) -> Result<Owner> {
    if node == sh.config.name {
        return Ok(Owner::Here);
    }
    match sh.store.get(&keys::host(node)).await? {
        Some(kv) => {
            let h: HostRecord = decode(&kv.value)?;
            Ok(Owner::Peer(peer(sh, &h)?, h.name))
        }
        None => Ok(Owner::Gone(node.to_string())),
    }
}
