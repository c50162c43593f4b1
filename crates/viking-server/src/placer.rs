//! dowding at the leader: a run at any server is placed by the leader, in
//! memory, over what it holds ([`crate::held`]: floki's hosts, the load it
//! published per host, the claims made since) and claimed in one
//! transaction, so a placement costs the store one claim (and, for a fixed
//! job, one read of where it ran), whatever the size of the fleet. The asking server carries out the
//! start, as before (the claim names it).
//!
//! The claim's transaction is the same as a server placing on its own
//! ([`crate::state::claim_daemon`]: the name, and the chosen host's
//! placements counter as the leader held it), so a leader that lost its
//! term, a stale view or a server placing without the leader never places
//! two jobs over one count. A server that cannot reach a leader, or asks
//! one that no longer leads, places the job itself over the store's
//! indexes ([`crate::placement`]); so does a job that publishes a fixed
//! host port (its placement needs every host's ports in use).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use viking_client::api::{ErrorReason, PlaceRequest, PlaceResponse};
use viking_core::records::HostRecord;
use viking_core::{keys, scheduler, Job};
use viking_store::Revision;

use crate::error::{Result, ServerError};
use crate::held::Held;
use crate::placement::{Guard, Target};
use crate::{now_ms, state, Shared};

/// The leader's placer, for its term.
pub struct Placer {
    held: Arc<Mutex<Held>>,
    /// One queue per host: the claims decided for a host are written one
    /// after the other, each over the counter its predecessor left, so a
    /// burst's claims do not race each other (and every decision counted
    /// as pending is claimed, unless another server claims first).
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Jobs claimed through this placer.
    claimed: std::sync::atomic::AtomicU64,
}

/// Where a job was placed and claimed.
pub struct Placed {
    /// The chosen host; `None` when the job waits for `waiting_for`.
    pub host: Option<String>,
    pub waiting_for: Option<String>,
    /// The claim's revision.
    pub rev: Revision,
    /// The chosen host's floki record, as held.
    pub record: Option<HostRecord>,
}

impl Placer {
    pub fn new(held: Arc<Mutex<Held>>) -> Self {
        Self {
            held,
            queues: Mutex::default(),
            claimed: Default::default(),
        }
    }

    /// How many jobs were claimed through this placer.
    pub fn claims_made(&self) -> u64 {
        self.claimed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn poisoned() -> ServerError {
        ServerError::Internal("the leader's placer lock is poisoned".into())
    }

    /// `host`'s claim queue.
    fn queue(&self, host: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let mut q = self.queues.lock().map_err(|_| Self::poisoned())?;
        Ok(q.entry(host.to_string()).or_default().clone())
    }

    /// Place `job` over what the leader holds and claim it for `claimant`.
    ///
    /// Decisions are made one at a time over the load held plus the
    /// decisions not claimed yet, so each takes a least loaded host; the
    /// claims then run concurrently across hosts and in order per host.
    pub async fn claim(
        &self,
        sh: &Shared,
        job: &Job,
        claimant: &str,
        siblings: &[String],
    ) -> Result<Placed> {
        // Only a fixed job's placement depends on where it ran before.
        let hist = match job.fixed {
            true => Some(state::history(sh.store.as_ref(), &job.name).await?.0),
            false => None,
        };
        for _ in 0..crate::placement::TRIES {
            let d = {
                let mut held = self.held.lock().map_err(|_| Self::poisoned())?;
                let need = held.need(job);
                let mut apart = held.apart(job);
                apart.extend(siblings.iter().cloned());
                let hosts = held.placement_snapshot();
                let d = scheduler::place_apart(job, need, hosts, hist.as_ref(), &apart);
                let id = d.host.as_ref().map(|h| held.decided(h, job));
                (d, id)
            };
            let (d, id) = d;
            let mut pending = d.host.as_ref().zip(id).map(|(h, id)| Pending {
                placer: self,
                id,
                host: h.clone(),
                claimed: false,
            });
            let waiting = match (&d.host, &d.waiting_for) {
                (Some(_), _) => None,
                (None, Some(w)) => Some(format!("waiting for host {w}")),
                (None, None) => return Err(ServerError::Unavailable(d.explain())),
            };
            // In the host's queue: the counter as the claim before left it.
            let queue = match &d.host {
                Some(h) => Some(self.queue(h)?),
                None => None,
            };
            let _turn = match &queue {
                Some(q) => Some(q.lock().await),
                None => None,
            };
            let guard = match &d.host {
                Some(h) => {
                    let held = self.held.lock().map_err(|_| Self::poisoned())?;
                    Some(Guard::new(h, held.claims_of(h)))
                }
                None => None,
            };
            let claimed = state::claim_daemon(
                sh.store.as_ref(),
                state::DaemonClaim {
                    job,
                    placed_on: d.host.clone(),
                    claimant,
                    waiting,
                    guard: guard.clone(),
                    service_ports: crate::services::tcp_ports(job),
                    ports: sh.config.embassy_ports,
                    now: now_ms(),
                    cluster: sh.cluster_id(),
                },
            )
            .await?;
            match claimed {
                state::Claimed::Yes(rev) => {
                    self.claimed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut record = None;
                    if let Some(g) = &guard {
                        let mut held = self.held.lock().map_err(|_| Self::poisoned())?;
                        held.note_claim(&g.host, rev, g.claims + 1);
                        record = held
                            .hosts()
                            .iter()
                            .find(|(h, _)| h.name == g.host)
                            .map(|(h, _)| h.clone());
                    }
                    if let Some(p) = pending.as_mut() {
                        p.claimed = true;
                    }
                    return Ok(Placed {
                        host: d.host,
                        waiting_for: d.waiting_for,
                        rev,
                        record,
                    });
                }
                state::Claimed::NotMember => return Err(crate::standing::refusal(sh).await),
                state::Claimed::HostChanged => {
                    // Another server claimed on the host first: hold its
                    // counter as it is now, and decide again.
                    let Some(g) = &guard else { continue };
                    let key = keys::placements(&g.host);
                    if let Some(kv) = sh.store.get(&key).await? {
                        let mut held = self.held.lock().map_err(|_| Self::poisoned())?;
                        held.note_claim(
                            &g.host,
                            kv.mod_revision,
                            crate::placement::claim_count(&kv.value),
                        );
                    }
                }
            }
        }
        Err(ServerError::Unavailable(format!(
            "placing {:?} kept racing with other placements; try again",
            job.name
        )))
    }
}

/// A decision counted as pending until its claim ended: made (the
/// counter holds it now), or not (the host's floor drops by one).
struct Pending<'a> {
    placer: &'a Placer,
    id: u64,
    host: String,
    claimed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.placer.held.lock() {
            held.decision_ended(self.id, &self.host, self.claimed);
        }
    }
}

