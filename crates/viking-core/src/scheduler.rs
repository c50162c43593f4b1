//! dowding: picks the server for a job.
//!
//! A pure function over a snapshot: the job, the hosts of floki, the host
//! ports already taken on each, and the job's history. It runs a pipeline of
//! filters, cheapest first, each of which records why it rejected a host,
//! then ranks the hosts left: least busy (running jobs, then free memory),
//! ties broken by name so the choice is deterministic.
//!
//! Filters, in order:
//! 1. alive: the host's floki lease is live;
//! 2. pinned: the job's `host` (`--viking-host`, `VIKING_HOST`);
//! 3. tags: every tag of the job's `filter` (`--viking-filter`, `VIKING_TAG`);
//! 4. fixed: a fixed job goes back to the host in its history, and only there;
//! 5. ports: a host port the job publishes is free on the host.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::{Job, Proto};
use crate::records::History;

/// What dowding knows of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub name: String,
    pub alive: bool,
    pub tags: BTreeSet<String>,
    /// Running jobs on the host.
    pub running: u64,
    pub memory: u64,
    pub memory_used: u64,
    /// Host ports already published on the host.
    pub used_ports: BTreeSet<(u16, Proto)>,
}

/// Why a host cannot take a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub host: String,
    pub reason: String,
}

/// The outcome of a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen host; `None` when no host can take the job.
    pub host: Option<String>,
    /// Every host that was rejected, with its reason, in host-name order:
    /// always from [`explain`]; from [`place`] only when no host was chosen.
    pub rejected: Vec<Rejection>,
    /// Set when a fixed job's host is known but not alive: the job waits.
    pub waiting_for: Option<String>,
}

impl Decision {
    /// A one-line explanation of a failed placement.
    pub fn explain(&self) -> String {
        if let Some(h) = &self.waiting_for {
            return format!("the job is fixed to host {h:?}, which is not alive; it will run there when {h} returns");
        }
        if self.rejected.is_empty() {
            return "no hosts are registered in floki".to_string();
        }
        let reasons: Vec<String> = self
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.host, r.reason))
            .collect();
        format!("no host can take the job ({})", reasons.join("; "))
    }
}

/// Pick a host for `job`: the hot path. Hosts must have distinct names.
///
/// A host is only put through the filters when it would rank better than
/// the best one so far, and no reasons are written down while a host is
/// found; when none is, the answer is [`explain`]'s, with every host's
/// reason.
pub fn place(job: &Job, hosts: &[HostSnapshot], history: Option<&History>) -> Decision {
    let fixed_to = fixed_host(job, history);
    let mut best: Option<(&HostSnapshot, Rank)> = None;
    for h in hosts {
        let r = rank(job, h);
        if best.as_ref().is_some_and(|(_, b)| r >= *b) {
            continue;
        }
        if reject(job, fixed_to, h).is_none() {
            best = Some((h, r));
        }
    }
    match best {
        Some((h, _)) => Decision {
            host: Some(h.name.clone()),
            rejected: Vec::new(),
            waiting_for: None,
        },
        None => explain(job, hosts, history),
    }
}

/// Pick a host for `job` and record why every other host was rejected (what
/// `viking run --dry-run` shows). Chooses the same host as [`place`].
pub fn explain(job: &Job, hosts: &[HostSnapshot], history: Option<&History>) -> Decision {
    let fixed_to = fixed_host(job, history);
    let mut rejected = Vec::new();
    let mut best: Option<&HostSnapshot> = None;
    for h in hosts {
        match reject(job, fixed_to, h) {
            Some(reason) => rejected.push(Rejection {
                host: h.name.clone(),
                reason: reason.to_string(),
            }),
            None => {
                if best.is_none_or(|b| rank(job, h) < rank(job, b)) {
                    best = Some(h);
                }
            }
        }
    }
    rejected.sort_by(|a, b| a.host.cmp(&b.host));
    let waiting_for = match (best, fixed_to) {
        (None, Some(f))
            if hosts.iter().any(|h| h.name == f && !h.alive)
                || !hosts.iter().any(|h| h.name == f) =>
        {
            Some(f.to_string())
        }
        _ => None,
    };
    Decision {
        host: best.map(|h| h.name.clone()),
        rejected,
        waiting_for,
    }
}

