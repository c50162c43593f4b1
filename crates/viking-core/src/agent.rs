//! The host agent's rules, as a pure function: what this host's containers
//! and viking's records are → what to do about them.
//!
//! The agent (in the server) reads its engine's containers and the store's
//! records, calls [`plan`], and carries out the [`Action`]s; it decides
//! nothing itself. Like the reconciler's planner, the rules are level
//! triggered: the same view gives the same actions, and carrying them out
//! twice is harmless.
//!
//! For each of this host's containers:
//! - an interactive job's container whose client is gone (no session on
//!   this server): remove it;
//! - the container the job's viking-ps record names: refresh the record
//!   (only while it still names this container: the view may be older than
//!   the store), and stop it first if the job left viking-proc (stopped or
//!   removed);
//! - a job being started on this host right now: leave it to the starter;
//! - a copy of a job whose record names another host or container (the job
//!   moved while this host was cut off): remove it, so exactly one copy runs;
//!   while the record says the job is being started on the other host (a
//!   move), a running copy is left until the new one runs (start-first);
//! - a job in viking-proc without a record (the server died between start
//!   and record): adopt it, writing its record;
//! - a container no job claims (no record, not in viking-proc): leave it.
//!   A missing record is never a reason to remove a container: the store
//!   may have been emptied or replaced, and `viking recover` rebuilds the
//!   records from exactly these containers. Containers go only on a positive
//!   record: a copy whose record names another host or container, a job
//!   out of viking-proc whose record names it (stopped), or a removal mark.
//!
//! For each record of this host whose container is gone (full resync only):
//! an old claim of an interactive job without a session is deleted; a start
//! cut short by a restart is marked failed (at start-up only); a vanished
//! container is marked missing.
//!
//! Invariants (property-tested below): containers and records of other
//! hosts are never touched; after the actions at most one container of a job
//! is left on this host; the container a record names is never removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::records::PsRecord;
use crate::status::Status;

/// How long an interactive job's claim may exist without its container
/// before it counts as a leftover (a session may be being set up).
pub const CLAIM_GRACE_MS: u64 = 60_000;

/// What the agent knows of one container of viking's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub job: String,
    /// The host that created it (its label).
    pub node: String,
    pub daemonize: bool,
    pub running: bool,
}

/// Everything [`plan`] decides over.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This host's name.
    pub node: String,
    /// The engine's containers of this cluster (others' are ignored).
    pub containers: Vec<Container>,
    /// viking-ps by job, with each record's revision.
    pub records: BTreeMap<String, (PsRecord, i64)>,
    /// The jobs in viking-proc.
    pub procs: BTreeSet<String>,
    /// The interactive jobs attached on this server now.
    pub sessions: BTreeSet<String>,
    pub now: u64,
    /// Whether `records` holds every record (a full resync) rather than
    /// only those of `containers`' jobs.
    pub full: bool,
    /// The first resync after the server started: no start of this server
    /// is in flight.
    pub startup: bool,
}

/// Why a container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// An interactive job whose client is gone.
    Orphaned,
    /// A copy of a job that now runs elsewhere.
    Stale,
}

/// One thing the agent does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Remove {
        id: String,
        job: String,
        why: Removal,
    },
    /// Stop the container (the job left viking-proc), before refreshing.
    Stop { id: String, job: String },
    /// Bring the job's record up to date with its container `id`: only
    /// while the record still names this host and that container (the view
    /// may be older than the store: the job may have moved on meanwhile,
    /// and its new host's record is not this agent's to write).
    Refresh { job: String, id: String },
    /// Write a record for this container, if there still is none.
    Adopt { id: String, job: String },
    /// Delete an interactive job's leftover claim at this revision.
    DeleteClaim { job: String, rev: i64 },
    /// A start cut short by a restart: mark it failed at this revision.
    MarkFailed { job: String, rev: i64 },
    /// The record's container vanished: mark it missing at this revision.
    MarkMissing { job: String, rev: i64 },
}

/// The agent's actions for a view.
pub fn plan(v: &View) -> Vec<Action> {
    let mut out = Vec::new();
    let mine: Vec<&Container> = v.containers.iter().filter(|c| c.node == v.node).collect();
    for c in &mine {
        container_rules(v, c, &mut out);
    }
    if v.full {
        let ids: BTreeSet<&str> = mine.iter().map(|c| c.id.as_str()).collect();
        for (name, (rec, rev)) in &v.records {
            if rec.node != v.node || ids.contains(rec.container_id.as_str()) {
                continue;
            }
            if let Some(a) = record_rules(v, name, rec, *rev) {
                out.push(a);
            }
        }
    }
    out
}

