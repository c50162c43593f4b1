//! dowding: picks the server for a job.
//!
//! A pure function over a snapshot: the job, the hosts of floki, the host
//! ports already taken on each, and the job's history. It runs a pipeline of
//! filters, cheapest first, each of which records why it rejected a host,
//! then ranks the hosts left: least loaded (the larger of the share of its
//! memory and CPUs reserved once the job is placed and the share of its
//! memory measured in use, in steps of 5 %), then fewest running jobs, then
//! most free memory, ties spread by a hash of the names.
//!
//! Filters, in order:
//! 1. alive: the host's floki lease is live;
//! 2. pinned: the job's `host` (`--viking-host`, `VIKING_HOST`);
//! 3. tags: every tag of the job's `filter` (`--viking-filter`, `VIKING_TAG`);
//! 4. fixed: a fixed job goes back to the host in its history, and only there;
//! 5. ports: a host port the job publishes is free on the host;
//! 6. room: the host's memory and CPUs not yet reserved hold what the job
//!    reserves (its `memory` and `cpus`, or the cluster's default for a job
//!    without limits: [`Reservation::of`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::job::Reservation;
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
    /// The host's CPUs, in thousandths (0: not known, never short).
    pub cpus: u64,
    /// CPU its containers used over the last minute, in thousandths.
    pub cpu_used: u64,
    /// What the jobs placed on the host reserve.
    pub reserved: Reservation,
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
pub fn place(
    job: &Job,
    need: Reservation,
    hosts: &[HostSnapshot],
    history: Option<&History>,
) -> Decision {
    place_apart(job, need, hosts, history, &BTreeSet::new())
}

/// [`place`] for an instance of a service: hosts in `apart` (where its
/// other instances run) rank after every other host that can take it, so
/// instances land on distinct hosts while there are enough.
pub fn place_apart(
    job: &Job,
    need: Reservation,
    hosts: &[HostSnapshot],
    history: Option<&History>,
    apart: &BTreeSet<String>,
) -> Decision {
    let fixed_to = fixed_host(job, history);
    let mut best: Option<(bool, &HostSnapshot, Rank)> = None;
    for h in hosts {
        let r = rank(job, need, h);
        let shared = !apart.is_empty() && apart.contains(&h.name);
        if best
            .as_ref()
            .is_some_and(|(bs, _, b)| (shared, &r) >= (*bs, b))
        {
            continue;
        }
        if reject(job, need, fixed_to, h).is_none() {
            best = Some((shared, h, r));
        }
    }
    match best {
        Some((_, h, _)) => Decision {
            host: Some(h.name.clone()),
            rejected: Vec::new(),
            waiting_for: None,
        },
        None => explain(job, need, hosts, history),
    }
}

/// Pick a host for `job` and record why every other host was rejected (what
/// `viking run --dry-run` shows). Chooses the same host as [`place`].
pub fn explain(
    job: &Job,
    need: Reservation,
    hosts: &[HostSnapshot],
    history: Option<&History>,
) -> Decision {
    let fixed_to = fixed_host(job, history);
    let mut rejected = Vec::new();
    let mut best: Option<&HostSnapshot> = None;
    for h in hosts {
        match reject(job, need, fixed_to, h) {
            Some(reason) => rejected.push(Rejection {
                host: h.name.clone(),
                reason: reason.to_string(),
            }),
            None => {
                if best.is_none_or(|b| rank(job, need, h) < rank(job, need, b)) {
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
    /// Memory: needed, free (bytes).
    Memory(u64, u64),
    /// CPUs: needed, free (thousandths).
    Cpus(u64, u64),
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotAlive => write!(f, "host is not alive"),
            Reason::Pinned(h) => write!(f, "job is pinned to host {h:?}"),
            Reason::MissingTag(t) => write!(f, "missing tag {t:?}"),
            Reason::Fixed(h) => write!(f, "job is fixed to host {h:?}"),
            Reason::PortTaken(p) => write!(f, "host port {p} is already taken"),
            Reason::Memory(need, free) => {
                write!(f, "needs {} MiB, {} MiB free", mib(*need), mib(*free))
            }
            Reason::Cpus(need, free) => write!(
                f,
                "needs {} CPUs, {} free",
                crate::job::cpus_text(*need),
                crate::job::cpus_text(*free)
            ),
        }
    }
}

/// The filter pipeline, cheapest first: why `h` cannot take `job`, if it
/// cannot.
fn reject<'a>(
    job: &'a Job,
    need: Reservation,
    fixed_to: Option<&'a str>,
    h: &HostSnapshot,
) -> Option<Reason<'a>> {
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
    if let Some(taken) = job
        .ports
        .iter()
        .find_map(|p| p.host.filter(|hp| h.used_ports.contains(&(*hp, p.proto))))
    {
        return Some(Reason::PortTaken(taken));
    }
    let free = Reservation {
        memory: h.memory.saturating_sub(h.reserved.memory),
        cpus: h.cpus.saturating_sub(h.reserved.cpus),
    };
    if h.memory > 0 && need.memory > free.memory {
        return Some(Reason::Memory(need.memory, free.memory));
    }
    if h.cpus > 0 && need.cpus > free.cpus {
        return Some(Reason::Cpus(need.cpus, free.cpus));
    }
    None
}

