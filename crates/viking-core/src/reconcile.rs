//! The reconciler's planner: viking-proc (desired) against viking-ps
//! (actual) and floki (which hosts are alive), at time `now`, gives the
//! actions that move the cluster towards proc.
//!
//! Level-triggered, Kubernetes-style: the plan depends only on the snapshot,
//! never on what happened before, so running it again after a crash, twice
//! in a row or on a new leader is always safe. The executor makes each start
//! a compare-and-swap on the job's viking-ps revision, so a stale plan cannot
//! start a job twice.
//!
//! For each daemonized job in proc:
//! - running on a live host: nothing to do;
//! - starting: nothing to do while the server that claimed the start is
//!   alive and the start timeout has not passed (that server places it
//!   again itself if the chosen host is gone); once that server is gone (it
//!   died between its claim and the start, or while forwarding it), started
//!   again at once, without a backoff;
//! - exited, failed, vanished on a live host: start it again, after an
//!   exponential backoff that grows while it keeps failing and resets after
//!   a stable run, so a crash loop never starves other work;
//! - on a host that is gone: a fixed job waits for its host ("waiting for
//!   host X"); any other job is placed again by dowding;
//! - never started: placed by dowding.

use std::collections::{BTreeMap, BTreeSet};

use crate::job::Job;
use crate::records::{History, ProcRecord, PsRecord};
use crate::scheduler::{self, HostSnapshot, Reservation};
use crate::status::Status;

/// Timing policy of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first restart delay, in ms.
    pub backoff_base_ms: u64,
    /// The longest restart delay, in ms.
    pub backoff_max_ms: u64,
    /// A run at least this long resets the backoff.
    pub stable_after_ms: u64,
    /// A start that has not finished after this long is retried
    /// (`--start-timeout`), even while the server that claimed it lives.
    pub start_timeout_ms: u64,
    /// What a job without limits reserves on its host
    /// (`--reserve-memory`, `--reserve-cpus`).
    pub reserve: Reservation,
    /// How many jobs the leader moves a minute to even out the hosts'
    /// loads (`--rebalance-rate`; 0: `--rebalance off`).
    pub rebalance_per_minute: u32,
    /// How many more jobs the most loaded live host may run than the
    /// least loaded before jobs move (`--rebalance-threshold`).
    pub rebalance_threshold: u64,
}

/// What a job without limits reserves by default: 64 MiB, and no CPU (it
/// shares what the host has).
pub const DEFAULT_RESERVE: Reservation = Reservation {
    memory: 64 << 20,
    cpus: 0,
};

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            stable_after_ms: 10_000,
            start_timeout_ms: 300_000,
            reserve: DEFAULT_RESERVE,
            rebalance_per_minute: 10,
            rebalance_threshold: 1,
        }
    }
}

impl Policy {
    /// The delay before the restart that follows `streak` failures in a row.
    pub fn backoff(&self, streak: u32) -> u64 {
        if streak == 0 {
            return 0;
        }
        let exp = (streak - 1).min(32);
        self.backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms)
    }
}

/// What the reconciler reads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub procs: Vec<ProcRecord>,
    /// viking-ps by job name.
    pub ps: BTreeMap<String, PsRecord>,
    /// floki's hosts with their load, for dowding.
    pub hosts: Vec<HostSnapshot>,
    /// Placement history of the jobs in proc.
    pub histories: BTreeMap<String, History>,
    /// Hosts that are not alive but whose jobs are not moved yet: a leader
    /// that just took over gives the fleet time to come back (every server
    /// restarted at once, for an upgrade, must not move every job).
    pub settling: BTreeSet<String>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `job` on `node`. `restarts` and `crash_streak` are the values
    /// its viking-ps record gets.
    Start {
        job: String,
        node: String,
        restarts: u32,
        crash_streak: u32,
    },
    /// The job cannot run now: show why (in proc, and in ps when it has a
    /// record).
    Wait { job: String, reason: String },
}

impl Action {
    pub fn job(&self) -> &str {
        match self {
            Action::Start { job, .. } | Action::Wait { job, .. } => job,
        }
    }
}