/// The host a fixed job must return to.
fn fixed_host<'a>(job: &Job, history: Option<&'a History>) -> Option<&'a str> {
    if job.fixed {
        history.and_then(|h| h.last_node())
    } else {
        None
    }
}

/// Why a host was rejected; written out only when someone asks.
enum Reason<'a> {
    NotAlive,
    Pinned(&'a str),
    MissingTag(&'a str),
    Fixed(&'a str),
    PortTaken(u16),
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotAlive => write!(f, "host is not alive"),
            Reason::Pinned(h) => write!(f, "job is pinned to host {h:?}"),
            Reason::MissingTag(t) => write!(f, "missing tag {t:?}"),
            Reason::Fixed(h) => write!(f, "job is fixed to host {h:?}"),
            Reason::PortTaken(p) => write!(f, "host port {p} is already taken"),
        }
    }
}

/// The filter pipeline, cheapest first: why `h` cannot take `job`, if it
/// cannot.
fn reject<'a>(job: &'a Job, fixed_to: Option<&'a str>, h: &HostSnapshot) -> Option<Reason<'a>> {
    if !h.alive {
        return Some(Reason::NotAlive);
    }
    if let Some(pin) = job.host.as_deref().filter(|p| *p != h.name) {
        return Some(Reason::Pinned(pin));
    }
    if let Some(missing) = job.filter.iter().find(|t| !h.tags.contains(*t)) {
        return Some(Reason::MissingTag(missing));
    }
    if let Some(f) = fixed_to.filter(|f| *f != h.name) {
        return Some(Reason::Fixed(f));
    }
    job.ports
        .iter()
        .find_map(|p| p.host.filter(|hp| h.used_ports.contains(&(*hp, p.proto))))
        .map(Reason::PortTaken)
}

/// How finely free memory ranks hosts: within 256 MiB, two hosts are as
/// good, so a few megabytes of difference do not send every placement of
/// a burst to one host.
const FREE_MEMORY_STEP: u32 = 28;

/// A host's rank for a job: see [`rank`].
type Rank<'a> = (u64, std::cmp::Reverse<u64>, u64, &'a str);

/// Lower is better: fewer running jobs, then more free memory (in steps of
/// 256 MiB), then a hash of the job's and the host's names. The hash
/// spreads jobs among equally good hosts the way rendezvous hashing does:
/// concurrent placements of different jobs over one snapshot pick
/// different hosts instead of all the first by name (each would then race
/// for the same host and all but one decide again), and the same job over
/// the same snapshot always picks the same host.
fn rank<'a>(job: &Job, h: &'a HostSnapshot) -> Rank<'a> {
    (
        h.running,
        std::cmp::Reverse(h.memory.saturating_sub(h.memory_used) >> FREE_MEMORY_STEP),
        spread(&job.name, &h.name),
        h.name.as_str(),
    )
}