fn container_rules(v: &View, c: &Container, out: &mut Vec<Action>) {
    let job = c.job.clone();
    if !c.daemonize {
        if !v.sessions.contains(&c.job) {
            out.push(Action::Remove {
                id: c.id.clone(),
                job,
                why: Removal::Orphaned,
            });
        }
        return;
    }
    let in_proc = v.procs.contains(&c.job);
    match v.records.get(&c.job).map(|(r, _)| r) {
        Some(r) if r.node == v.node && r.status == Status::Starting => {}
        // The job is being started elsewhere (moved by the leader): this
        // host's one running copy keeps running until the new one does,
        // start-first.
        Some(r)
            if r.node != v.node
                && r.status == Status::Starting
                && in_proc
                && c.running
                && v.containers.iter().filter(|o| o.job == c.job).count() == 1 => {}
        Some(r) if r.node == v.node && r.container_id == c.id => {
            if !in_proc && c.running {
                out.push(Action::Stop {
                    id: c.id.clone(),
                    job: job.clone(),
                });
            }
            out.push(Action::Refresh {
                job,
                id: c.id.clone(),
            });
        }
        Some(_) => out.push(Action::Remove {
            id: c.id.clone(),
            job,
            why: Removal::Stale,
        }),
        None if in_proc => out.push(Action::Adopt {
            id: c.id.clone(),
            job,
        }),
        // No record and no intent: kept as it is (see the module's doc).
        None => {}
    }
}

fn record_rules(v: &View, name: &str, rec: &PsRecord, rev: i64) -> Option<Action> {
    let job = name.to_string();
    if !rec.daemonize {
        let fresh = v.now.saturating_sub(rec.created_at) < CLAIM_GRACE_MS;
        return (!v.sessions.contains(name) && !fresh).then_some(Action::DeleteClaim { job, rev });
    }
    if rec.status == Status::Starting {
        return v.startup.then_some(Action::MarkFailed { job, rev });
    }
    (!rec.container_id.is_empty() && rec.status != Status::Missing)
        .then_some(Action::MarkMissing { job, rev })
}