/// The leader's answer to `POST /v1/internal/place`; `NotLeader` when this
/// server does not lead (or its term has not settled yet).
pub async fn serve(sh: &Shared, req: PlaceRequest) -> Result<PlaceResponse> {
    let placer = sh
        .placer()
        .ok_or_else(|| ServerError::NotLeader(format!("{} does not lead", sh.config.name)))?;
    let placed = placer
        .claim(sh, &req.job, &req.claimant, &req.apart)
        .await?;
    Ok(PlaceResponse {
        host: placed.host,
        waiting_for: placed.waiting_for,
        claim_rev: placed.rev,
        host_record: placed.record,
    })
}

/// Place and claim `job` at the leader (this server, or the one it asks);
/// `None` when there is no leader to ask (none, unreachable, or it no
/// longer leads): the caller places it itself.
pub async fn at_leader(
    sh: &Shared,
    job: &Job,
    siblings: &[String],
) -> Result<Option<(Target, Revision)>> {
    let placed = if let Some(placer) = sh.placer() {
        placer.claim(sh, job, &sh.config.name, siblings).await?
    } else {
        let Some(leader) = leader(sh).await? else {
            return Ok(None);
        };
        let req = PlaceRequest {
            job: job.clone(),
            claimant: sh.config.name.clone(),
            apart: siblings.to_vec(),
        };
        let asked = crate::peer::peer(sh, &leader)?
            .place(&req)
            .await
            .map_err(|e| ServerError::from_peer(&leader.name, e));
        match asked {
            Ok(r) => Placed {
                host: r.host,
                waiting_for: r.waiting_for,
                rev: r.claim_rev,
                record: r.host_record,
            },
            Err(e) if asks_elsewhere(&e) => {
                tracing::debug!(leader = %leader.name, "placing at the leader: {e}; placing here");
                forget_leader(sh);
                // A leader that did not answer in time may have claimed
                // the job for this server all the same.
                return own_claim(sh, job).await;
            }
            Err(e) => return Err(e),
        }
    };
    let target = match (placed.host, placed.waiting_for) {
        (Some(h), _) if h == sh.config.name => Target::Here,
        (Some(h), _) => match placed.record.filter(|r| r.name == h) {
            Some(r) => Target::There(r),
            None => crate::placement::target(sh, &h)
                .await?
                .ok_or_else(|| ServerError::Unavailable(format!("host {h:?} left floki")))?,
        },
        (None, Some(w)) => Target::Waiting(w),
        (None, None) => {
            return Err(ServerError::Internal(
                "the leader placed the job nowhere".into(),
            ))
        }
    };
    Ok(Some((target, placed.rev)))
}

/// Whether an answer from the leader sends the placement back to this
/// server: it could not be reached, or does not lead.
fn asks_elsewhere(e: &ServerError) -> bool {
    e.is_unreachable()
        || matches!(
            e,
            ServerError::Peer {
                reason: Some(ErrorReason::NotLeader),
                ..
            }
        )
}

/// A claim of `job` for this server already in the store (a leader that
/// claimed it and answered too late): the job's target and the claim's
/// revision; `None` when there is none (the name is free, or someone
/// else's).
async fn own_claim(sh: &Shared, job: &Job) -> Result<Option<(Target, Revision)>> {
    let (ps, rev) = match state::ps(sh.store.as_ref(), &job.name).await {
        Ok(Some(found)) => found,
        Ok(None) | Err(ServerError::Record(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mine = ps.status == viking_core::Status::Starting
        && ps.claimed_by.as_deref() == Some(sh.config.name.as_str());
    let same = state::proc(sh.store.as_ref(), &job.name)
        .await?
        .is_some_and(|p| p.job == *job);
    if !(mine && same) {
        return Ok(None);
    }
    Ok(crate::placement::target(sh, &ps.node)
        .await?
        .map(|t| (t, rev)))
}

/// The leading server's floki record, as last looked up (`None`: no
/// leader, or this server leads without a placer yet).
async fn leader(sh: &Shared) -> Result<Option<HostRecord>> {
    if let Some(h) = sh.leader_hint.lock().ok().and_then(|h| h.clone()) {
        return Ok(Some(h));
    }
    let name = viking_store::Election::new(sh.store.clone(), "reconciler")
        .leader()
        .await?;
    let Some(name) = name.filter(|n| *n != sh.config.name) else {
        return Ok(None);
    };
    let host = crate::floki::host(sh, &name).await?;
    if let (Some(h), Ok(mut hint)) = (&host, sh.leader_hint.lock()) {
        *hint = Some(h.clone());
    }
    Ok(host)
}

fn forget_leader(sh: &Shared) {
    if let Ok(mut hint) = sh.leader_hint.lock() {
        *hint = None;
    }
}