/// The plan of one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When a backoff ends: plan again then.
    pub wake_at: Option<u64>,
}

fn is_live(status: &Status) -> bool {
    status.is_live()
}

fn alive_hosts(snap: &Snapshot) -> BTreeSet<&str> {
    snap.hosts
        .iter()
        .filter(|h| h.alive)
        .map(|h| h.name.as_str())
        .collect()
}

/// Whether a job that ran on `node` may be moved now.
fn may_move_from(snap: &Snapshot, node: &str) -> bool {
    !snap.settling.contains(node)
}

/// The jobs this round places (those [`plan`] starts or makes wait): only
/// their histories are needed, so the executor reads just those.
pub fn to_place(snap: &Snapshot, policy: &Policy, now: u64) -> Vec<String> {
    let alive = alive_hosts(snap);
    let mut wake_at = None;
    snap.procs
        .iter()
        .filter(|p| {
            let ps = snap.ps.get(&p.job.name);
            needs_start(ps, &alive, policy, now, &mut wake_at).is_some()
                && ps
                    .is_none_or(|r| alive.contains(r.node.as_str()) || may_move_from(snap, &r.node))
        })
        .map(|p| p.job.name.clone())
        .collect()
}

/// Whether a job whose viking-ps record is `ps` must be started now, with
/// the restart count and crash streak its record gets; `wake_at` learns
/// when a backoff or a start timeout comes due.
fn needs_start(
    ps: Option<&PsRecord>,
    alive: &BTreeSet<&str>,
    policy: &Policy,
    now: u64,
    wake_at: &mut Option<u64>,
) -> Option<(u32, u32)> {
    let mut wake = |t: u64| {
        *wake_at = Some(wake_at.map_or(t, |w: u64| w.min(t)));
    };
    let start_deadline = |p: &PsRecord| p.created_at.saturating_add(policy.start_timeout_ms);
    match ps {
        None => Some((0, 0)),
        // A start whose claimant lives is that server's to finish, or to
        // place again when its host is gone, until the start timeout.
        Some(p)
            if p.status == Status::Starting
                && p.claimed_by.as_deref().is_some_and(|c| alive.contains(c)) =>
        {
            let deadline = start_deadline(p);
            if now < deadline {
                wake(deadline);
                None
            } else {
                Some((p.restarts + 1, p.crash_streak + 1))
            }
        }
        Some(p) if alive.contains(p.node.as_str()) => {
            if is_live(&p.status) {
                None
            } else if p.status == Status::Starting {
                // Its claimant, if it names one, is gone (see above).
                let claimant_gone = p.claimed_by.is_some();
                let deadline = start_deadline(p);
                if claimant_gone {
                    // Nobody carries the start out any more: not the
                    // job's fault, so no backoff.
                    Some((p.restarts + 1, p.crash_streak))
                } else if now < deadline {
                    wake(deadline);
                    None
                } else {
                    Some((p.restarts + 1, p.crash_streak + 1))
                }
            } else {
                // Exited, dead, failed, missing, waiting, created.
                let ran = match (p.started_at, p.finished_at) {
                    (Some(s), Some(f)) => f.saturating_sub(s),
                    _ => 0,
                };
                let streak = if ran >= policy.stable_after_ms {
                    0
                } else {
                    p.crash_streak
                };
                let since = p.finished_at.unwrap_or(p.created_at);
                let due = since.saturating_add(policy.backoff(streak));
                if now < due {
                    wake(due);
                    None
                } else {
                    Some((p.restarts + 1, streak + 1))
                }
            }
        }
        // Its host is gone: not the job's fault, so no backoff.
        Some(p) => Some((p.restarts + 1, p.crash_streak)),
    }
}

