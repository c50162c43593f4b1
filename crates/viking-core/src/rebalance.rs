//! The fleet rebalanced: which running jobs the leader moves so that no
//! live host runs more than `threshold` jobs more than another. A pure
//! function over the reconciler's [`Snapshot`], like [`crate::reconcile`].
//!
//! A move is a start of the job on the less loaded host, start-first: the
//! job's record then names the new host, and the old host's agent keeps
//! its copy running until the new one runs ([`crate::agent`]). Only jobs
//! that may move do: running and settled (up at least
//! [`Policy::stable_after_ms`]), not fixed, not static, not pinned to a
//! host, allowed on the target by dowding (tags, ports, room), and at most
//! one instance of a service at a time, never while another of its
//! instances is not running. An instance whose service has no instance on
//! the target goes first (it spreads the service too).

use std::collections::{BTreeMap, BTreeSet};

use crate::job::Reservation;
use crate::reconcile::{Policy, Snapshot};
use crate::scheduler::{self, HostSnapshot};
use crate::status::Status;

/// One job moved: from the host it runs on to another, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub job: String,
    pub from: String,
    pub to: String,
    pub why: String,
}

/// The moves that even out the live hosts' loads (their running and
/// placed jobs), at most `max_moves`, while the most loaded host runs more
/// than `threshold` jobs more than the least loaded.
pub fn plan(
    snap: &Snapshot,
    policy: &Policy,
    now: u64,
    threshold: u64,
    max_moves: usize,
) -> Vec<Move> {
    let mut hosts: Vec<HostSnapshot> = snap
        .hosts
        .iter()
        .filter(|h| h.alive && !snap.settling.contains(&h.name))
        .cloned()
        .collect();
    let mut out = Vec::new();
    if hosts.len() < 2 || snap.hosts.iter().any(|h| snap.settling.contains(&h.name)) {
        return out;
    }
    // Even already (the usual case, each round): no look at the jobs.
    let lo = hosts.iter().map(|h| h.running).min().unwrap_or(0);
    let hi = hosts.iter().map(|h| h.running).max().unwrap_or(0);
    if hi <= lo + threshold {
        return out;
    }
    // Services with an instance that does not run now: none of them moves.
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    // Where each service's instances run.
    let mut placed: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    for p in &snap.procs {
        let service = p.job.service_name();
        let running = snap
            .ps
            .get(&p.job.name)
            .filter(|r| r.status == Status::Running && p.placed_on.as_deref() == Some(&r.node));
        match running {
            Some(r) => {
                placed
                    .entry(service)
                    .or_default()
                    .insert(p.job.name.as_str(), r.node.clone());
            }
            None => {
                busy.insert(service);
            }
        }
    }
    let mut moved: BTreeSet<&str> = BTreeSet::new();
    while out.len() < max_moves {
        hosts.sort_by(|a, b| (a.running, &a.name).cmp(&(b.running, &b.name)));
        let (Some(least), Some(most)) = (hosts.first(), hosts.last()) else {
            break;
        };
        if most.running <= least.running + threshold {
            break;
        }
        let (from, to) = (most.name.clone(), least.clone());
        let mut candidates: Vec<(bool, &str, &crate::records::ProcRecord)> = snap
            .procs
            .iter()
            .filter(|p| {
                let j = &p.job;
                let service = j.service_name();
                p.placed_on.as_deref() == Some(from.as_str())
                    && !j.fixed
                    && !j.static_
                    && j.host.is_none()
                    && !busy.contains(service)
                    && !moved.contains(service)
                    && snap.ps.get(&j.name).is_some_and(|r| {
                        r.status == Status::Running
                            && r.node == from
                            && r.started_at
                                .is_some_and(|t| now.saturating_sub(t) >= policy.stable_after_ms)
                    })
                    && scheduler::place(
                        j,
                        Reservation::of(j, policy.reserve),
                        std::slice::from_ref(&to),
                        None,
                    )
                    .host
                    .is_some()
            })
            .map(|p| {
                let service = p.job.service_name();
                let there = placed
                    .get(service)
                    .is_some_and(|m| m.values().any(|h| *h == to.name));
                (there, p.job.name.as_str(), p)
            })
            .collect();
        // An instance whose service is not on the target first, then other
        // instances, then single jobs.
        candidates.sort_by_key(|(there, name, p)| (*there, p.job.service.is_none(), *name));
        let Some((_, name, p)) = candidates.first().copied() else {
            break;
        };
        let need = Reservation::of(&p.job, policy.reserve);
        let why = format!(
            "{from} runs {} jobs, {} runs {}",
            most.running, to.name, to.running
        );
        for h in hosts.iter_mut() {
            if h.name == from {
                h.running -= 1;
                h.reserved = h.reserved.minus(need);
            } else if h.name == to.name {
                h.running += 1;
                h.reserved = h.reserved.plus(need);
            }
        }
        let service = p.job.service_name();
        moved.insert(service);
        if let Some(m) = placed.get_mut(service) {
            m.insert(name, to.name.clone());
        }
        out.push(Move {
            job: name.to_string(),
            from,
            to: to.name.clone(),
            why,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ProcRecord, PsRecord};
    use crate::Job;

    fn host(name: &str) -> HostSnapshot {
        HostSnapshot {
            name: name.into(),
            alive: true,
            tags: BTreeSet::new(),
            running: 0,
            memory: 8 << 30,
            memory_used: 0,
            used_ports: BTreeSet::new(),
            cpus: 4000,
            cpu_used: 0,
            reserved: Reservation::default(),
        }
    }

    fn job(doc: &str) -> Job {
        Job::parse(doc.as_bytes(), String::new).unwrap()
    }

    /// A snapshot of `jobs` (job, host) all running for long.
    fn snap(hosts: &[&str], jobs: Vec<(Job, &str)>) -> Snapshot {
        let mut s = Snapshot {
            procs: vec![],
            ps: BTreeMap::new(),
            hosts: hosts.iter().map(|h| host(h)).collect(),
            histories: BTreeMap::new(),
            settling: BTreeSet::new(),
        };
        for (j, h) in jobs {
            let mut ps: PsRecord = serde_json::from_value(serde_json::json!({
                "job": j.name, "node": h, "container_id": "c", "image": "i",
                "image_id": "x", "command": [], "daemonize": true, "status": "running",
                "ports": [], "created_at": 0, "started_at": 0
            }))
            .unwrap();
            ps.node = h.to_string();
            s.ps.insert(j.name.clone(), ps);
            if let Some(x) = s.hosts.iter_mut().find(|x| x.name == h) {
                x.running += 1;
            }
            s.procs.push(ProcRecord {
                job: j,
                created_at: 0,
                placed_on: Some(h.to_string()),
                waiting: None,
            });
        }
        s
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn a_returning_host_gets_its_share_with_the_services_spread_first() {
        // n3 came back empty: a 3-replica service and six jobs on n1 and n2.
        let web = job(r#"{"name":"web","image":"b","daemonize":true,"replicas":3}"#);
        let mut jobs = vec![
            (web.instance(1, 3), "n1"),
            (web.instance(2, 3), "n2"),
            (web.instance(3, 3), "n1"),
        ];
        for i in 0..6 {
            let h = if i % 2 == 0 { "n1" } else { "n2" };
            jobs.push((
                job(&format!(
                    r#"{{"name":"j{i}","image":"b","daemonize":true}}"#
                )),
                h,
            ));
        }
        let s = snap(&["n1", "n2", "n3"], jobs);
        let moves = plan(&s, &Policy::default(), NOW, 1, 10);
        // 5/4/0 → 3/3/3: two moves from n1, one from n2.
        let mut load: BTreeMap<&str, i64> = [("n1", 5), ("n2", 4), ("n3", 0)].into();
        for m in &moves {
            *load.get_mut(m.from.as_str()).unwrap() -= 1;
            *load.get_mut(m.to.as_str()).unwrap() += 1;
        }
        assert!(
            load.values().max().unwrap() - load.values().min().unwrap() <= 1,
            "{moves:?}"
        );
        // The service moves first, one instance only.
        assert!(moves[0].job.starts_with("web."), "{moves:?}");
        assert_eq!(
            moves.iter().filter(|m| m.job.starts_with("web.")).count(),
            1
        );
        assert!(moves.iter().all(|m| m.to == "n3"));
        // At most the moves allowed.
        assert_eq!(plan(&s, &Policy::default(), NOW, 1, 1).len(), 1);
    }

    #[test]
    fn fixed_static_pinned_new_and_busy_services_stay() {
        let fixed = job(r#"{"name":"f","image":"b","daemonize":true,"volumes":["/d"]}"#);
        let stat = job(r#"{"name":"s","image":"b","daemonize":true,"static":true}"#);
        let pinned = job(r#"{"name":"p","image":"b","daemonize":true,"host":"n1"}"#);
        let web = job(r#"{"name":"web","image":"b","daemonize":true,"replicas":2}"#);
        let s = snap(
            &["n1", "n2"],
            vec![
                (fixed, "n1"),
                (stat, "n1"),
                (pinned, "n1"),
                (web.instance(1, 2), "n1"),
                (web.instance(2, 2), "n1"),
            ],
        );
        let mut s2 = s.clone_for_test();
        // web.2 is starting: its service waits.
        if let Some(r) = s2.ps.get_mut("web.2") {
            r.status = Status::Starting;
        }
        assert_eq!(plan(&s2, &Policy::default(), NOW, 1, 10), vec![]);
        // Settled: one web instance moves, nothing else.
        let moves = plan(&s, &Policy::default(), NOW, 1, 10);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert!(moves[0].job.starts_with("web."));
        // Just started: not yet.
        assert_eq!(plan(&s, &Policy::default(), 5_000, 1, 10), vec![]);
        // A host not alive takes nothing.
        let mut s3 = s.clone_for_test();
        s3.hosts[1].alive = false;
        assert_eq!(plan(&s3, &Policy::default(), NOW, 1, 10), vec![]);
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the fleet: moves go from a live host to another live
        /// one, only of jobs that may move, at most the moves allowed and one
        /// per service, and the spread is never wider after them.
        #[test]
        fn moves_only_what_may_move_and_never_widen_the_spread(
            jobs in proptest::collection::vec((0u8..4, 0u8..4, any::<bool>(), any::<bool>(), 0u8..3), 0..30),
            dead in proptest::option::of(0u8..4),
            max in 0usize..8,
        ) {
            let hosts = ["n0", "n1", "n2", "n3"];
            let mut list = Vec::new();
            for (i, (h, kind, fixed, stat, svc)) in jobs.iter().enumerate() {
                let host = hosts[*h as usize];
                let j = match kind {
                    0 => job(&format!(r#"{{"name":"s{svc}","image":"b","daemonize":true,"replicas":3}}"#)).instance(i as u32 + 1, 3),
                    1 => job(&format!(r#"{{"name":"j{i}","image":"b","daemonize":true,"host":"{host}"}}"#)),
                    _ => job(&format!(r#"{{"name":"j{i}","image":"b","daemonize":true,"fixed":{fixed},"static":{stat}}}"#)),
                };
                list.push((j, host));
            }
            let mut s = snap(&hosts, list);
            if let Some(d) = dead {
                s.hosts[d as usize].alive = false;
            }
            let moves = plan(&s, &Policy::default(), NOW, 1, max);
            prop_assert!(moves.len() <= max);
            let alive: BTreeSet<&str> = s.hosts.iter().filter(|h| h.alive).map(|h| h.name.as_str()).collect();
            let mut services = BTreeSet::new();
            for m in &moves {
                let p = s.procs.iter().find(|p| p.job.name == m.job).unwrap();
                prop_assert!(!p.job.fixed && !p.job.static_ && p.job.host.is_none(), "{m:?}");
                prop_assert!(alive.contains(m.from.as_str()) && alive.contains(m.to.as_str()), "{m:?}");
                prop_assert!(p.placed_on.as_deref() == Some(m.from.as_str()));
                prop_assert!(services.insert(p.job.service_name().to_string()), "two of a service: {moves:?}");
            }
            let spread = |load: &BTreeMap<&str, i64>| load.values().max().copied().unwrap_or(0) - load.values().min().copied().unwrap_or(0);
            let mut load: BTreeMap<&str, i64> = s.hosts.iter().filter(|h| h.alive).map(|h| (h.name.as_str(), h.running as i64)).collect();
            let before = spread(&load);
            for m in &moves {
                *load.get_mut(m.from.as_str()).unwrap() -= 1;
                *load.get_mut(m.to.as_str()).unwrap() += 1;
            }
            prop_assert!(spread(&load) <= before, "{moves:?}");
        }
    }

    impl Snapshot {
        fn clone_for_test(&self) -> Snapshot {
            Snapshot {
                procs: self.procs.clone(),
                ps: self.ps.clone(),
                hosts: self.hosts.clone(),
                histories: self.histories.clone(),
                settling: self.settling.clone(),
            }
        }
    }
}
