//! etcd's membership API, as smesh uses it: list the members, add one as a
//! learner, promote it, remove one, and ask one member how it is.
//!
//! Every call goes to one endpoint at a time and moves on to the next when
//! an endpoint cannot be reached, so a dead member in the list only costs a
//! connect timeout.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use serde::Serialize;

use crate::{MeshError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: u64,
    /// Empty while an added member has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// What a member says about itself (`Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub member_id: u64,
    pub leader: u64,
    pub learner: bool,
    pub version: String,
    pub raft_index: u64,
    pub errors: Vec<String>,
}

fn members(list: &[etcd_client::Member]) -> Vec<Member> {
    list.iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            learner: m.is_learner(),
        })
        .collect()
}

async fn connect(endpoint: &str) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(endpoint, e.to_string())),
        Err(_) => Err(unreachable(endpoint, "timed out".to_string())),
    }
}

fn unreachable(endpoint: &str, reason: String) -> MeshError {
    MeshError::Unreachable {
        what: "etcd".into(),
        addr: endpoint.into(),
        reason,
    }
}

/// Whether the error says the request never got an answer from the member
/// (so another endpoint may be tried).
fn is_transport(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC's UNAVAILABLE and DEADLINE_EXCEEDED, unless etcd itself
        // answered (its errors start with "etcdserver:").
        E::GRpcStatus(s) => {
            matches!(s.code() as i32, 14 | 4) && !s.message().starts_with("etcdserver:")
        }
        _ => false,
    }
}

/// Run `call` on the first endpoint that answers.
async fn on_any<T, F, Fut>(endpoints: &[String], mut call: F) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut last = MeshError::Etcd("no etcd endpoints known".into());
    for ep in endpoints {
        let client = match connect(ep).await {
            Ok(c) => c,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), call(client)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_transport(&e) => last = unreachable(ep, e.to_string()),
            // A refusal (e.g. a learner asked for the member list): another
            // member may answer.
            Ok(Err(e)) => last = MeshError::Etcd(format!("{ep}: {e}")),
            Err(_) => last = unreachable(ep, "timed out".into()),
        }
    }
    Err(last)
}

/// Every member of the cluster.
pub async fn list(endpoints: &[String]) -> Result<Vec<Member>> {
    on_any(endpoints, |mut c| async move {
        c.member_list().await.map(|r| members(r.members()))
    })
    .await
}

/// Add a member with `peer_url` as a learner: its id and the members now.
/// etcd refuses while its leader has not been connected to every voting
/// member for a few seconds (e.g. right after a promotion): then this waits
/// up to 30 s.
pub async fn add_learner(endpoints: &[String], peer_url: &str) -> Result<(u64, Vec<Member>)> {
    while_unhealthy(|| add_learner_once(endpoints, peer_url)).await
}

/// Retry `f` for up to 30 s while etcd answers "unhealthy cluster": it
/// refuses membership changes until its leader has been connected to every
/// voting member for 5 s (e.g. right after a member came back).
async fn while_unhealthy<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Err(MeshError::Etcd(e))
                if e.contains("unhealthy cluster") && tokio::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

async fn add_learner_once(endpoints: &[String], peer_url: &str) -> Result<(u64, Vec<Member>)> {
    let url = peer_url.to_string();
    on_any(endpoints, |mut c| {
        let url = url.clone();
        async move {
            let r = c
                .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                .await?;
            let id = r.member().map(|m| m.id()).unwrap_or(0);
            Ok((id, members(r.member_list())))
        }
    })
    .await
}

/// Promote a learner to a voting member; fails while it is not in sync.
pub async fn promote(endpoints: &[String], id: u64) -> Result<()> {
    on_any(endpoints, |mut c| async move {
        c.member_promote(id).await.map(|_| ())
    })
    .await
}

/// Remove a member.
pub async fn remove(endpoints: &[String], id: u64) -> Result<()> {
    while_unhealthy(|| {
        on_any(endpoints, |mut c| async move {
            c.member_remove(id).await.map(|_| ())
        })
    })
    .await
}

/// One member's own view (only `endpoint` is asked).
pub async fn status(endpoint: &str) -> Result<MemberStatus> {
    on_any(&[endpoint.to_string()], |mut c| async move {
        let s = c.status().await?;
        Ok(MemberStatus {
            member_id: s.header().map(|h| h.member_id()).unwrap_or(0),
            leader: s.leader(),
            learner: s.is_learner(),
            version: s.version().to_string(),
            raft_index: s.raft_index(),
            errors: s.errors().to_vec(),
        })
    })
    .await
}

/// Whether the member at `endpoint` answers and knows a leader.
pub async fn healthy(endpoint: &str) -> bool {
    matches!(status(endpoint).await, Ok(s) if s.leader != 0 && s.errors.is_empty())
}

/// The `--initial-cluster` value for a new member `new_id` named
/// `new_name`, given the member list that includes it (as `etcdctl member
/// add` prints it).
pub fn initial_cluster(members: &[Member], new_id: u64, new_name: &str) -> String {
    members
        .iter()
        .flat_map(|m| {
            let name = if m.id == new_id { new_name } else { &m.name };
            m.peer_urls.iter().map(move |u| format!("{name}={u}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every member's client URLs.
pub fn client_urls(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .flat_map(|m| m.client_urls.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_names_the_new_member() {
        let m = |name: &str, peer: &str| Member {
            id: peer.len() as u64,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            learner: false,
        };
        let list = [m("n1", "http://a:2380"), m("", "http://bb:2380")];
        assert_eq!(
            initial_cluster(&list, list[1].id, "n3"),
            "n1=http://a:2380,n3=http://bb:2380"
        );
    }
}