/// Bytes as MiB, rounded down, with a decimal below 10 MiB.
fn mib(bytes: u64) -> String {
    if bytes < 10 << 20 && !bytes.is_multiple_of(1 << 20) {
        format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
    } else {
        (bytes >> 20).to_string()
    }
}

/// How finely load ranks hosts: in twentieths (5 %), so hosts a few jobs
/// apart are as loaded and the count of running jobs spreads a burst.
const LOAD_STEPS: u64 = 20;

/// The host's load once `need` is placed on it, in [`LOAD_STEPS`]: the
/// larger of the share of its memory and of its CPUs reserved and the
/// shares of its memory and CPUs measured in use.
fn load(need: Reservation, h: &HostSnapshot) -> u64 {
    let share = |used: u64, of: u64| match of {
        0 => 0,
        of => (u128::from(used) * u128::from(LOAD_STEPS) / u128::from(of)) as u64,
    };
    let after = h.reserved.plus(need);
    share(after.memory, h.memory)
        .max(share(after.cpus, h.cpus))
        .max(share(h.memory_used, h.memory))
        .max(share(h.cpu_used, h.cpus))
}

/// How finely free memory ranks hosts: within 256 MiB, two hosts are as
/// good, so a few megabytes of difference do not send every placement of
/// a burst to one host.
const FREE_MEMORY_STEP: u32 = 28;

/// A host's rank for a job: see [`rank`].
type Rank<'a> = (u64, u64, std::cmp::Reverse<u64>, u64, &'a str);

