//! etcd's membership API, for `viking mesh`: list the members, add one as a
//! learner, promote it, remove one, ask one member how it is (with its
//! database's size and the store's revision), list the cluster's alarms
//! (NOSPACE), and defragment one member (`viking mesh defrag`).
//!
//! Every call goes to one endpoint at a time and moves on to the next when
//! an endpoint fails, so a dead member in the list only costs a connect
//! timeout. Errors are classified by [`super::failure`], like the store's.

use std::future::Future;
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use etcd_client::{Client, ConnectOptions, MemberAddOptions};

use super::{failure, map_err, Failure};
use crate::{EtcdTls, Result, StoreError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change is retried while etcd answers that it
/// cannot make it now.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(500);
/// How long one member's defragmentation may take.
pub const DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty while an added member has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// What a member says about itself (etcd's `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The leader's id; 0 when the member knows no leader.
    pub leader: u64,
    pub learner: bool,
    pub version: String,
    pub raft_index: u64,
    pub errors: Vec<String>,
    /// The size of the member's database file, in bytes (what the backend
    /// quota is measured against, and what defragmentation shrinks).
    pub db_size: i64,
    /// The part of it in use, in bytes; the rest is free pages that only
    /// defragmentation gives back.
    pub db_size_in_use: i64,
    /// The store's revision as the member answered.
    pub revision: i64,
}

impl MemberStatus {
    /// Whether the member knows a leader and reports no error.
    pub fn is_healthy(&self) -> bool {
        self.leader != 0 && self.errors.is_empty()
    }
}

/// The membership of the etcd cluster reachable at some endpoints.
#[derive(Debug, Clone)]
pub struct Membership {
    endpoints: Vec<String>,
    /// The client certificate and CA for an etcd that requires them.
    tls: Option<EtcdTls>,
}

/// A failed call: the classification decides retries, the error is what the
/// caller sees.
struct CallError {
    failure: Failure,
    error: StoreError,
}

impl Membership {
    /// The cluster at `endpoints` (client URLs, e.g. `http://10.0.0.1:2379`),
    /// asked in this order.
    pub fn new(endpoints: impl Into<Vec<String>>) -> Self {
        Self {
            endpoints: endpoints.into(),
            tls: None,
        }
    }

    /// Over TLS (`https://` endpoints): trust only `tls`'s CA and show its
    /// client certificate.
    pub fn with_tls(mut self, tls: Option<EtcdTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Every member of the cluster.
    pub async fn list(&self) -> Result<Vec<Member>> {
        self.on_any("member list", |mut c| async move {
            c.member_list().await.map(|r| members(r.members()))
        })
        .await
        .map_err(|e| e.error)
    }

    /// Add a member with `peer_url` as a learner: its id and the members now.
    /// etcd refuses while its leader has not been connected to every voting
    /// member for a few seconds (e.g. right after a promotion): this retries
    /// for up to 30 s while etcd answers that it cannot do it now.
    pub async fn add_learner(&self, peer_url: &str) -> Result<(u64, Vec<Member>)> {
        self.while_unavailable(|| {
            let url = peer_url.to_string();
            self.on_any("member add", move |mut c| {
                let url = url.clone();
                async move {
                    let r = c
                        .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                        .await?;
                    let id = r.member().map(|m| m.id()).unwrap_or(0);
                    Ok((id, members(r.member_list())))
                }
            })
        })
        .await
    }

    /// Promote a learner to a voting member; fails while it is not in sync.
    pub async fn promote(&self, id: u64) -> Result<()> {
        self.on_any("member promote", |mut c| async move {
            c.member_promote(id).await.map(|_| ())
        })
        .await
        .map_err(|e| e.error)
    }

    /// Remove a member (retried like [`Membership::add_learner`]).
    pub async fn remove(&self, id: u64) -> Result<()> {
        self.while_unavailable(|| {
            self.on_any("member remove", |mut c| async move {
                c.member_remove(id).await.map(|_| ())
            })
        })
        .await
    }

    /// What the first member that answers says about itself (give one
    /// endpoint to ask one member).
    pub async fn status(&self) -> Result<MemberStatus> {
        self.on_any("status", |mut c| async move {
            let s = c.status().await?;
            Ok(MemberStatus {
                member_id: s.header().map(|h| h.member_id()).unwrap_or(0),
                leader: s.leader(),
                learner: s.is_learner(),
                version: s.version().to_string(),
                raft_index: s.raft_index(),
                errors: s.errors().to_vec(),
                db_size: s.db_size(),
                db_size_in_use: s.raft_used_db_size(),
                revision: s.header().map(|h| h.revision()).unwrap_or(0),
            })
        })
        .await
        .map_err(|e| e.error)
    }

    /// The cluster's alarms as the first member that answers lists them,
    /// e.g. `NOSPACE` on a member whose database reached its quota (etcd
    /// then refuses every write until it is compacted, defragmented and
    /// the alarm disarmed).
    pub async fn alarms(&self) -> Result<Vec<String>> {
        self.on_any("alarm list", |mut c| async move {
            let r = c
                .alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                )
                .await?;
            Ok(r.alarms()
                .iter()
                .map(|a| format!("{}:{:?}", a.member_id(), a.alarm()))
                .collect())
        })
        .await
        .map_err(|e| e.error)
    }

