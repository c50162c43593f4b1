//! Admission to a mesh: the cluster, not the joining machine, checks a
//! join token's secret, adds the etcd member and signs the machine's
//! certificate (`POST /v1/mesh/join`); and the CA certificate a joining
//! machine checks against its token's fingerprint before it sends the
//! secret (`GET /v1/mesh/ca`).
//!
//! The CA and the join token live in the store (`mesh/ca`, `mesh/join`,
//! written by `viking mesh init`, the token rewritten by `viking mesh token
//! --rotate`): any server of the mesh admits, and a rotated token takes
//! effect at the next join without a restart. A store without them (a
//! cluster made without `viking mesh`) admits nobody.
//!
//! Invariant: nothing is changed for a join that is refused (wrong secret,
//! name or address already in the mesh, a bad request): etcd's member list
//! is touched only after every check passed.

use std::net::IpAddr;

use viking_client::api::{JoinRequest, JoinResponse, JoinRole, MeshCa};
use viking_core::keys;
use viking_core::records::{CaRecord, JoinRecord};
use viking_store::etcd::membership::{client_urls, initial_cluster, Membership};

use crate::error::{Result, ServerError};
use crate::{floki, state, Shared};

/// etcd's client and peer ports on every member of a mesh.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// The most etcd members a mesh may ask for.
const MAX_MEMBERS: usize = 7;

/// `https://IP:PORT`, with brackets for IPv6.
pub fn https(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("https://{a}:{port}"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}"),
    }
}

async fn ca_record(sh: &Shared) -> Result<CaRecord> {
    state::get::<CaRecord>(sh.store.as_ref(), keys::MESH_CA)
        .await?
        .map(|(r, _)| r)
        .ok_or_else(|| {
            ServerError::NotFound(
                "this cluster has no CA in its store (it was not made by `viking mesh init`)"
                    .into(),
            )
        })
}