/// Plan one round.
pub fn plan(snap: &Snapshot, policy: &Policy, now: u64) -> Plan {
    let alive = alive_hosts(snap);
    // Placements made in this plan count as load, so a batch spreads.
    let mut hosts = snap.hosts.clone();
    let mut out = Plan::default();
    // Where each service's instances are placed, as this plan goes.
    let mut instances: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    for p in &snap.procs {
        if let (Some(s), Some(h)) = (&p.job.service, &p.placed_on) {
            instances
                .entry(s.as_str())
                .or_default()
                .insert(p.job.name.as_str(), h.clone());
        }
    }
    for proc in &snap.procs {
        let job = &proc.job;
        let ps = snap.ps.get(&job.name);
        let Some((restarts, crash_streak)) = needs_start(ps, &alive, policy, now, &mut out.wake_at)
        else {
            continue;
        };
        // Its host is gone but may be coming back: not moved yet.
        if ps.is_some_and(|r| !alive.contains(r.node.as_str()) && !may_move_from(snap, &r.node)) {
            continue;
        }
        // What it reserves where it was placed is free for its own start.
        let need = Reservation::of(job, policy.reserve);
        let own = proc.placed_on.as_deref();
        if let Some(h) = own.and_then(|o| hosts.iter_mut().find(|h| h.name == o)) {
            h.reserved = h.reserved.minus(need);
        }
        let apart: BTreeSet<String> = job
            .service
            .as_deref()
            .and_then(|s| instances.get(s))
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| **n != job.name)
                    .map(|(_, h)| h.clone())
                    .collect()
            })
            .unwrap_or_default();
        let decision =
            scheduler::place_apart(job, need, &hosts, snap.histories.get(&job.name), &apart);
        if let (Some(s), Some(h)) = (&job.service, &decision.host) {
            instances
                .entry(s.as_str())
                .or_default()
                .insert(job.name.as_str(), h.clone());
        }
        // Reserved where it goes, or where it was while it waits.
        let at = decision.host.as_deref().or(own);
        if let Some(h) = at.and_then(|a| hosts.iter_mut().find(|h| h.name == a)) {
            h.reserved = h.reserved.plus(need);
        }
        match decision.host {
            Some(node) => {
                if let Some(h) = hosts.iter_mut().find(|h| h.name == node) {
                    h.running += 1;
                    for p in job.ports.iter() {
                        if let Some(hp) = p.host {
                            h.used_ports.insert((hp, p.proto));
                        }
                    }
                }
                out.actions.push(Action::Start {
                    job: job.name.clone(),
                    node,
                    restarts,
                    crash_streak,
                });
            }
            None => {
                let reason = match &decision.waiting_for {
                    Some(h) => format!("waiting for host {h}"),
                    None => decision.explain(),
                };
                let shown = ps.map(|p| (p.status.as_str(), p.error.as_deref()));
                if proc.waiting.as_deref() != Some(reason.as_str())
                    || ps.is_some_and(|_| shown != Some(("waiting", Some(reason.as_str()))))
                {
                    out.actions.push(Action::Wait {
                        job: job.name.clone(),
                        reason,
                    });
                }
            }
        }
    }
    out
}

