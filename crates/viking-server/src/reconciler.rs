//! The reconciler: keeps the cluster converged on viking-proc.
//!
//! Every server campaigns for leadership (`election/reconciler`, through the
//! store; on the embedded store the one server always wins). Only the leader
//! reconciles. It is level-triggered: any change under `proc/`, `ps/`, `ports/` or
//! `hosts/`, a backoff coming due, or the periodic resync makes it read the
//! whole state, ask the pure planner (`viking_core::reconcile::plan`) what
//! to do, and do it. A round never waits for a start: each action is
//! launched as a task (at most [`PARALLEL_STARTS`] run at once, the rest
//! wait for a slot), and the next round judges by viking-ps. A job whose
//! action is still in flight gets no second one. So a slow or stopped
//! peer, a long pull or a crash loop never holds up any other job; the
//! calls to peers have deadlines, so a stalled start frees its slot too.
//! Only the histories of the jobs a round places are read.
//!
//! Each start is fenced by a transaction: the job's viking-ps record must
//! still be at the revision the plan saw, and its viking-proc record too.
//! A stale plan, or a leader that lost its lease and does not know yet,
//! therefore cannot start a job twice, nor bring back a job that was
//! removed and run again with another spec. The `starting` record it
//! writes names this server as the claimant, and its revision travels with
//! the start to the chosen host, which starts the container only while
//! that record holds. A leader stops acting as soon as it sees its
//! leadership or its lease lost: no action begins after that; a start it
//! already claimed goes on to its end (the claim names this server, so
//! no other leader starts that job while this server lives, and the
//! chosen host checks the claim again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viking_core::rebalance;
use viking_core::reconcile::{self, Action, Snapshot};
use viking_core::records::{encode, ProcRecord, PsRecord};
use viking_core::{keys, Status};
use viking_store::{spawn_keep_alive, Compare, Election, Op, Revision, StoreError};

use crate::error::ServerError;
use crate::held::{Held, Revs, RoundInput};
use crate::placement::Target;
use crate::state;
use crate::{now_ms, Shared};

/// How many actions run at once (each mostly waits on a peer).
pub const PARALLEL_STARTS: usize = 128;
/// How many histories a round reads at once.
const HISTORY_READS: usize = 32;
/// How many of them start jobs on one host at once, so a host that comes
/// back or joins empty is not handed every move at the same moment.
pub const PARALLEL_STARTS_PER_HOST: usize = 4;

/// The leader's actions in flight: their tasks, a slot each, and the jobs
/// they are for (a job gets no second action while one is in flight).
/// Dropping it aborts them.
pub struct InFlight {
    tasks: tokio::task::JoinSet<()>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Each host's slots ([`PARALLEL_STARTS_PER_HOST`]).
    host_slots: std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>,
    jobs: Arc<Mutex<BTreeSet<String>>>,
    /// Whether this server leads: an action that gets its slot after the
    /// term ended does nothing.
    leading: Arc<std::sync::atomic::AtomicBool>,
    /// Until when (ms) a new leader leaves the jobs of hosts that are not
    /// alive where they are: the fleet may be restarting.
    settle_until: Option<u64>,
    /// Each host's jobs as this leader last published them (`None`: read
    /// them first).
    assigned: Option<BTreeMap<String, viking_core::records::AssignedRecord>>,
    /// The routes this leader last published (`None`: read them first).
    routes: Option<BTreeMap<String, viking_core::records::RouteRecord>>,
    /// Moves rebalancing may make now, and when that was counted (ms):
    /// `--rebalance-rate` a minute, at most a minute's worth at once.
    rebalance_budget: f64,
    rebalance_at: u64,
    /// Hosts alive at the last round, and for each host that died since,
    /// when it went and which of its jobs do not run elsewhere yet: the
    /// failover time (`viking_failover_seconds`).
    alive_before: BTreeSet<String>,
    failing_over: BTreeMap<String, (u64, BTreeSet<String>)>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            tasks: tokio::task::JoinSet::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(PARALLEL_STARTS)),
            host_slots: Default::default(),
            jobs: Arc::default(),
            leading: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            settle_until: None,
            routes: None,
            assigned: None,
            rebalance_budget: 0.0,
            rebalance_at: 0,
            alive_before: BTreeSet::new(),
            failing_over: BTreeMap::new(),
        }
    }
}