/// `POST /v1/certificates/client`: signs an operator's certificate
/// request with the cluster's CA (in the store): a client certificate
/// that the API takes as the token (`viking context export --docker`).
pub async fn client_certificate(
    sh: &Shared,
    req: viking_client::api::ClientCertRequest,
) -> Result<viking_client::api::ClientCertResponse> {
    if req.name.is_empty()
        || req.name.len() > 64
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ServerError::Invalid(
            "name: 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    let ca = ca_record(sh).await?;
    let signer = viking_pki::Ca::from_pem(&ca.cert_pem, &ca.key_pem)
        .map_err(|e| ServerError::Internal(format!("the cluster's CA: {e}")))?;
    let cert_pem = signer
        .sign_request(
            &req.csr_pem,
            &format!("operator-{}", req.name),
            &[],
            &[],
            viking_pki::configured_lifetime(),
        )
        .map_err(|e| ServerError::Invalid(format!("csr_pem: {e}")))?;
    tracing::info!(name = %req.name, "issued an operator's client certificate");
    Ok(viking_client::api::ClientCertResponse {
        cert_pem,
        ca_pem: ca.cert_pem,
    })
}

/// `GET /v1/mesh/ca`: the cluster's CA certificate.
pub async fn ca(sh: &Shared) -> Result<MeshCa> {
    Ok(MeshCa {
        ca_pem: ca_record(sh).await?.cert_pem,
    })
}

/// Whether `given` is the join token's secret (constant time).
fn secret_matches(record: &JoinRecord, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    record.secret.as_bytes().ct_eq(given.as_bytes()).into()
}

/// `POST /v1/mesh/join`: admit a machine, or refuse it having changed
/// nothing.
pub async fn join(sh: &Shared, req: JoinRequest) -> Result<JoinResponse> {
    let Some((token, _)) = state::get::<JoinRecord>(sh.store.as_ref(), keys::MESH_JOIN).await?
    else {
        return Err(ServerError::NotFound(
            "this cluster takes no joins: it was not made by `viking mesh init`".into(),
        ));
    };
    if !secret_matches(&token, &req.secret) {
        tracing::warn!(name = %req.name, ip = %req.ip, "a join with a wrong secret was refused");
        return Err(ServerError::Unauthorized(
            "the join token was refused: its secret is not this cluster's (`viking mesh token` prints the current one)".into(),
        ));
    }
    viking_core::job::validate_name(&req.name)
        .map_err(|e| ServerError::Invalid(format!("name {:?}: {}", req.name, e.message)))?;
    let ip: IpAddr = req
        .ip
        .parse()
        .map_err(|_| ServerError::Invalid(format!("ip {:?} is not an IP address", req.ip)))?;
    if ip.is_unspecified() || ip.is_loopback() {
        return Err(ServerError::Invalid(format!(
            "ip {ip} cannot be reached by other machines"
        )));
    }
    if !(1..=MAX_MEMBERS).contains(&req.max_members) {
        return Err(ServerError::Invalid(format!(
            "max_members {} must be from 1 to {MAX_MEMBERS}",
            req.max_members
        )));
    }
    let ca = ca_record(sh).await?;
    let signer = viking_pki::Ca::from_pem(&ca.cert_pem, &ca.key_pem)
        .map_err(|e| ServerError::Internal(format!("the cluster's CA in the store: {e}")))?;
    for h in floki::list(sh).await?.into_iter().filter(|h| h.alive) {
        if h.host.name == req.name {
            return Err(ServerError::Conflict(format!(
                "a machine named {:?} is already in the mesh: pick another --name, or run `viking mesh leave` on that machine first",
                req.name
            )));
        }
        if h.host.ip == req.ip {
            return Err(ServerError::Conflict(format!(
                "{} is already in the mesh as {:?}: this machine has joined already (with another --data-dir?)",
                req.ip, h.host.name
            )));
        }
    }
    let etcd =
        Membership::new(sh.config.etcd.clone()).with_tls(sh.tls.as_ref().map(|t| t.etcd.clone()));
    let mut list = etcd.list().await?;
    if list.iter().any(|m| m.name == req.name) {
        return Err(ServerError::Conflict(format!(
            "an etcd member named {:?} is already in the mesh: pick another --name",
            req.name
        )));
    }
    let peer = https(&ip, ETCD_PEER_PORT);
    // A member added by an earlier attempt of this machine that never
    // started: take it out again; another machine's: wait for it.
    for m in list.iter().filter(|m| m.name.is_empty()) {
        if m.peer_urls.contains(&peer) {
            etcd.remove(m.id).await?;
        } else {
            return Err(ServerError::Unavailable(format!(
                "etcd member {:x} ({}) was added but has not started: another machine is joining; try again in a minute",
                m.id,
                m.peer_urls.join(",")
            )));
        }
    }
    list.retain(|m| !m.name.is_empty());
    if let Some(m) = list.iter().find(|m| m.learner) {
        return Err(ServerError::Unavailable(format!(
            "etcd member {} is still joining (a learner); try again in a minute",
            m.name
        )));
    }
    let role = if req.can_be_member && list.len() < req.max_members {
        JoinRole::Member
    } else {
        JoinRole::Server
    };
    let ips = [ip, IpAddr::from([127, 0, 0, 1])];
    let cert_pem = signer
        .sign_request(
            &req.csr_pem,
            &req.name,
            &ips,
            &["localhost".to_string()],
            viking_pki::configured_lifetime(),
        )
        .map_err(|e| ServerError::Invalid(format!("csr_pem: {e}")))?;
    let mut endpoints = client_urls(&list);
    let (initial, member_id, members) = match role {
        JoinRole::Member => {
            let (id, now) = etcd.add_learner(&peer).await?;
            tracing::info!(name = %req.name, ip = %ip, "admitted as etcd member {id:x}");
            (
                initial_cluster(&now, id, &req.name),
                Some(format!("{id:x}")),
                now.len(),
            )
        }
        JoinRole::Server => {
            tracing::info!(name = %req.name, ip = %ip, "admitted as a server");
            (String::new(), None, list.len())
        }
    };
    if endpoints.is_empty() {
        endpoints = sh.config.etcd.clone();
    }
    Ok(JoinResponse {
        role,
        cert_pem,
        ca_pem: ca.cert_pem,
        token: sh.token.clone(),
        key: sh.config.key.clone(),
        etcd_endpoints: endpoints,
        initial_cluster: initial,
        member_id,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_compared_whole() {
        let r = JoinRecord {
            fingerprint: "ab".repeat(32),
            secret: "0123456789abcdef0123".into(),
        };
        assert!(secret_matches(&r, "0123456789abcdef0123"));
        assert!(!secret_matches(&r, "0123456789abcdef012"));
        assert!(!secret_matches(&r, ""));
        assert_eq!(
            https(&"10.0.0.1".parse().unwrap(), 2379),
            "https://10.0.0.1:2379"
        );
        assert_eq!(https(&"::1".parse().unwrap(), 2380), "https://[::1]:2380");
    }
}