/// Whether `job` may run on `node` at all (its pin, tags and fixed host);
/// the invariant the property tests check for every start.
pub fn allowed(job: &Job, node: &HostSnapshot, history: Option<&History>) -> bool {
    let mut node = node.clone();
    node.reserved = Reservation::default();
    scheduler::place(
        job,
        Reservation::default(),
        std::slice::from_ref(&node),
        history,
    )
    .host
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, alive: bool) -> HostSnapshot {
        HostSnapshot {
            name: name.into(),
            alive,
            tags: BTreeSet::new(),
            running: 0,
            memory: 1 << 30,
            memory_used: 0,
            cpu_used: 0,
            used_ports: BTreeSet::new(),
            cpus: 0,
            reserved: Reservation::default(),
        }
    }

    fn proc(doc: &str) -> ProcRecord {
        ProcRecord {
            job: Job::parse(doc.as_bytes(), String::new).unwrap(),
            created_at: 0,
            placed_on: None,
            waiting: None,
        }
    }

    fn ps(job: &str, node: &str, status: &str) -> PsRecord {
        PsRecord {
            job: job.into(),
            node: node.into(),
            container_id: format!("c-{job}-{node}"),
            image: "i".into(),
            image_id: "sha256:1".into(),
            command: vec![],
            daemonize: true,
            status: Status::from(status),
            exit_code: None,
            error: None,
            ports: vec![],
            created_at: 0,
            started_at: Some(0),
            finished_at: Some(0),
            restarts: 0,
            crash_streak: 0,
            last_exit: None,
            claimed_by: None,
        }
    }

    fn hist(node: &str) -> History {
        let mut h = History::default();
        h.push(node, 0);
        h
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = Policy::default();
        assert_eq!(p.backoff(0), 0);
        assert_eq!(p.backoff(1), 1_000);
        assert_eq!(p.backoff(2), 2_000);
        assert_eq!(p.backoff(4), 8_000);
        assert_eq!(p.backoff(100), 60_000);
    }

    #[test]
    fn running_jobs_are_left_alone_and_new_ones_spread() {
        let mut s = Snapshot {
            procs: vec![proc(r#"{"name":"a","image":"i","daemonize":true}"#)],
            hosts: vec![host("n1", true), host("n2", true)],
            ..Default::default()
        };
        s.ps.insert("a".into(), ps("a", "n1", "running"));
        assert_eq!(plan(&s, &Policy::default(), 5), Plan::default());
        for n in ["b", "c"] {
            s.procs.push(proc(&format!(
                r#"{{"name":"{n}","image":"i","daemonize":true}}"#
            )));
        }
        let p = plan(&s, &Policy::default(), 5);
        let nodes: Vec<_> = p
            .actions
            .iter()
            .map(|a| match a {
                Action::Start { node, .. } => node.as_str(),
                _ => "",
            })
            .collect();
        // One each: a placement made in the plan counts as load.
        let spread: BTreeSet<&str> = nodes.iter().copied().collect();
        assert_eq!(spread, BTreeSet::from(["n1", "n2"]), "{nodes:?}");
    }

    #[test]
    fn a_settling_host_keeps_its_jobs_until_the_grace_ends() {
        let mut s = Snapshot {
            procs: vec![proc(r#"{"name":"a","image":"i","daemonize":true}"#)],
            hosts: vec![host("n1", false), host("n2", true)],
            ..Default::default()
        };
        s.ps.insert("a".into(), ps("a", "n1", "running"));
        // n1 is gone: its job moves to n2...
        let moved = plan(&s, &Policy::default(), 5);
        assert!(
            matches!(moved.actions.as_slice(), [Action::Start { node, .. }] if node == "n2"),
            "{moved:?}"
        );
        assert_eq!(to_place(&s, &Policy::default(), 5), vec!["a".to_string()]);
        // ...unless a new leader is still giving it time to come back.
        s.settling.insert("n1".into());
        assert_eq!(plan(&s, &Policy::default(), 5), Plan::default());
        assert!(to_place(&s, &Policy::default(), 5).is_empty());
    }

    #[test]
    fn a_crashing_job_backs_off() {
        let mut s = Snapshot {
            procs: vec![proc(r#"{"name":"a","image":"i","daemonize":true}"#)],
            hosts: vec![host("n1", true)],
            ..Default::default()
        };
        let mut p = ps("a", "n1", "exited");
        p.crash_streak = 3;
        p.restarts = 3;
        p.started_at = Some(10_000);
        p.finished_at = Some(10_100);
        s.ps.insert("a".into(), p);
        let plan1 = plan(&s, &Policy::default(), 11_000);
        assert!(plan1.actions.is_empty());
        assert_eq!(plan1.wake_at, Some(10_100 + 4_000));
        let plan2 = plan(&s, &Policy::default(), 14_100);
        assert_eq!(
            plan2.actions,
            vec![Action::Start {
                job: "a".into(),
                node: "n1".into(),
                restarts: 4,
                crash_streak: 4
            }]
        );
        // A stable run resets the streak.
        s.ps.get_mut("a").unwrap().started_at = Some(0);
        let plan3 = plan(&s, &Policy::default(), 10_100);
        assert_eq!(
            plan3.actions,
            vec![Action::Start {
                job: "a".into(),
                node: "n1".into(),
                restarts: 4,
                crash_streak: 1
            }]
        );
    }

    #[test]
    fn a_dead_host_moves_jobs_but_fixed_ones_wait() {
        let mut s = Snapshot {
            procs: vec![
                proc(r#"{"name":"web","image":"i","daemonize":true}"#),
                proc(r#"{"name":"db","image":"i","daemonize":true,"volumes":["/d"]}"#),
            ],
            hosts: vec![host("n1", false), host("n2", true)],
            ..Default::default()
        };
        s.ps.insert("web".into(), ps("web", "n1", "running"));
        s.ps.insert("db".into(), ps("db", "n1", "running"));
        s.histories.insert("db".into(), hist("n1"));
        s.histories.insert("web".into(), hist("n1"));
        let p = plan(&s, &Policy::default(), 1);
        assert!(p.actions.contains(&Action::Wait {
            job: "db".into(),
            reason: "waiting for host n1".into()
        }));
        assert!(p.actions.contains(&Action::Start {
            job: "web".into(),
            node: "n2".into(),
            restarts: 1,
            crash_streak: 0
        }));
        // When n1 returns, db goes back there.
        s.hosts[0].alive = true;
        s.ps.get_mut("db").unwrap().status = Status::Missing;
        let p = plan(&s, &Policy::default(), 100_000);
        assert!(p
            .actions
            .iter()
            .any(|a| matches!(a, Action::Start { job, node, .. } if job == "db" && node == "n1")));
    }

    #[test]
    fn a_start_in_flight_is_not_doubled_until_it_times_out() {
        let mut s = Snapshot {
            procs: vec![proc(r#"{"name":"a","image":"i","daemonize":true}"#)],
            hosts: vec![host("n1", true)],
            ..Default::default()
        };
        let mut p = ps("a", "n1", "starting");
        p.created_at = 1_000;
        s.ps.insert("a".into(), p);
        let pol = Policy::default();
        assert!(plan(&s, &pol, 2_000).actions.is_empty());
        assert_eq!(
            plan(&s, &pol, 1_000 + pol.start_timeout_ms).actions.len(),
            1
        );
    }

    #[test]
    fn a_start_whose_claimant_is_gone_is_retried_at_once() {
        let mut s = Snapshot {
            procs: vec![proc(r#"{"name":"a","image":"i","daemonize":true}"#)],
            hosts: vec![host("n1", true), host("n2", true), host("n3", false)],
            ..Default::default()
        };
        let mut p = ps("a", "n1", "starting");
        p.created_at = 1_000;
        p.restarts = 2;
        p.crash_streak = 1;
        p.claimed_by = Some("n2".into());
        s.ps.insert("a".into(), p);
        let pol = Policy::default();
        // n2, which claimed the start, is alive: it is left to finish.
        let waits = plan(&s, &pol, 2_000);
        assert!(waits.actions.is_empty());
        assert_eq!(waits.wake_at, Some(1_000 + pol.start_timeout_ms));
        // n2 is gone (its lease expired): started again now, no backoff.
        s.hosts[1].alive = false;
        assert_eq!(
            plan(&s, &pol, 2_000).actions,
            vec![Action::Start {
                job: "a".into(),
                node: "n1".into(),
                restarts: 3,
                crash_streak: 1
            }]
        );
        // A claimant that was never in floki counts as gone too.
        s.ps.get_mut("a").unwrap().claimed_by = Some("n9".into());
        assert_eq!(plan(&s, &pol, 2_000).actions.len(), 1);
        // A record from before claimants were named waits for the timeout.
        s.ps.get_mut("a").unwrap().claimed_by = None;
        assert!(plan(&s, &pol, 2_000).actions.is_empty());
        // The start's host is gone but its claimant lives: the claimant
        // places it again (no second start from the reconciler) until the
        // start timeout.
        s.hosts[1].alive = true;
        s.hosts[0].alive = false;
        s.ps.get_mut("a").unwrap().claimed_by = Some("n2".into());
        assert!(plan(&s, &pol, 2_000).actions.is_empty());
        assert_eq!(
            plan(&s, &pol, 1_000 + pol.start_timeout_ms).actions.len(),
            1
        );
    }

    /// Apply a plan the way the executor does, with each start succeeding.
    fn apply(s: &mut Snapshot, p: &Plan, now: u64) {
        for a in &p.actions {
            match a {
                Action::Start {
                    job,
                    node,
                    restarts,
                    crash_streak,
                } => {
                    let mut r = ps(job, node, "running");
                    r.restarts = *restarts;
                    r.crash_streak = *crash_streak;
                    r.started_at = Some(now);
                    r.finished_at = None;
                    s.ps.insert(job.clone(), r);
                    s.histories.entry(job.clone()).or_default().push(node, now);
                }
                Action::Wait { job, reason } => {
                    if let Some(pr) = s.procs.iter_mut().find(|p| &p.job.name == job) {
                        pr.waiting = Some(reason.clone());
                    }
                    if let Some(r) = s.ps.get_mut(job) {
                        r.status = Status::Waiting;
                        r.error = Some(reason.clone());
                    }
                }
            }
        }
    }

    fn arb_world() -> impl Strategy<Value = (Snapshot, Vec<bool>)> {
        let hosts = proptest::collection::vec(any::<bool>(), 1..5);
        let jobs =
            proptest::collection::vec((any::<bool>(), 0usize..5, 0u8..6, any::<bool>()), 0..12);
        (hosts, jobs, proptest::collection::vec(any::<bool>(), 5)).prop_map(
            |(alive, jobs, later)| {
                let hosts: Vec<HostSnapshot> = alive
                    .iter()
                    .enumerate()
                    .map(|(i, a)| host(&format!("n{i}"), *a))
                    .collect();
                let mut s = Snapshot {
                    hosts,
                    ..Default::default()
                };
                for (i, (fixed, on, status, has_ps)) in jobs.into_iter().enumerate() {
                    let name = format!("j{i}");
                    let doc = format!(
                        r#"{{"name":"{name}","image":"i","daemonize":true,"fixed":{fixed}}}"#
                    );
                    s.procs.push(proc(&doc));
                    let node = format!("n{}", on % s.hosts.len());
                    if fixed || has_ps {
                        s.histories.insert(name.clone(), hist(&node));
                    }
                    if has_ps {
                        let st = ["running", "exited", "missing", "failed", "dead", "waiting"]
                            [status as usize];
                        s.ps.insert(name.clone(), ps(&name, &node, st));
                    }
                }
                (s, later)
            },
        )
    }

    /// A world of starts in flight: each job `starting` on some host,
    /// claimed by some host (or by none, as records from before claimants
    /// were named), created at some time before `now`.
    fn arb_starts() -> impl Strategy<Value = (Snapshot, u64)> {
        let hosts = proptest::collection::vec(any::<bool>(), 1..5);
        let jobs = proptest::collection::vec(
            (0usize..5, proptest::option::of(0usize..6), 0u64..600_000),
            0..10,
        );
        (hosts, jobs).prop_map(|(alive, jobs)| {
            let now = 1_000_000u64;
            let mut s = Snapshot {
                hosts: alive
                    .iter()
                    .enumerate()
                    .map(|(i, a)| host(&format!("n{i}"), *a))
                    .collect(),
                ..Default::default()
            };
            for (i, (on, by, age)) in jobs.into_iter().enumerate() {
                let name = format!("j{i}");
                s.procs.push(proc(&format!(
                    r#"{{"name":"{name}","image":"i","daemonize":true}}"#
                )));
                let node = format!("n{}", on % s.hosts.len());
                let mut r = ps(&name, &node, "starting");
                r.created_at = now - age;
                r.claimed_by = by.map(|b| format!("n{b}"));
                s.ps.insert(name, r);
            }
            (s, now)
        })
    }

    proptest! {
        /// A start in flight is left alone exactly while the server that
        /// claimed it is alive and the start timeout has not passed (it
        /// places the job again itself if its host is gone); otherwise it
        /// is started again in this very round (when any host can take
        /// it), never twice, and without a backoff unless it timed out.
        #[test]
        fn a_start_is_retried_as_soon_as_its_claimant_is_gone((s, now) in arb_starts()) {
            let pol = Policy::default();
            let alive = |n: &str| s.hosts.iter().any(|h| h.name == n && h.alive);
            let p = plan(&s, &pol, now);
            let any_alive = s.hosts.iter().any(|h| h.alive);
            for (name, r) in &s.ps {
                let timed_out = now >= r.created_at + pol.start_timeout_ms;
                let claimant_alive = r.claimed_by.as_deref().is_some_and(alive);
                // Records from before claimants were named: their host's
                // liveness decides.
                let owned = claimant_alive || (r.claimed_by.is_none() && alive(&r.node));
                let left = owned && !timed_out;
                let starts: Vec<_> = p.actions.iter().filter(|a| a.job() == name).collect();
                prop_assert!(starts.len() <= 1);
                if left {
                    prop_assert!(starts.is_empty(), "{name} restarted while its start is in flight");
                } else if any_alive {
                    match starts.first() {
                        Some(Action::Start { node, crash_streak, .. }) => {
                            prop_assert!(alive(node));
                            let penalty = u32::from(owned && timed_out);
                            prop_assert_eq!(*crash_streak, r.crash_streak + penalty);
                        }
                        other => prop_assert!(false, "{name} not started again: {other:?}"),
                    }
                }
            }
        }

        /// Reading only the histories of the jobs a round places gives the
        /// same plan as reading them all.
        #[test]
        fn the_histories_of_the_jobs_placed_are_enough((s, _later) in arb_world(), at in 0u64..200_000) {
            let pol = Policy::default();
            let now = 1_000_000 + at;
            let mut only = s.clone();
            let wanted = to_place(&s, &pol, now);
            only.histories.retain(|name, _| wanted.contains(name));
            prop_assert_eq!(plan(&only, &pol, now), plan(&s, &pol, now));
        }
    }

    proptest! {
        #[test]
        fn plans_never_double_never_break_fixed_and_converge((mut s, later) in arb_world()) {
            let pol = Policy::default();
            let mut now = 1_000_000u64;
            for round in 0..40 {
                // Hosts come back over time.
                if round == 10 {
                    for (h, back) in s.hosts.iter_mut().zip(later.iter()) {
                        h.alive |= *back;
                    }
                }
                let p = plan(&s, &pol, now);
                let mut seen = BTreeSet::new();
                for a in &p.actions {
                    prop_assert!(seen.insert(a.job().to_string()), "two actions for {}", a.job());
                    if let Action::Start { job, node, .. } = a {
                        // never a second copy of a job that runs on a live host
                        if let Some(r) = s.ps.get(job) {
                            let host_alive = s.hosts.iter().any(|h| h.name == r.node && h.alive);
                            prop_assert!(!(host_alive && is_live(&r.status)), "{job} started twice");
                        }
                        // never off its pin, tags or fixed host; never on a dead host
                        let pr = s.procs.iter().find(|p| &p.job.name == job).unwrap();
                        let h = s.hosts.iter().find(|h| &h.name == node).unwrap();
                        prop_assert!(h.alive);
                        prop_assert!(allowed(&pr.job, h, s.histories.get(job)));
                    }
                }
                apply(&mut s, &p, now);
                now += 61_000;
            }
            // Converged: every job runs on a live host, unless it is fixed
            // to a host that never came back.
            for pr in &s.procs {
                let r = s.ps.get(&pr.job.name);
                let ok = r.is_some_and(|r| is_live(&r.status) && s.hosts.iter().any(|h| h.name == r.node && h.alive));
                let fixed_host_dead = pr.job.fixed && s.histories.get(&pr.job.name).and_then(|h| h.last_node())
                    .is_some_and(|n| !s.hosts.iter().any(|h| h.name == n && h.alive));
                let no_host = !s.hosts.iter().any(|h| h.alive);
                prop_assert!(ok || fixed_host_dead || no_host, "{} did not converge: {:?}", pr.job.name, r);
            }
            // And a converged world plans nothing but waits.
            let p = plan(&s, &pol, now);
            prop_assert!(p.actions.iter().all(|a| matches!(a, Action::Wait { .. })), "{:?}", p.actions);
        }
    }
}