/// Follows the failovers of one round: a host that died since the last
/// round starts one (its jobs in viking-proc), a job that runs on another
/// host leaves it, and when none is left the time from the host's death is
/// observed. A host that comes back ends its failover unobserved.
fn follow_failovers(
    sh: &Shared,
    in_flight: &mut InFlight,
    alive_now: BTreeSet<String>,
    procs: &[viking_core::records::ProcRecord],
    ps: &BTreeMap<String, viking_core::records::PsRecord>,
    now: u64,
) {
    let desired: BTreeSet<&str> = procs.iter().map(|p| p.job.name.as_str()).collect();
    for host in in_flight.alive_before.difference(&alive_now) {
        let jobs: BTreeSet<String> = ps
            .values()
            .filter(|p| p.node == *host && desired.contains(p.job.as_str()))
            .map(|p| p.job.clone())
            .collect();
        if !jobs.is_empty() {
            in_flight.failing_over.insert(host.clone(), (now, jobs));
        }
    }
    in_flight
        .failing_over
        .retain(|host, _| !alive_now.contains(host));
    let mut done = Vec::new();
    for (host, (since, jobs)) in in_flight.failing_over.iter_mut() {
        jobs.retain(|j| {
            desired.contains(j.as_str())
                && !ps.get(j).is_some_and(|p| p.node != *host && p.is_running())
        });
        if jobs.is_empty() {
            done.push((host.clone(), now.saturating_sub(*since)));
        }
    }
    for (host, took_ms) in done {
        in_flight.failing_over.remove(&host);
        tracing::info!(host = %host, seconds = took_ms as f64 / 1000.0, "the jobs of a gone host run elsewhere");
        sh.metrics.failover_seconds.observe(took_ms as f64 / 1000.0);
    }
    in_flight.alive_before = alive_now;
}

impl InFlight {
    fn set_leading(&self, leading: bool) {
        self.leading
            .store(leading, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether an action for `job` is in flight.
    pub fn has(&self, job: &str) -> bool {
        self.jobs.lock().is_ok_and(|j| j.contains(job))
    }

    /// Whether no action is in flight.
    fn idle(&self) -> bool {
        self.jobs.lock().is_ok_and(|j| j.is_empty())
    }

    /// How many moves rebalancing may make now, at `per_minute`.
    fn rebalance_allowance(&mut self, now: u64, per_minute: u32) -> usize {
        let cap = f64::from(per_minute);
        let elapsed = now.saturating_sub(self.rebalance_at) as f64;
        self.rebalance_budget = match self.rebalance_at {
            0 => cap,
            _ => (self.rebalance_budget + elapsed * cap / 60_000.0).min(cap),
        };
        self.rebalance_at = now;
        self.rebalance_budget.floor() as usize
    }

    fn spend_rebalance(&mut self, moves: usize) {
        self.rebalance_budget = (self.rebalance_budget - moves as f64).max(0.0);
    }

    /// Wait until every action in flight has ended (tests).
    pub async fn drain(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    /// Launch `work` for `job` (on `host`, when it starts it there) unless
    /// an action for it is in flight.
    fn launch<F>(&mut self, job: String, host: Option<&str>, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        while self.tasks.try_join_next().is_some() {}
        // Hosts with no action in flight give their slots back.
        self.host_slots
            .retain(|_, s| s.available_permits() < PARALLEL_STARTS_PER_HOST);
        let host_slot = host.map(|h| {
            self.host_slots
                .entry(h.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PARALLEL_STARTS_PER_HOST)))
                .clone()
        });
        {
            let Ok(mut jobs) = self.jobs.lock() else {
                return;
            };
            if !jobs.insert(job.clone()) {
                return;
            }
        }
        let done = Done {
            job,
            jobs: self.jobs.clone(),
        };
        let slots = self.slots.clone();
        let leading = self.leading.clone();
        self.tasks.spawn(async move {
            let _done = done;
            let _host_slot = match host_slot {
                Some(s) => match s.acquire_owned().await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                None => None,
            };
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            if leading.load(std::sync::atomic::Ordering::SeqCst) {
                work.await;
            }
        });
    }
}

/// Takes a job out of the in-flight set when its task ends (or is
/// aborted, or panics).
struct Done {
    job: String,
    jobs: Arc<Mutex<BTreeSet<String>>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(&self.job);
        }
    }
}

