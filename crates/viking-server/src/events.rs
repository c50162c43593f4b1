//! The fleet's events (`GET /v1/events?since=REV`, `viking events`): the
//! store's changes to viking-proc, viking-ps, floki and the leader's
//! election, as a stream of what happened, each with the store revision it
//! came from, so a client that lost its stream asks again from the last
//! revision it saw and misses nothing. A revision older than the store
//! still holds is refused (410) naming the oldest one it has.
//!
//! [`Translator`] is the pure part: one change in, the events it means
//! out, remembering what it saw of each key (a job's last status, host and
//! restart count; which hosts were there) to tell a start from a restart
//! and a placement from a move.

use std::collections::{BTreeMap, HashMap, HashSet};

use viking_client::api::FleetEvent;
use viking_core::keys;
use viking_core::records::{decode, ProcRecord, PsRecord};
use viking_store::{EventKind, Revision, StoreError, WatchEvent};

use crate::error::ServerError;

/// What the translator remembers of a job's viking-ps record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: String,
    node: String,
    restarts: u32,
    error: Option<String>,
}

/// Where a job may go, as its viking-proc record says: why it was placed
/// where it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Constraints {
    pinned: Option<String>,
    filter: Vec<String>,
}

/// Changes into events. Pure.
#[derive(Debug, Default)]
pub struct Translator {
    ps: HashMap<String, Seen>,
    procs: HashMap<String, Constraints>,
    hosts: HashSet<String>,
    gone: HashSet<String>,
    /// Whether it started from the store's state ([`Translator::prime`]):
    /// then a host it does not know is not alive.
    primed: bool,
    /// The restart backoff, to say how long a restart waited.
    policy: viking_core::reconcile::Policy,
}

fn constraints(p: &ProcRecord) -> Constraints {
    Constraints {
        pinned: p.job.host.clone(),
        filter: p.job.filter.clone(),
    }
}

fn event(rev: i64, time: u64, kind: &str, action: &str) -> FleetEvent {
    FleetEvent {
        rev,
        time,
        kind: kind.to_string(),
        action: action.to_string(),
        job: None,
        host: None,
        detail: BTreeMap::new(),
    }
}

impl Translator {
    /// A translator that names restart backoffs under `policy`.
    pub fn with_policy(policy: viking_core::reconcile::Policy) -> Self {
        Translator {
            policy,
            ..Default::default()
        }
    }

    /// Start from the store's state (viking-ps, viking-proc, floki's live
    /// hosts and every host it knew), as listed: what follows is told
    /// against it, so a job's first change after is a move, a restart or
    /// an exit, not a placement or a start.
    pub fn prime(
        &mut self,
        ps: &[viking_store::KeyValue],
        procs: &[viking_store::KeyValue],
        hosts: &[viking_store::KeyValue],
        fleet: &[viking_store::KeyValue],
    ) {
        for kv in ps {
            if let (Some(name), Ok(p)) = (
                keys::name_of(keys::PS, &kv.key),
                decode::<PsRecord>(&kv.value),
            ) {
                self.ps.insert(
                    name.to_string(),
                    Seen {
                        status: p.status.as_str().to_string(),
                        node: p.node.clone(),
                        restarts: p.restarts,
                        error: p.error.clone(),
                    },
                );
            }
        }
        for kv in procs {
            if let (Some(name), Ok(p)) = (
                keys::name_of(keys::PROC, &kv.key),
                decode::<ProcRecord>(&kv.value),
            ) {
                self.procs.insert(name.to_string(), constraints(&p));
            }
        }
        for kv in hosts {
            if let Some(name) = keys::name_of(keys::HOSTS, &kv.key) {
                self.hosts.insert(name.to_string());
            }
        }
        for kv in fleet {
            if let Some(name) = keys::name_of(keys::FLEET, &kv.key) {
                if !self.hosts.contains(name) {
                    self.gone.insert(name.to_string());
                }
            }
        }
        self.primed = true;
    }

    /// Why a job was placed where it was, as far as its record tells.
    fn placed_why(&self, name: &str, host: &str) -> Option<String> {
        let c = self.procs.get(name)?;
        Some(match (&c.pinned, c.filter.is_empty()) {
            (Some(h), _) if h == host => format!("pinned to {h}"),
            (_, false) => format!("ranked first of the hosts with {}", c.filter.join(",")),
            _ => "ranked first by dowding".to_string(),
        })
    }

    /// Why a job left `from`, as far as the stream tells.
    fn moved_why(&self, from: &str) -> Option<String> {
        if self.gone.contains(from) || (self.primed && !self.hosts.contains(from)) {
            Some(format!("host {from} gone"))
        } else if self.hosts.contains(from) {
            Some("rebalanced".to_string())
        } else {
            None
        }
    }