/// After Docker destroyed container `id` of this host: mark the job's
/// record missing if it named that container.
pub fn on_destroyed(node: &str, id: &str, record: Option<&(PsRecord, i64)>) -> Option<Action> {
    let (r, rev) = record?;
    (r.node == node && r.container_id == id && r.daemonize && r.status != Status::Missing).then(
        || Action::MarkMissing {
            job: r.job.clone(),
            rev: *rev,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(job: &str, node: &str, id: &str, status: Status, daemonize: bool) -> PsRecord {
        PsRecord {
            job: job.into(),
            node: node.into(),
            container_id: id.into(),
            image: "i".into(),
            image_id: String::new(),
            command: vec![],
            daemonize,
            status,
            exit_code: None,
            error: None,
            ports: vec![],
            created_at: 0,
            started_at: None,
            finished_at: None,
            restarts: 0,
            crash_streak: 0,
            last_exit: None,
            claimed_by: None,
        }
    }

    fn c(id: &str, job: &str, node: &str, daemonize: bool, running: bool) -> Container {
        Container {
            id: id.into(),
            job: job.into(),
            node: node.into(),
            daemonize,
            running,
        }
    }

    fn view(containers: Vec<Container>, records: Vec<PsRecord>, procs: &[&str]) -> View {
        View {
            node: "me".into(),
            containers,
            records: records
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r.job.clone(), (r, i as i64 + 1)))
                .collect(),
            procs: procs.iter().map(|s| s.to_string()).collect(),
            sessions: BTreeSet::new(),
            now: CLAIM_GRACE_MS * 2,
            full: true,
            startup: false,
        }
    }

    #[test]
    fn the_named_container_is_refreshed_and_a_stopped_job_stopped() {
        let v = view(
            vec![
                c("a1", "a", "me", true, true),
                c("b1", "b", "me", true, true),
            ],
            vec![
                rec("a", "me", "a1", Status::Running, true),
                rec("b", "me", "b1", Status::Running, true),
            ],
            &["a"],
        );
        assert_eq!(
            plan(&v),
            vec![
                Action::Refresh {
                    job: "a".into(),
                    id: "a1".into()
                },
                Action::Stop {
                    id: "b1".into(),
                    job: "b".into()
                },
                Action::Refresh {
                    job: "b".into(),
                    id: "b1".into()
                },
            ]
        );
    }

    #[test]
    fn a_copy_of_a_moved_job_goes_and_an_unrecorded_one_is_adopted() {
        let v = view(
            vec![
                c("a1", "a", "me", true, true),
                c("b1", "b", "me", true, true),
            ],
            vec![rec("a", "other", "a9", Status::Running, true)],
            &["a", "b"],
        );
        assert_eq!(
            plan(&v),
            vec![
                Action::Remove {
                    id: "a1".into(),
                    job: "a".into(),
                    why: Removal::Stale
                },
                Action::Adopt {
                    id: "b1".into(),
                    job: "b".into()
                },
            ]
        );
    }

    #[test]
    fn a_copy_runs_until_its_move_does_start_first() {
        // The leader moved `a` to another host: while it starts there, the
        // copy here keeps running; once it runs there, the copy goes.
        let starting = view(
            vec![c("a1", "a", "me", true, true)],
            vec![rec("a", "other", "", Status::Starting, true)],
            &["a"],
        );
        assert_eq!(plan(&starting), vec![]);
        let moved = view(
            vec![c("a1", "a", "me", true, true)],
            vec![rec("a", "other", "a9", Status::Running, true)],
            &["a"],
        );
        assert_eq!(
            plan(&moved),
            vec![Action::Remove {
                id: "a1".into(),
                job: "a".into(),
                why: Removal::Stale
            }]
        );
        // A stopped copy, or a job out of viking-proc, is not kept for it.
        let stopped = view(
            vec![c("a1", "a", "me", true, false)],
            vec![rec("a", "other", "", Status::Starting, true)],
            &["a"],
        );
        assert_eq!(plan(&stopped).len(), 1);
    }

    #[test]
    fn a_container_no_job_claims_is_kept() {
        let v = view(vec![c("x1", "x", "me", true, true)], vec![], &[]);
        assert_eq!(plan(&v), vec![]);
    }

    #[test]
    fn records_whose_container_is_gone() {
        let mut v = view(
            vec![],
            vec![
                rec("gone", "me", "x", Status::Running, true),
                rec("starting", "me", "", Status::Starting, true),
                rec("claim", "me", "", Status::Created, false),
                rec("theirs", "other", "y", Status::Running, true),
            ],
            &["gone", "starting"],
        );
        let actions = plan(&v);
        assert!(actions.contains(&Action::MarkMissing {
            job: "gone".into(),
            rev: 1
        }));
        assert!(actions.contains(&Action::DeleteClaim {
            job: "claim".into(),
            rev: 3
        }));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::MarkFailed { .. })));
        v.startup = true;
        assert!(plan(&v).contains(&Action::MarkFailed {
            job: "starting".into(),
            rev: 2
        }));
        v.sessions.insert("claim".into());
        assert!(!plan(&v)
            .iter()
            .any(|a| matches!(a, Action::DeleteClaim { .. })));
    }

    const STATUSES: [Status; 5] = [
        Status::Running,
        Status::Exited,
        Status::Starting,
        Status::Missing,
        Status::Created,
    ];

    fn arb_view() -> impl Strategy<Value = View> {
        let nodes = ["me", "n2"];
        let containers =
            proptest::collection::vec((0..4usize, 0..2usize, any::<bool>(), any::<bool>()), 0..10);
        let records = proptest::collection::vec(
            (0..4usize, 0..2usize, 0..12usize, 0..5usize, any::<bool>()),
            0..6,
        );
        let procs = proptest::collection::vec(0..4usize, 0..4);
        let sessions = proptest::collection::vec(0..4usize, 0..2);
        (
            containers,
            records,
            procs,
            sessions,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(cs, rs, ps, ss, full, startup)| {
                let containers: Vec<Container> = cs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (j, n, d, r))| c(&format!("c{i}"), &format!("j{j}"), nodes[n], d, r))
                    .collect();
                let mut records = BTreeMap::new();
                for (i, (j, n, id, st, d)) in rs.into_iter().enumerate() {
                    let job = format!("j{j}");
                    let r = rec(&job, nodes[n], &format!("c{id}"), STATUSES[st].clone(), d);
                    records.insert(job, (r, i as i64 + 1));
                }
                View {
                    node: "me".into(),
                    containers,
                    records,
                    procs: ps.into_iter().map(|j| format!("j{j}")).collect(),
                    sessions: ss.into_iter().map(|j| format!("j{j}")).collect(),
                    now: CLAIM_GRACE_MS * 2,
                    full,
                    startup,
                }
            })
    }

    fn action_container(a: &Action) -> Option<&str> {
        match a {
            Action::Remove { id, .. }
            | Action::Stop { id, .. }
            | Action::Adopt { id, .. }
            | Action::Refresh { id, .. } => Some(id),
            _ => None,
        }
    }

    fn action_record(a: &Action) -> Option<&str> {
        match a {
            Action::DeleteClaim { job, .. }
            | Action::MarkFailed { job, .. }
            | Action::MarkMissing { job, .. } => Some(job),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn never_touches_another_hosts_containers_or_records(v in arb_view()) {
            for a in plan(&v) {
                if let Some(id) = action_container(&a) {
                    let c = v.containers.iter().find(|c| c.id == id);
                    prop_assert!(c.is_some_and(|c| c.node == v.node), "{a:?} on a container not of this host");
                }
                if let Some(job) = action_record(&a) {
                    let r = v.records.get(job);
                    prop_assert!(r.is_some_and(|(r, _)| r.node == v.node), "{a:?} on a record not of this host");
                }
            }
        }

        #[test]
        fn at_most_one_daemonized_copy_of_a_job_is_left(v in arb_view()) {
            let removed: BTreeSet<String> = plan(&v)
                .iter()
                .filter_map(|a| match a { Action::Remove { id, .. } => Some(id.clone()), _ => None })
                .collect();
            let mut left: BTreeMap<&str, usize> = BTreeMap::new();
            for c in v.containers.iter().filter(|c| c.node == v.node && c.daemonize && !removed.contains(&c.id)) {
                *left.entry(c.job.as_str()).or_default() += 1;
            }
            for (job, n) in left {
                // A start in flight on this host is its starter's to finish;
                // without a record at all, every copy is adopted or removed.
                let starting = v.records.get(job).is_some_and(|(r, _)| r.node == v.node && r.status == Status::Starting);
                let unrecorded = !v.records.contains_key(job);
                prop_assert!(n <= 1 || starting || unrecorded, "{n} copies of {job} left");
            }
        }

        #[test]
        fn the_container_a_record_names_is_never_removed(v in arb_view()) {
            for a in plan(&v) {
                if let Action::Remove { id, job, .. } = &a {
                    let named = v.records.get(job).is_some_and(|(r, _)| r.node == v.node && &r.container_id == id && r.daemonize);
                    let c = v.containers.iter().find(|c| &c.id == id);
                    prop_assert!(!(named && c.is_some_and(|c| c.daemonize)), "{a:?} removes the named container");
                }
            }
        }

        #[test]
        fn a_refresh_is_for_the_container_its_record_names_on_this_host(v in arb_view()) {
            for a in plan(&v) {
                if let Action::Refresh { job, id } = &a {
                    let named = v.records.get(job).is_some_and(|(r, _)| r.node == v.node && &r.container_id == id);
                    prop_assert!(named, "{a:?} for a container its record does not name here");
                }
            }
        }

        #[test]
        fn a_daemonized_container_is_removed_or_stopped_only_on_a_record(v in arb_view()) {
            for a in plan(&v) {
                let (id, job) = match &a {
                    Action::Remove { id, job, .. } | Action::Stop { id, job } => (id, job),
                    _ => continue,
                };
                let daemonized = v.containers.iter().any(|c| &c.id == id && c.daemonize);
                prop_assert!(
                    !daemonized || v.records.contains_key(job),
                    "{a:?} acts on a container without a record of its job"
                );
            }
        }

        #[test]
        fn an_empty_store_touches_nothing(v in arb_view()) {
            let empty = View { records: Default::default(), procs: Default::default(), ..v.clone() };
            for a in plan(&empty) {
                // Only interactive containers whose client is gone go.
                let orphan = matches!(a, Action::Remove { why: Removal::Orphaned, .. });
                prop_assert!(orphan, "{a:?} with an empty store");
            }
        }

        #[test]
        fn the_same_view_gives_the_same_actions(v in arb_view()) {
            prop_assert_eq!(plan(&v), plan(&v));
        }
    }
}