    /// Defragment the member at the first endpoint that answers (give one
    /// endpoint to defragment one member): it rewrites its database file
    /// without the free pages that compaction left, and answers nothing
    /// else meanwhile, so defragment one member at a time. Given its own,
    /// longer deadline ([`DEFRAG_TIMEOUT`]): a large database takes a
    /// while.
    pub async fn defragment(&self) -> Result<()> {
        let mut last = StoreError::Invalid("no etcd endpoints given".into());
        for ep in &self.endpoints {
            let opts = with_tls(
                ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(DEFRAG_TIMEOUT),
                self.tls.as_ref(),
            );
            let client = tokio::time::timeout(
                CONNECT_TIMEOUT + Duration::from_secs(1),
                Client::connect([ep.as_str()], Some(opts)),
            )
            .await;
            let mut client = match client {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    last = map_err(&format!("defragment at {ep}"), e);
                    continue;
                }
                Err(_) => {
                    last = StoreError::Unavailable(format!(
                        "etcd defragment at {ep}: no connection within the timeout"
                    ));
                    continue;
                }
            };
            match client.defragment().await {
                Ok(_) => return Ok(()),
                Err(e) => last = map_err(&format!("defragment at {ep}"), e),
            }
        }
        Err(last)
    }

    /// Whether the first member that answers knows a leader and reports no
    /// error.
    pub async fn healthy(&self) -> bool {
        matches!(self.status().await, Ok(s) if s.is_healthy())
    }

    /// Run `call` on the first endpoint that answers. Any failure moves on
    /// to the next endpoint (a refusal too: e.g. a learner asked for the
    /// member list refuses, a voting member answers); the last one is
    /// returned.
    async fn on_any<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = CallError {
            failure: Failure::Invalid,
            error: StoreError::Invalid("no etcd endpoints given".into()),
        };
        for ep in &self.endpoints {
            let no_answer = |reason: String| CallError {
                failure: Failure::NoAnswer,
                error: StoreError::Unavailable(format!("etcd {what} at {ep}: {reason}")),
            };
            let client = match connect(ep, self.tls.as_ref()).await {
                Ok(c) => c,
                Err(e) => {
                    last = match e {
                        Some(e) => CallError {
                            failure: failure(&e),
                            error: map_err(&format!("{what} at {ep}"), e),
                        },
                        None => no_answer("no connection within the timeout".into()),
                    };
                    continue;
                }
            };
            match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), call(client)).await
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    last = CallError {
                        failure: failure(&e),
                        error: map_err(&format!("{what} at {ep}"), e),
                    }
                }
                Err(_) => last = no_answer("no answer within the timeout".into()),
            }
        }
        Err(last)
    }

    /// Retry `f` for up to [`UNAVAILABLE_FOR`] while etcd answers that it
    /// cannot serve it now: it refuses membership changes until its leader
    /// has been connected to every voting member for 5 s.
    async fn while_unavailable<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let until = tokio::time::Instant::now() + UNAVAILABLE_FOR;
        let pauses = ConstantBuilder::default()
            .with_delay(UNAVAILABLE_PAUSE)
            .without_max_times();
        f.retry(pauses)
            .when(|e| e.failure == Failure::Unavailable && tokio::time::Instant::now() < until)
            .notify(|e, _| {
                tracing::debug!(error = %e.error, "etcd cannot change its membership now; retrying")
            })
            .await
            .map_err(|e| e.error)
    }
}