/// Lower is better: less load ([`load`]), then fewer running jobs, then
/// more free memory (in steps of
/// 256 MiB), then a hash of the job's and the host's names. The hash
/// spreads jobs among equally good hosts the way rendezvous hashing does:
/// concurrent placements of different jobs over one snapshot pick
/// different hosts instead of all the first by name (each would then race
/// for the same host and all but one decide again), and the same job over
/// the same snapshot always picks the same host.
fn rank<'a>(job: &Job, need: Reservation, h: &'a HostSnapshot) -> Rank<'a> {
    (
        load(need, h),
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

    const R0: Reservation = Reservation { memory: 0, cpus: 0 };

    fn host(name: &str, running: u64, tags: &[&str]) -> HostSnapshot {
        HostSnapshot {
            name: name.into(),
            alive: true,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            running,
            memory: 1 << 30,
            memory_used: 0,
            cpu_used: 0,
            used_ports: BTreeSet::new(),
            cpus: 4000,
            reserved: Reservation::default(),
        }
    }

    fn job(doc: &str) -> Job {
        Job::parse(doc.as_bytes(), || "j".into()).unwrap()
    }

    #[test]
    fn least_busy_wins_and_ties_spread_by_job() {
        let hosts = [host("b", 1, &[]), host("a", 1, &[]), host("c", 0, &[])];
        assert_eq!(
            place(&job(r#"{"image":"x"}"#), R0, &hosts, None)
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
            let h = place(&j, R0, &hosts, None).host.expect("a host");
            assert_eq!(
                place(&j, R0, &hosts, None).host.as_deref(),
                Some(h.as_str())
            );
            assert_eq!(
                explain(&j, R0, &hosts, None).host.as_deref(),
                Some(h.as_str())
            );
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
            R0,
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
        let d = place(&job(r#"{"image":"x","host":"b"}"#), R0, &hosts, None);
        assert_eq!(d.host.as_deref(), Some("b"));
        let mut h = History::default();
        h.push("b", 1);
        let d = place(
            &job(r#"{"image":"x","volumes":["/d"]}"#),
            R0,
            &hosts,
            Some(&h),
        );
        assert_eq!(d.host.as_deref(), Some("b"));
        // a fixed job whose host is gone waits for it
        let mut hosts2 = hosts.clone();
        hosts2[1].alive = false;
        let d = place(
            &job(r#"{"image":"x","volumes":["/d"]}"#),
            R0,
            &hosts2,
            Some(&h),
        );
        assert_eq!(d.host, None);
        assert_eq!(d.waiting_for.as_deref(), Some("b"));
        assert!(d.explain().contains("fixed to host \"b\""));
        // a non-fixed job ignores its history
        let d = place(&job(r#"{"image":"x"}"#), R0, &hosts2, Some(&h));
        assert_eq!(d.host.as_deref(), Some("a"));
    }

    #[test]
    fn a_host_without_room_for_the_reservation_is_refused_with_what_is_free() {
        let mut small = host("n1", 0, &[]);
        small.reserved = Reservation {
            memory: (1 << 30) - (120 << 20),
            cpus: 0,
        };
        let mut busy_cpu = host("n2", 0, &[]);
        busy_cpu.reserved = Reservation {
            memory: 0,
            cpus: 3800,
        };
        let roomy = host("n3", 5, &[]);
        let j = job(r#"{"image":"x","memory":"256m","cpus":0.5}"#);
        let need = Reservation::of(&j, R0);
        assert_eq!(
            need,
            Reservation {
                memory: 256 << 20,
                cpus: 500
            }
        );
        let d = explain(&j, need, &[small.clone(), busy_cpu.clone(), roomy], None);
        assert_eq!(
            d.host.as_deref(),
            Some("n3"),
            "the only host with room, though the busiest"
        );
        let reasons: Vec<_> = d
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.host, r.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                "n1: needs 256 MiB, 120 MiB free",
                "n2: needs 0.5 CPUs, 0.2 free"
            ]
        );
        // Too big for every host: refused, with each host's reason.
        let huge = job(r#"{"image":"x","memory":"2g"}"#);
        let d = place(&huge, Reservation::of(&huge, R0), &[small, busy_cpu], None);
        assert_eq!(d.host, None);
        assert!(
            d.explain().contains("n1: needs 2048 MiB, 120 MiB free"),
            "{}",
            d.explain()
        );
        assert!(
            d.explain().contains("n2: needs 2048 MiB, 1024 MiB free"),
            "{}",
            d.explain()
        );
        // Without limits, a job reserves the default.
        let plain = job(r#"{"image":"x"}"#);
        let default = Reservation {
            memory: 64 << 20,
            cpus: 100,
        };
        assert_eq!(Reservation::of(&plain, default), default);
    }

    #[test]
    fn reservations_and_measured_use_rank_before_the_count_of_jobs() {
        // n1 runs fewer jobs but most of its memory is reserved; n2 runs
        // more small ones; n3 is measured nearly full.
        let mut n1 = host("n1", 1, &[]);
        n1.reserved.memory = 800 << 20;
        let mut n2 = host("n2", 4, &[]);
        n2.reserved.memory = 200 << 20;
        let mut n3 = host("n3", 0, &[]);
        n3.memory_used = 900 << 20;
        let j = job(r#"{"image":"x","memory":"64m"}"#);
        let d = place(&j, Reservation::of(&j, R0), &[n1, n2, n3], None);
        assert_eq!(d.host.as_deref(), Some("n2"));
    }

    #[test]
    fn no_host_explains_every_host() {
        let hosts = [host("a", 0, &[]), host("b", 0, &[])];
        let d = place(&job(r#"{"image":"x","filter":"gpu"}"#), R0, &hosts, None);
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
            let d = explain(&j, R0, &hosts, None);
            prop_assert_eq!(&place(&j, R0, &hosts, None).host, &d.host);
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