    /// The events one change of the store means (none for keys that are
    /// not events: counters, indexes, routes...).
    pub fn translate(&mut self, ev: &WatchEvent, now: u64) -> Vec<FleetEvent> {
        let rev = ev.kv.mod_revision;
        let key = ev.kv.key.as_str();
        if let Some(name) = keys::name_of(keys::PS, key) {
            return self.ps(name, ev, rev, now);
        }
        if let Some(name) = keys::name_of(keys::PROC, key) {
            let mut out = Vec::new();
            match ev.kind {
                EventKind::Put if !self.procs.contains_key(name) => {
                    let mut e = event(rev, now, "job", "accepted");
                    e.job = Some(name.to_string());
                    let decoded = decode::<ProcRecord>(&ev.kv.value).ok();
                    self.procs.insert(
                        name.to_string(),
                        decoded.as_ref().map(constraints).unwrap_or_default(),
                    );
                    if let Some(p) = decoded {
                        e.time = p.created_at;
                        e.detail.insert("image".into(), p.job.image.clone());
                        if let Some(w) = p.waiting {
                            e.detail.insert("waiting".into(), w);
                        }
                    }
                    out.push(e);
                }
                EventKind::Put => {
                    if let Ok(p) = decode::<ProcRecord>(&ev.kv.value) {
                        self.procs.insert(name.to_string(), constraints(&p));
                    }
                }
                EventKind::Delete => {
                    self.procs.remove(name);
                    let mut e = event(rev, now, "job", "stopped");
                    e.job = Some(name.to_string());
                    out.push(e);
                }
            }
            return out;
        }
        if let Some(name) = keys::name_of(keys::HOSTS, key) {
            let mut out = Vec::new();
            match ev.kind {
                EventKind::Put if self.hosts.insert(name.to_string()) => {
                    let action = if self.gone.remove(name) {
                        "returned"
                    } else {
                        "joined"
                    };
                    let mut e = event(rev, now, "host", action);
                    e.host = Some(name.to_string());
                    out.push(e);
                }
                EventKind::Put => {}
                EventKind::Delete => {
                    self.hosts.remove(name);
                    self.gone.insert(name.to_string());
                    let mut e = event(rev, now, "host", "gone");
                    e.host = Some(name.to_string());
                    out.push(e);
                }
            }
            return out;
        }
        if key.starts_with(viking_store::election::ELECTION_PREFIX) && ev.kind == EventKind::Put {
            let mut e = event(rev, now, "leader", "changed");
            let value = String::from_utf8_lossy(&ev.kv.value).to_string();
            e.host = Some(value.trim_matches('"').to_string());
            return vec![e];
        }
        vec![]
    }

    /// The events of one revision's changes (one transaction), in the
    /// order they happened: a job accepted before it is placed, a job
    /// stopped after what its last record said.
    pub fn translate_revision(&mut self, evs: &[WatchEvent], now: u64) -> Vec<FleetEvent> {
        // viking-proc first: a placement in the same transaction is told
        // with what the job's record says of where it may go.
        let is_proc = |e: &&WatchEvent| keys::name_of(keys::PROC, &e.kv.key).is_some();
        let mut out: Vec<FleetEvent> = evs
            .iter()
            .filter(is_proc)
            .chain(evs.iter().filter(|e| !is_proc(e)))
            .flat_map(|e| self.translate(e, now))
            .collect();
        let rank = |e: &FleetEvent| match e.action.as_str() {
            "accepted" | "joined" | "returned" => 0,
            "stopped" | "removed" | "gone" => 2,
            _ => 1,
        };
        out.sort_by_key(rank);
        out
    }