/// Campaign, and reconcile while leader, until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    // Kept across terms: a start already claimed goes on to its end when
    // a term ends (the claim names this server, so nobody else starts the
    // job meanwhile); actions not begun yet are dropped. Aborted at
    // shutdown.
    let mut in_flight = InFlight::default();
    loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = campaign_and_lead(&sh, &mut in_flight) => {
                if let Err(e) = r {
                    tracing::warn!("reconciler: {e}");
                }
            }
        }
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn campaign_and_lead(sh: &Arc<Shared>, in_flight: &mut InFlight) -> Result<(), StoreError> {
    let ttl = sh.config.host_ttl;
    let election = Election::new(sh.store.clone(), "reconciler");
    // No lease kept alive while another server leads: wait for a vacancy,
    // then try once with a new lease; a server that lost the race lets
    // its lease go and waits again.
    let (lease, keep, leadership) = loop {
        election.vacant().await?;
        let lease = sh.store.lease_grant(ttl).await?;
        let keep = spawn_keep_alive(sh.store.clone(), lease, ttl);
        match election.try_campaign(&sh.config.name, lease).await {
            Ok(Some(leadership)) => break (lease, keep, leadership),
            Ok(None) => {
                keep.abort();
                let _ = sh.store.lease_revoke(lease).await;
            }
            Err(e) => {
                keep.abort();
                let _ = sh.store.lease_revoke(lease).await;
                return Err(e);
            }
        }
    };
    tracing::info!(name = %sh.config.name, "leader: reconciling the cluster");
    in_flight.set_leading(true);
    // A new leader gives hosts that are not alive two TTLs to come back
    // before it moves their jobs: after every server restarted at once the
    // first one up must not take every job.
    in_flight.settle_until = Some(now_ms() + 2 * ttl.as_millis() as u64);
    // What the last term published may have changed since.
    in_flight.routes = None;
    in_flight.assigned = None;
    let ended = tokio::select! {
        _ = leadership.lost() => {
            tracing::warn!("lost leadership");
            Ok(())
        }
        _ = keep.lost() => {
            tracing::warn!("leader lease lost");
            Ok(())
        }
        r = lead(sh, in_flight) => r,
        // The leader also keeps the store's history short (never ends).
        _ = crate::compaction::run(sh.clone()) => Ok(()),
    };
    // Stop acting at once (no action not begun yet begins, no run is
    // placed here); let the lease go so another server takes over.
    in_flight.set_leading(false);
    sh.set_placer(None);
    keep.abort();
    let _ = sh.store.lease_revoke(lease).await;
    ended
}