/// A client of the one member at `endpoint`; `None` for a timeout.
async fn connect(
    endpoint: &str,
    tls: Option<&EtcdTls>,
) -> std::result::Result<Client, Option<etcd_client::Error>> {
    let opts = with_tls(
        ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT),
        tls,
    );
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    {
        Ok(r) => r.map_err(Some),
        Err(_) => Err(None),
    }
}

/// `opts` with `tls`'s CA and client certificate, when given.
fn with_tls(opts: ConnectOptions, tls: Option<&EtcdTls>) -> ConnectOptions {
    match tls {
        Some(t) => opts.with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem))
                .identity(etcd_client::Identity::from_pem(&t.cert_pem, &t.key_pem)),
        ),
        None => opts,
    }
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

/// Against a real etcd (the `testing` feature, on for the crate's tests).
#[cfg(all(test, feature = "testing"))]
mod etcd_tests {
    use super::*;
    use crate::testing::EtcdCluster;

    /// A loopback port nothing listens on.
    const DEAD: &str = "http://127.0.0.1:9";

    #[tokio::test]
    async fn a_learner_is_added_refused_promotion_until_in_sync_and_removed() {
        let etcd = EtcdCluster::start(1).expect("etcd");
        // A dead endpoint first only costs a connect attempt.
        let mut eps = vec![DEAD.to_string()];
        eps.extend(etcd.endpoints());
        let m = Membership::new(eps);
        let before = m.list().await.expect("list");
        assert_eq!(before.len(), 1, "{before:?}");
        assert!(m.healthy().await);

        // A learner that never starts (nothing listens at its peer URL).
        let (id, now) = m.add_learner("http://127.0.0.1:1").await.expect("add");
        assert_eq!(now.len(), 2, "{now:?}");
        let learner = now.iter().find(|x| x.id == id).expect("the new member");
        assert!(learner.learner && learner.name.is_empty(), "{learner:?}");
        // etcd lists members in no particular order; neither does the flag.
        let mut flag: Vec<String> = initial_cluster(&now, id, "new")
            .split(',')
            .map(str::to_string)
            .collect();
        flag.sort();
        let mut want = vec![
            format!("{}={}", before[0].name, before[0].peer_urls[0]),
            "new=http://127.0.0.1:1".to_string(),
        ];
        want.sort();
        assert_eq!(flag, want);

        // etcd refuses to promote a learner that is not in sync: a refusal,
        // not "unavailable", so nobody waits for it to change its mind.
        let refused = m
            .on_any("member promote", |mut c| async move {
                c.member_promote(id).await.map(|_| ())
            })
            .await
            .expect_err("promoting a learner that never started");
        assert_eq!(refused.failure, Failure::Refused, "{}", refused.error);
        assert!(m.promote(id).await.is_err());

        m.remove(id).await.expect("remove");
        assert_eq!(m.list().await.expect("list"), before);
    }

    /// Compaction frees pages; defragmentation gives them back: the
    /// member's database shrinks, and its status says how big it is.
    #[tokio::test]
    async fn a_defragmented_member_gives_the_compacted_space_back() {
        use crate::Store;
        let etcd = EtcdCluster::start(1).expect("etcd");
        let store = crate::EtcdStore::connect(&etcd.endpoints(), "/defrag")
            .await
            .expect("connect");
        let value = "x".repeat(16 * 1024);
        let mut last = 0;
        for i in 0..400 {
            last = crate::StoreExt::put(&store, &format!("k/{}", i % 4), value.clone())
                .await
                .expect("put");
        }
        let m = Membership::new(etcd.endpoints());
        let before = m.status().await.expect("status");
        assert!(before.db_size > 4 << 20, "{before:?}");
        assert_eq!(before.revision, last);
        store.compact(last).await.expect("compact");
        m.defragment().await.expect("defragment");
        let after = m.status().await.expect("status");
        assert!(
            after.db_size < before.db_size / 2,
            "{} bytes before, {} after",
            before.db_size,
            after.db_size
        );
        assert!(after.is_healthy());
        assert_eq!(m.alarms().await.expect("alarms"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_no_answer() {
        let m = Membership::new(vec![DEAD.to_string()]);
        let e = m
            .on_any("member list", |mut c| async move {
                c.member_list().await.map(|_| ())
            })
            .await
            .expect_err("nothing listens there");
        assert_eq!(e.failure, Failure::NoAnswer, "{}", e.error);
        assert!(matches!(e.error, StoreError::Unavailable(_)), "{}", e.error);
        assert!(!m.healthy().await);
    }
}