    fn ps(&mut self, name: &str, ev: &WatchEvent, rev: i64, now: u64) -> Vec<FleetEvent> {
        let job = |action: &str, time: u64, host: &str| {
            let mut e = event(rev, time, "job", action);
            e.job = Some(name.to_string());
            if !host.is_empty() {
                e.host = Some(host.to_string());
            }
            e
        };
        if ev.kind == EventKind::Delete {
            let before = self.ps.remove(name);
            return vec![job(
                "removed",
                now,
                before.as_ref().map_or("", |b| b.node.as_str()),
            )];
        }
        let Ok(p) = decode::<PsRecord>(&ev.kv.value) else {
            return vec![];
        };
        let now_seen = Seen {
            status: p.status.as_str().to_string(),
            node: p.node.clone(),
            restarts: p.restarts,
            error: p.error.clone(),
        };
        let before = self.ps.insert(name.to_string(), now_seen.clone());
        if before.as_ref() == Some(&now_seen) {
            return vec![];
        }
        let mut out = Vec::new();
        let moved = before
            .as_ref()
            .is_some_and(|b| !b.node.is_empty() && b.node != p.node);
        let was_running = before.as_ref().is_some_and(|b| b.status == "running");
        // A running record that gains an error: its health check failed
        // (the health checker notes why, then stops the container).
        if was_running
            && now_seen.status == "running"
            && before.as_ref().is_some_and(|b| b.error.is_none())
        {
            if let Some(err) = &p.error {
                let mut e = job("health check failed", now, &p.node);
                e.detail.insert("error".into(), err.clone());
                return vec![e];
            }
        }
        match now_seen.status.as_str() {
            // Its container replaced where it runs: a push step or a
            // restart (start-first: the old one runs until the new one does).
            "starting" if was_running && !moved => {
                out.push(job("replacing", p.created_at, &p.node));
            }
            "starting" | "created" => {
                let mut e = if moved {
                    let mut e = job("moved", p.created_at, &p.node);
                    if let Some(b) = &before {
                        e.detail.insert("from".into(), b.node.clone());
                        if let Some(why) = self.moved_why(&b.node) {
                            e.detail.insert("why".into(), why);
                        }
                    }
                    e.detail.insert("to".into(), p.node.clone());
                    e
                } else {
                    let mut e = job("placed", p.created_at, &p.node);
                    if let Some(why) = self.placed_why(name, &p.node) {
                        e.detail.insert("why".into(), why);
                    }
                    e
                };
                if let Some(by) = &p.claimed_by {
                    e.detail.insert("by".into(), by.clone());
                }
                out.push(e);
            }
            "running" => {
                let restarted = before.as_ref().is_some_and(|b| p.restarts > b.restarts);
                let mut e = if restarted {
                    let mut e = job("restarted", p.started_at.unwrap_or(now), &p.node);
                    e.detail.insert("count".into(), p.restarts.to_string());
                    // The reconciler waited backoff(streak) after the
                    // streak's last crash; the record holds streak + 1.
                    let waited = match p.crash_streak {
                        0 => 0,
                        n => self.policy.backoff(n - 1),
                    };
                    e.detail
                        .insert("backoff".into(), format!("{}s", waited as f64 / 1000.0));
                    e
                } else {
                    job("started", p.started_at.unwrap_or(now), &p.node)
                };
                e.detail.insert(
                    "container".into(),
                    p.container_id.chars().take(12).collect(),
                );
                out.push(e);
            }
            "exited" | "dead" => {
                let mut e = job("exited", p.finished_at.unwrap_or(now), &p.node);
                e.detail
                    .insert("code".into(), p.exit_code.unwrap_or(0).to_string());
                out.push(e);
            }
            "failed" => {
                let mut e = job("failed", now, &p.node);
                if let Some(err) = &p.error {
                    e.detail.insert("error".into(), err.clone());
                }
                out.push(e);
            }
            "waiting" => out.push(job("waiting for host", now, &p.node)),
            other => out.push(job(other, now, &p.node)),
        }
        out
    }
}

/// Whether `e` passes the stream's filters.
pub fn wanted(e: &FleetEvent, job: Option<&str>, host: Option<&str>) -> bool {
    job.is_none_or(|j| e.job.as_deref() == Some(j))
        && host.is_none_or(|h| e.host.as_deref() == Some(h) || e.detail.values().any(|v| v == h))
}

/// How many events a reader of [`follow`] may leave unread: one that falls
/// further behind has its stream ended (it resumes with `since`, the
/// revision of the last event it read + 1), so a reader that stops reading
/// costs the server no more than this.
const FOLLOW_QUEUE: usize = 1024;