/// Whether a change under `key` may call for a round.
fn wakes_the_reconciler(key: &str) -> bool {
    [
        keys::PROC,
        keys::PS,
        keys::HOSTS,
        keys::PORTS,
        keys::PLACEMENTS,
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// The leader's loop: reconcile on every change, on time, and on backoffs.
async fn lead(sh: &Arc<Shared>, in_flight: &mut InFlight) -> Result<(), StoreError> {
    let held = Arc::new(Mutex::new(Held::new(sh.config.policy.reserve)));
    // Read once, then follow everything from the oldest of the reads: the
    // one watch delivers every later change, in order.
    let mut from = Revision::MAX;
    for prefix in [
        keys::PROC,
        keys::PS,
        keys::PLACEMENTS,
        keys::HOSTS,
        keys::FLEET,
    ] {
        let (kvs, at) = sh.store.list(prefix).await?;
        if let Ok(mut h) = held.lock() {
            for kv in &kvs {
                h.note(
                    viking_store::EventKind::Put,
                    &kv.key,
                    &kv.value,
                    kv.mod_revision,
                );
            }
        }
        from = from.min(at);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut watchers = tokio::task::JoinSet::new();
    {
        let mut w = sh.store.watch("", from + 1).await?;
        let held = held.clone();
        let broken = broken.clone();
        watchers.spawn(async move {
            // A revision at a time: a round never plans over half of a
            // transaction.
            while let Some(evs) = w.next_revision().await {
                let Ok(evs) = evs else { break };
                if let Ok(mut h) = held.lock() {
                    for ev in &evs {
                        h.note(
                            ev.kind.clone(),
                            &ev.kv.key,
                            &ev.kv.value,
                            ev.kv.mod_revision,
                        );
                    }
                }
                if evs.iter().any(|ev| wakes_the_reconciler(&ev.kv.key)) {
                    let _ = tx.try_send(());
                }
            }
            // What is held may now miss a change: read it all again.
            broken.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.try_send(());
        });
    }
    let mut wake_at: Option<u64> = None;
    // 1 while this loop runs (this server leads), 0 once it returns.
    struct Leading<'a>(&'a crate::metrics::Metrics);
    impl Drop for Leading<'_> {
        fn drop(&mut self) {
            self.0.leader.set(0);
        }
    }
    sh.metrics.leader.set(1);
    let _leading = Leading(&sh.metrics);
    loop {
        if broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let state = held.lock().ok().map(|mut h| h.state());
        let Some(state) = state else {
            return Ok(());
        };
        let round_began = std::time::Instant::now();
        match reconcile_round_over(sh, in_flight, Some(state)).await {
            Ok(w) => wake_at = w,
            Err(e) => tracing::warn!("reconcile: {}", e),
        }
        let round_took = round_began.elapsed();
        sh.metrics.reconcile_rounds.inc();
        sh.metrics
            .reconcile_seconds
            .observe(round_took.as_secs_f64());
        // Runs are placed here once the load per host is published (the
        // placer counts claims since).
        if let Some(index) = &in_flight.assigned {
            if let Ok(mut h) = held.lock() {
                h.set_index(
                    index
                        .iter()
                        .map(|(host, r)| (host.clone(), (r.load, r.claims)))
                        .collect(),
                );
            }
            if sh.placer().is_none() {
                sh.set_placer(Some(Arc::new(crate::placer::Placer::new(held.clone()))));
            }
        }
        let sleep = match wake_at {
            Some(t) => Duration::from_millis(t.saturating_sub(now_ms()).max(10)),
            None => sh.config.resync,
        }
        .min(sh.config.resync);
        tokio::select! {
            r = rx.recv() => {
                if r.is_none() {
                    // The watch ended: read everything again.
                    return Ok(());
                }
                // Let a burst of changes settle into one round; a large
                // fleet's round costs more, so under a stream of changes
                // the leader plans at most half of the time.
                tokio::time::sleep(Duration::from_millis(50).max(round_took)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One level-triggered round whose actions have all ended (tests, and a
/// server's one-off round); when to plan again for a backoff.
pub async fn reconcile_once(sh: &Arc<Shared>) -> Result<Option<u64>, ServerError> {
    let mut in_flight = InFlight::default();
    let wake = reconcile_round_over(sh, &mut in_flight, None).await?;
    in_flight.drain().await;
    Ok(wake)
}

/// One level-triggered round: plan, and launch the actions of the jobs
/// that have none in flight, without waiting for them; when to plan again
/// for a backoff.
pub async fn reconcile_round(
    sh: &Arc<Shared>,
    in_flight: &mut InFlight,
) -> Result<Option<u64>, ServerError> {
    reconcile_round_over(sh, in_flight, None).await
}

/// [`reconcile_round`] over records the leader holds, or read now when
/// `None`.
async fn reconcile_round_over(
    sh: &Arc<Shared>,
    in_flight: &mut InFlight,
    held: Option<RoundInput>,
) -> Result<Option<u64>, ServerError> {
    // A store that is not this cluster's (emptied, replaced) is not acted on.
    if !crate::standing::may_act(sh).await? {
        return Ok(None);
    }
    let leading = held.is_some();
    let (claims, hosts, (procs, ps, revs)) = match held {
        Some(h) => h,
        // The placements counters first: a claim the records miss is
        // counted by the index's readers as made since.
        None => {
            let claims = crate::placement::guards(sh).await?;
            let state = read_state(sh).await?;
            let hosts = crate::placement::floki_hosts(sh).await?;
            (claims, Arc::new(hosts), state)
        }
    };
    // embassy's routes, for every server to follow.
    if let Err(e) = crate::services::publish(sh, &procs, &ps, &mut in_flight.routes).await {
        tracing::warn!("publishing the services' routes: {e}");
    }
    // Each host's jobs, for its agent's resync.
    if let Err(e) =
        crate::assigned::publish(sh, &ps, &procs, &claims, &mut in_flight.assigned).await
    {
        tracing::warn!("publishing each host's jobs: {e}");
    }
    let fleet = hosts;
    let hosts =
        crate::placement::snapshot_over(&fleet, ps.values(), &procs, sh.config.policy.reserve);
    let now = now_ms();
    if leading {
        let alive_now = hosts
            .iter()
            .filter(|h| h.alive)
            .map(|h| h.name.clone())
            .collect();
        follow_failovers(sh, in_flight, alive_now, &procs, &ps, now);
    }
    let settling = match in_flight.settle_until {
        Some(t) if now < t => hosts
            .iter()
            .filter(|h| !h.alive)
            .map(|h| h.name.clone())
            .collect(),
        _ => Default::default(),
    };
    let mut snap = Snapshot {
        procs,
        ps,
        hosts,
        histories: BTreeMap::new(),
        settling,
    };
    let policy = sh.config.policy;
    // The histories of the jobs this round places, each read for its job:
    // a job that runs needs none.
    // Read concurrently: after a host is lost, a round places all its jobs.
    use futures::StreamExt;
    // A job whose action is in flight gets none this round: no history.
    let to_place: Vec<String> = reconcile::to_place(&snap, &policy, now)
        .into_iter()
        .filter(|name| !in_flight.has(name))
        .collect();
    let mut reads = futures::stream::iter(to_place)
        .map(|name| async move {
            let read = state::history(sh.store.as_ref(), &name).await;
            (name, read)
        })
        .buffer_unordered(HISTORY_READS);
    while let Some((name, read)) = reads.next().await {
        snap.histories.insert(name, read?.0);
    }
    drop(reads);
    let plan = reconcile::plan(&snap, &policy, now);
    let mut actions: Vec<Action> = plan
        .actions
        .into_iter()
        .filter(|a| !in_flight.has(a.job()))
        .collect();
    // A converged fleet is rebalanced, a few moves a minute.
    if leading && policy.rebalance_per_minute > 0 && actions.is_empty() && in_flight.idle() {
        let allowed = in_flight.rebalance_allowance(now, policy.rebalance_per_minute);
        if allowed > 0 {
            let moves = rebalance::plan(&snap, &policy, now, policy.rebalance_threshold, allowed);
            in_flight.spend_rebalance(moves.len());
            for m in moves {
                tracing::info!(job = %m.job, from = %m.from, to = %m.to, "rebalancing: {}", m.why);
                actions.push(move_action(&snap, m));
            }
        }
    }
    if !actions.is_empty() {
        tracing::info!(actions = actions.len(), "reconciling");
    }
    // Each action finds its job's record by name.
    let wanted: BTreeSet<&str> = actions.iter().map(|a| a.job()).collect();
    let index: Arc<std::collections::HashMap<String, usize>> = Arc::new(
        snap.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| wanted.contains(p.job.name.as_str()))
            .map(|(i, p)| (p.job.name.clone(), i))
            .collect(),
    );
    drop(wanted);
    let snap = Arc::new(snap);
    let revs = Arc::new(revs);
    for a in actions {
        let sh = sh.clone();
        let snap = snap.clone();
        let revs = revs.clone();
        let fleet = fleet.clone();
        let index = index.clone();
        let job = a.job().to_string();
        let host = match &a {
            Action::Start { node, .. } => Some(node.clone()),
            Action::Wait { .. } => None,
        };
        in_flight.launch(job.clone(), host.as_deref(), async move {
            let proc = index.get(a.job()).and_then(|i| snap.procs.get(*i));
            if let Err(e) = execute(&sh, &snap, proc, &revs, &fleet, a).await {
                tracing::warn!(%job, "reconcile action failed: {}", e);
            }
        });
    }
    let settle_end = in_flight.settle_until.filter(|t| now < *t);
    Ok(match (plan.wake_at, settle_end) {
        (Some(w), Some(t)) => Some(w.min(t)),
        (w, t) => w.or(t),
    })
}

/// A rebalancing move as the start it is: the job started on the target
/// with its counters, start-first (its old host keeps its copy until the
/// new one runs).
fn move_action(snap: &Snapshot, m: rebalance::Move) -> Action {
    let ps = snap.ps.get(&m.job);
    Action::Start {
        restarts: ps.map_or(0, |p| p.restarts),
        crash_streak: ps.map_or(0, |p| p.crash_streak),
        job: m.job,
        node: m.to,
    }
}

/// `viking rebalance`: the moves that would even out the hosts' loads now,
/// over the store as it is (any number, whatever the rate); made unless
/// `dry_run`.
pub async fn rebalance_now(
    sh: &Arc<Shared>,
    dry_run: bool,
) -> Result<Vec<rebalance::Move>, ServerError> {
    let (procs, ps, revs) = read_state(sh).await?;
    let fleet = crate::placement::floki_hosts(sh).await?;
    let hosts =
        crate::placement::snapshot_over(&fleet, ps.values(), &procs, sh.config.policy.reserve);
    let snap = Snapshot {
        procs,
        ps,
        hosts,
        histories: BTreeMap::new(),
        settling: Default::default(),
    };
    let policy = sh.config.policy;
    let moves = rebalance::plan(
        &snap,
        &policy,
        now_ms(),
        policy.rebalance_threshold,
        usize::MAX,
    );
    if dry_run {
        return Ok(moves);
    }
    for m in &moves {
        let proc = snap.procs.iter().find(|p| p.job.name == m.job);
        tracing::info!(job = %m.job, from = %m.from, to = %m.to, "rebalancing now: {}", m.why);
        execute(
            sh,
            &snap,
            proc,
            &revs,
            &fleet,
            move_action(&snap, m.clone()),
        )
        .await?;
    }
    Ok(moves)
}

async fn read_state(
    sh: &Shared,
) -> Result<(Vec<ProcRecord>, BTreeMap<String, PsRecord>, Revs), ServerError> {
    // An unreadable record is skipped (and reported): a job whose proc
    // cannot be read is not planned, nor one whose ps cannot be (it may
    // run: starting it again could run it twice).
    let mut revs = Revs::default();
    let (good_procs, _) =
        state::list_with_revs::<ProcRecord>(sh.store.as_ref(), keys::PROC).await?;
    let (good, bad) = state::list_with_revs::<PsRecord>(sh.store.as_ref(), keys::PS).await?;
    let unreadable: std::collections::HashSet<&str> =
        bad.iter().filter_map(|u| u.name(keys::PS)).collect();
    let mut procs = Vec::with_capacity(good_procs.len());
    for (p, rev) in good_procs {
        if unreadable.contains(p.job.name.as_str()) {
            continue;
        }
        revs.proc.insert(p.job.name.clone(), rev);
        procs.push(p);
    }
    let mut ps = BTreeMap::new();
    for (r, rev) in good {
        revs.ps.insert(r.job.clone(), rev);
        ps.insert(r.job.clone(), r);
    }
    Ok((procs, ps, revs))
}

/// The compares of an action: viking-proc and viking-ps as the plan saw
/// them.
fn fence(job: &str, revs: &Revs) -> Vec<Compare> {
    let proc = match revs.proc.get(job) {
        Some(r) => Compare::ModRevision(keys::proc(job), *r),
        None => Compare::Exists(keys::proc(job)),
    };
    let ps = match revs.ps.get(job) {
        Some(r) => Compare::ModRevision(keys::ps(job), *r),
        None => Compare::Absent(keys::ps(job)),
    };
    vec![proc, ps]
}

async fn execute(
    sh: &Arc<Shared>,
    snap: &Snapshot,
    proc: Option<&ProcRecord>,
    revs: &Revs,
    fleet: &[(viking_core::records::HostRecord, bool)],
    action: Action,
) -> Result<(), ServerError> {
    let Some(proc) = proc else {
        return Ok(());
    };
    let old = snap.ps.get(action.job());
    match action {
        Action::Wait { job, reason } => {
            let mut p = proc.clone();
            p.waiting = Some(reason.clone());
            let mut ops = vec![Op::Put {
                key: keys::proc(&job),
                value: encode(&p)?,
                lease: None,
            }];
            if let Some(o) = old {
                let mut w = o.clone();
                w.status = Status::Waiting;
                w.error = Some(reason);
                ops.push(Op::Put {
                    key: keys::ps(&job),
                    value: encode(&w)?,
                    lease: None,
                });
            }
            sh.store.txn(fence(&job, revs), ops, vec![]).await?;
            Ok(())
        }
        Action::Start {
            job,
            node,
            restarts,
            crash_streak,
        } => {
            // Fence: claim the start in viking-ps at the revision we saw.
            let starting = PsRecord {
                image_id: old.map(|o| o.image_id.clone()).unwrap_or_default(),
                restarts,
                crash_streak,
                last_exit: old.and_then(|o| o.exit_code.or(o.last_exit)),
                ..crate::state::starting_record(&proc.job, &node, Some(&sh.config.name), now_ms())
            };
            let mut placed = proc.clone();
            placed.placed_on = Some(node.clone());
            placed.waiting = None;
            let r = sh
                .store
                .txn(
                    fence(&job, revs),
                    vec![
                        Op::Put {
                            key: keys::ps(&job),
                            value: encode(&starting)?,
                            lease: None,
                        },
                        Op::Put {
                            key: keys::proc(&job),
                            value: encode(&placed)?,
                            lease: None,
                        },
                    ],
                    vec![],
                )
                .await?;
            if !r.succeeded {
                return Ok(());
            }
            tracing::info!(%job, %node, restarts, "starting");
            // The chosen host's record as the round read it (the plan
            // chose it alive).
            let target = if node == sh.config.name {
                Target::Here
            } else {
                match fleet.iter().find(|(h, _)| h.name == node) {
                    Some((h, _)) => Target::There(h.clone()),
                    None => Target::Waiting(node.clone()),
                }
            };
            let started = crate::jobs::start_on(sh, &proc.job, &target, r.revision, &|_| {}).await;
            if let Err(e) = started {
                // Record the failure (if the record is still our claim), so
                // the backoff applies and `viking ps` shows why.
                state::fail_start(
                    sh.store.as_ref(),
                    &job,
                    r.revision,
                    Some(starting),
                    &e.to_string(),
                )
                .await?;
                return Err(e);
            }
            Ok(())
        }
    }
}