/// FNV-1a of `job`, a separator and `host`: stable across builds and
/// machines, so every server ranks alike.
fn spread(job: &str, host: &str) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.bytes().chain([0]).chain(host.bytes()) {
        x ^= u64::from(b);
        x = x.wrapping_mul(0x0000_0100_0000_01b3);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(name: &str, running: u64, tags: &[&str]) -> HostSnapshot {
        HostSnapshot {
            name: name.into(),
            alive: true,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            running,
            memory: 1 << 30,
            memory_used: 0,
            used_ports: BTreeSet::new(),
        }
    }

    fn job(doc: &str) -> Job {
        Job::parse(doc.as_bytes(), || "j".into()).unwrap()
    }

    #[test]
    fn least_busy_wins_and_ties_spread_by_job() {
        let hosts = [host("b", 1, &[]), host("a", 1, &[]), host("c", 0, &[])];
        assert_eq!(
            place(&job(r#"{"image":"x"}"#), &hosts, None)
                .host
                .as_deref(),
            Some("c")
        );
        // Equally good hosts: each job always gets the same one, and a
        // burst of jobs lands on both, not all on the first by name.
        let hosts = [host("b", 1, &[]), host("a", 1, &[])];
        let mut chosen = BTreeSet::new();
        for i in 0..32 {
            let j = job(&format!(r#"{{"name":"j{i}","image":"x"}}"#));
            let h = place(&j, &hosts, None).host.expect("a host");
            assert_eq!(place(&j, &hosts, None).host.as_deref(), Some(h.as_str()));
            assert_eq!(explain(&j, &hosts, None).host.as_deref(), Some(h.as_str()));
            chosen.insert(h);
        }
        assert_eq!(chosen, BTreeSet::from(["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn filters_record_reasons() {
        let mut dead = host("d", 0, &["ssd"]);
        dead.alive = false;
        let mut busy_port = host("p", 0, &["ssd"]);
        busy_port.used_ports.insert((8080, Proto::Tcp));
        let hosts = [dead, busy_port, host("t", 0, &[]), host("ok", 5, &["ssd"])];
        let d = explain(
            &job(r#"{"name":"w","image":"x","ports":["8080:80"],"filter":"ssd"}"#),
            &hosts,
            None,
        );
        assert_eq!(d.host.as_deref(), Some("ok"));
        let reasons: Vec<_> = d
            .rejected
            .iter()
            .map(|r| (r.host.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("d", "host is not alive"),
                ("p", "host port 8080 is already taken"),
                ("t", "missing tag \"ssd\""),
            ]
        );
    }

    #[test]
    fn pinned_and_fixed() {
        let hosts = [host("a", 0, &[]), host("b", 9, &[])];
        let d = place(&job(r#"{"image":"x","host":"b"}"#), &hosts, None);
        assert_eq!(d.host.as_deref(), Some("b"));
        let mut h = History::default();
        h.push("b", 1);
        let d = place(&job(r#"{"image":"x","volumes":["/d"]}"#), &hosts, Some(&h));
        assert_eq!(d.host.as_deref(), Some("b"));
        // a fixed job whose host is gone waits for it
        let mut hosts2 = hosts.clone();
        hosts2[1].alive = false;
        let d = place(&job(r#"{"image":"x","volumes":["/d"]}"#), &hosts2, Some(&h));
        assert_eq!(d.host, None);
        assert_eq!(d.waiting_for.as_deref(), Some("b"));
        assert!(d.explain().contains("fixed to host \"b\""));
        // a non-fixed job ignores its history
        let d = place(&job(r#"{"image":"x"}"#), &hosts2, Some(&h));
        assert_eq!(d.host.as_deref(), Some("a"));
    }

    #[test]
    fn no_host_explains_every_host() {
        let hosts = [host("a", 0, &[]), host("b", 0, &[])];
        let d = place(&job(r#"{"image":"x","filter":"gpu"}"#), &hosts, None);
        assert_eq!(d.host, None);
        assert_eq!(d.rejected.len(), 2);
        assert!(d.explain().contains("a: missing tag"), "{}", d.explain());
    }

    proptest! {
        #[test]
        fn chosen_host_passes_every_filter(
            running in proptest::collection::vec((0u64..5, any::<bool>(), any::<bool>()), 1..12),
            want_tag in any::<bool>(),
        ) {
            let hosts: Vec<HostSnapshot> = running.iter().enumerate().map(|(i, (r, alive, tagged))| {
                let mut h = host(&format!("h{i:02}"), *r, if *tagged { &["t"] } else { &[] });
                h.alive = *alive;
                h
            }).collect();
            let j = if want_tag { job(r#"{"image":"x","filter":"t"}"#) } else { job(r#"{"image":"x"}"#) };
            let d = explain(&j, &hosts, None);
            prop_assert_eq!(&place(&j, &hosts, None).host, &d.host);
            let eligible: Vec<&HostSnapshot> = hosts.iter().filter(|h| h.alive && (!want_tag || h.tags.contains("t"))).collect();
            match &d.host {
                Some(name) => {
                    let h = hosts.iter().find(|h| &h.name == name).unwrap();
                    prop_assert!(eligible.iter().any(|e| e.name == h.name));
                    prop_assert!(eligible.iter().all(|e| e.running >= h.running));
                    prop_assert_eq!(d.rejected.len(), hosts.len() - eligible.len());
                }
                None => {
                    prop_assert!(eligible.is_empty());
                    prop_assert_eq!(d.rejected.len(), hosts.len());
                }
            }
        }
    }
}