/// The fleet's events from revision `from` on, for as long as the receiver
/// is kept and read (or until the server stops, or the store's watch
/// ends), with `job` and `host` as [`wanted`] filters. `GET /v1/events`
/// and the dashboard's live feed read it.
pub async fn follow(
    sh: &std::sync::Arc<crate::Shared>,
    from: Option<Revision>,
    job: Option<String>,
    host: Option<String>,
) -> Result<tokio::sync::mpsc::Receiver<FleetEvent>, ServerError> {
    let mut t = Translator::with_policy(sh.config.policy);
    let from = match from {
        Some(r) => r,
        None => {
            // From now: told against the state now (a list each; the
            // watch starts after the oldest of them, and what it replays
            // of the others is already seen, so it says nothing twice).
            let store = sh.store.as_ref();
            let (ps, r1) = store.list(keys::PS).await?;
            let (procs, _) = store.list(keys::PROC).await?;
            let (hosts, _) = store.list(keys::HOSTS).await?;
            let (fleet, _) = store.list(keys::FLEET).await?;
            t.prime(&ps, &procs, &hosts, &fleet);
            r1 + 1
        }
    };
    let mut watch = sh.store.watch("", from).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<FleetEvent>(FOLLOW_QUEUE);
    let mut shutdown = sh.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = crate::stopped(&mut shutdown) => return,
                _ = tx.closed() => return,
                evs = watch.next_revision() => evs,
            };
            match ev {
                Some(Ok(evs)) => {
                    for e in t.translate_revision(&evs, crate::now_ms()) {
                        if !wanted(&e, job.as_deref(), host.as_deref()) {
                            continue;
                        }
                        if let Err(full_or_gone) = tx.try_send(e) {
                            if let tokio::sync::mpsc::error::TrySendError::Full(e) = full_or_gone {
                                tracing::info!(
                                    rev = e.rev,
                                    "events: a reader {FOLLOW_QUEUE} events behind; its stream ends"
                                );
                            }
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("events: the watch ended: {e}");
                    return;
                }
                None => return,
            }
        }
    });
    Ok(rx)
}

/// How long [`recent`] reads the store's history at most.
const RECENT_BUDGET: std::time::Duration = std::time::Duration::from_millis(1500);

/// How far back [`recent`] reads the store's history, in revisions: a
/// page's first lines come from the newest changes, whatever the
/// compaction window holds.
const RECENT_REVISIONS: i64 = 2000;

/// The last `limit` events of the store's newest [`RECENT_REVISIONS`]
/// revisions that it still holds, filtered by `job`, newest last, and the
/// revision they go up to: a page shows them and follows with `since` =
/// that revision + 1. Reading stops after [`RECENT_BUDGET`] with what it
/// has.
pub async fn recent(
    sh: &crate::Shared,
    job: Option<&str>,
    limit: usize,
) -> Result<(Vec<FleetEvent>, Revision), ServerError> {
    let now = sh.store.revision().await?;
    let from = (now - RECENT_REVISIONS + 1).max(1);
    let mut watch = match sh.store.watch("", from).await {
        Ok(w) => w,
        Err(StoreError::Compacted { oldest, .. }) => sh.store.watch("", oldest).await?,
        Err(e) => return Err(e.into()),
    };
    let mut t = Translator::default();
    let limit = limit.max(1);
    let mut kept = std::collections::VecDeque::with_capacity(limit);
    let deadline = tokio::time::Instant::now() + RECENT_BUDGET;
    let mut seen = 0;
    while seen < now {
        let evs = match tokio::time::timeout_at(deadline, watch.next_revision()).await {
            Ok(Some(Ok(evs))) => evs,
            // The history moved on while it was read: what was read stands.
            Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
        };
        seen = evs.last().map_or(now, |e| e.kv.mod_revision);
        for e in t.translate_revision(&evs, crate::now_ms()) {
            if e.rev <= now && wanted(&e, job, None) {
                if kept.len() == limit {
                    kept.pop_front();
                }
                kept.push_back(e);
            }
        }
    }
    Ok((kept.into(), now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use viking_core::records::encode;
    use viking_core::status::Status;
    use viking_store::KeyValue;

    fn put(key: String, value: Vec<u8>, rev: i64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
                lease: None,
            },
        }
    }

    fn ps(job: &str, node: &str, status: Status, restarts: u32) -> Vec<u8> {
        let p = PsRecord {
            job: job.into(),
            node: node.into(),
            container_id: "c0ffee".into(),
            image: "i".into(),
            image_id: String::new(),
            command: vec![],
            daemonize: true,
            status,
            exit_code: Some(3),
            error: None,
            ports: vec![],
            created_at: 1_000,
            started_at: None,
            finished_at: None,
            restarts,
            crash_streak: 0,
            last_exit: None,
            claimed_by: None,
        };
        encode(&p).unwrap()
    }

    #[test]
    fn a_jobs_life_reads_as_events() {
        let mut t = Translator::default();
        let mut all = Vec::new();
        let steps = [
            ("n1", Status::Starting, 0),
            ("n1", Status::Running, 0),
            ("n1", Status::Running, 0),
            ("n1", Status::Exited, 0),
            ("n1", Status::Running, 1),
            ("n2", Status::Starting, 1),
            ("n2", Status::Running, 1),
        ];
        for (i, (node, st, r)) in steps.into_iter().enumerate() {
            all.extend(t.translate(
                &put(keys::ps("web"), ps("web", node, st, r), i as i64 + 1),
                0,
            ));
        }
        let actions: Vec<(&str, Option<&str>)> = all
            .iter()
            .map(|e| (e.action.as_str(), e.host.as_deref()))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("placed", Some("n1")),
                ("started", Some("n1")),
                ("exited", Some("n1")),
                ("restarted", Some("n1")),
                ("moved", Some("n2")),
                ("started", Some("n2")),
            ]
        );
        assert_eq!(all[2].detail["code"], "3");
        assert_eq!(all[3].detail["count"], "1");
        assert_eq!(all[4].detail["from"], "n1");
        let revs: Vec<i64> = all.iter().map(|e| e.rev).collect();
        assert_eq!(revs, vec![1, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn a_failed_health_check_and_a_replacement_read_as_events() {
        let mut t = Translator::default();
        let mut rec = |status: Status, error: Option<&str>, rev: i64| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&ps("web", "n1", status, 0)).unwrap();
            v["data"]["error"] = serde_json::json!(error);
            t.translate(&put(keys::ps("web"), v.to_string().into_bytes(), rev), 0)
        };
        let mut got = Vec::new();
        got.extend(rec(Status::Running, None, 1));
        got.extend(rec(
            Status::Running,
            Some("health check failed: no answer"),
            2,
        ));
        got.extend(rec(Status::Starting, None, 3));
        got.extend(rec(Status::Running, None, 4));
        let actions: Vec<&str> = got.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["started", "health check failed", "replacing", "started"]
        );
        assert_eq!(got[1].detail["error"], "health check failed: no answer");
    }

    /// Started from the store's state, a job's first change after is told
    /// against it: a move (with why: its host is not alive) and a restart
    /// (with the backoff it waited), not a placement and a start.
    #[test]
    fn a_primed_translator_tells_moves_and_restarts_with_why() {
        let kv = |key: String, value: Vec<u8>| put(key, value, 1).kv;
        let mut crashed: serde_json::Value =
            serde_json::from_slice(&ps("db", "n2", Status::Running, 2)).unwrap();
        crashed["data"]["crash_streak"] = serde_json::json!(3);
        let mut t = Translator::default();
        t.prime(
            &[
                kv(keys::ps("web"), ps("web", "n1", Status::Running, 0)),
                kv(keys::ps("db"), ps("db", "n2", Status::Exited, 1)),
            ],
            &[],
            &[kv(keys::host("n2"), b"{}".to_vec())],
            &[
                kv(format!("{}n1", keys::FLEET), b"{}".to_vec()),
                kv(format!("{}n2", keys::FLEET), b"{}".to_vec()),
            ],
        );
        let moved = t.translate(
            &put(keys::ps("web"), ps("web", "n2", Status::Starting, 1), 2),
            0,
        );
        assert_eq!(moved[0].action, "moved");
        assert_eq!(moved[0].detail["from"], "n1");
        assert_eq!(moved[0].detail["why"], "host n1 gone");
        let restarted = t.translate(&put(keys::ps("db"), crashed.to_string().into_bytes(), 3), 0);
        assert_eq!(restarted[0].action, "restarted");
        assert_eq!(restarted[0].detail["count"], "2");
        // The third crash in a row waited backoff(2) = 2 s.
        assert_eq!(restarted[0].detail["backoff"], "2s");
        // A move off a live host is a rebalance.
        let moved = t.translate(
            &put(keys::ps("db"), ps("db", "n3", Status::Starting, 3), 4),
            0,
        );
        assert_eq!(moved[0].detail["why"], "rebalanced");
        // Unprimed, the same change is a placement: nothing told it more.
        let mut fresh = Translator::default();
        let placed = fresh.translate(
            &put(keys::ps("web"), ps("web", "n2", Status::Starting, 1), 2),
            0,
        );
        assert_eq!(placed[0].action, "placed");
    }

    #[test]
    fn hosts_join_leave_and_return() {
        let mut t = Translator::default();
        let h = put(keys::host("n1"), b"{}".to_vec(), 1);
        let mut gone = h.clone();
        gone.kind = EventKind::Delete;
        gone.kv.mod_revision = 2;
        let mut back = h.clone();
        back.kv.mod_revision = 3;
        let got: Vec<String> = [&h, &h, &gone, &back]
            .iter()
            .flat_map(|e| t.translate(e, 0))
            .map(|e| e.action)
            .collect();
        assert_eq!(got, vec!["joined", "gone", "returned"]);
        assert!(t
            .translate(&put("counters/placements/n1".into(), b"1".to_vec(), 4), 0)
            .is_empty());
    }
}
