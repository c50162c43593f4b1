//! What the leader holds in memory for its term: viking-proc, viking-ps,
//! floki's hosts, each host's placements counter and the load it last
//! published per host (`assigned/`). Read once when the term begins, then
//! kept by one watch of the whole cluster prefix, whose changes come in
//! revision order, so a reconcile round plans over the store as it was at
//! one revision, and a placement at the leader ([`crate::placer`]) is
//! decided without reading the store.
//!
//! The watch's changes are applied a revision at a time, so what a round
//! reads is the store at one revision, never half of a claim's transaction
//! (its placements counter without its viking-proc record would publish a
//! load that misses the job). Each record with the revision it was written
//! at (what a start's fence compares), or `None` when it cannot be read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use viking_core::job::Reservation;
use viking_core::keys;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};
use viking_core::scheduler::HostSnapshot;
use viking_store::{EventKind, Revision};

/// Each host's placements counter: its revision and claim count.
pub type Claims = HashMap<String, (Revision, u64)>;

/// viking-proc, viking-ps and their revisions, as a round plans over them.
pub type HeldState = (Vec<ProcRecord>, BTreeMap<String, PsRecord>, Revs);

/// A round's input: the placements counters, floki's hosts (with whether
/// each is alive) and viking-proc and viking-ps, all of one revision.
pub type RoundInput = (Claims, Arc<Vec<(HostRecord, bool)>>, HeldState);

/// The revisions of each job's viking-proc and viking-ps records as read.
#[derive(Default)]
pub struct Revs {
    pub proc: BTreeMap<String, Revision>,
    pub ps: BTreeMap<String, Revision>,
}

#[derive(Default)]
pub struct Held {
    /// What a job without limits reserves.
    reserve: Reservation,
    /// What the jobs of viking-proc reserve, per host they are placed on.
    reserved: HashMap<String, Reservation>,
    /// The placer's decisions not claimed yet: job, host, reservation.
    deciding: HashMap<u64, (String, String, Reservation)>,
    next_decision: u64,
    procs: BTreeMap<String, (Option<ProcRecord>, Revision)>,
    ps: BTreeMap<String, (Option<PsRecord>, Revision)>,
    /// Each host's placements counter as the store's reads and watch
    /// brought it: of the same revision as the records above.
    claims: Claims,
    /// Newer counters this leader learnt first (its own claims, a counter
    /// read after a lost race), until the watch brings them: what the next
    /// placement compares against, never what a round plans over (the
    /// records of those claims are not held yet).
    claimed: Claims,
    /// floki: the hosts alive (`hosts/`, under their leases) and every host
    /// ever registered (`fleet/`).
    alive: BTreeMap<String, (Option<HostRecord>, Revision)>,
    known: BTreeMap<String, (Option<HostRecord>, Revision)>,
    /// Each host's load and the claim count it accounts for, as this
    /// leader last published them (`assigned/<host>`).
    index: HashMap<String, (u64, u64)>,
    /// [`Held::hosts`], until a host's record changes.
    fleet: Option<Arc<Vec<(HostRecord, bool)>>>,
    /// The placer's decisions not claimed yet, per host.
    floors: HashMap<String, Floor>,
    /// [`Held::placement_snapshot`], with each host's place in it: built
    /// again when a host's record changes, its loads kept as they change.
    snapshot: Option<(Vec<HostSnapshot>, HashMap<String, usize>)>,
}

/// A host with the placer's claims decided and not yet made.
#[derive(Default)]
struct Floor {
    /// The host's placements counter once they are all made: the decisions
    /// count it as at least this, whether the watch has brought some of
    /// the claims already or not (counting one both ways would skew a
    /// burst).
    at: u64,
    /// How many are in flight.
    in_flight: u64,
}

/// Apply one change to a map of records kept with their revisions. A
/// change older than what is held (a list and the watch may overlap) is
/// ignored.
fn apply<T>(
    map: &mut BTreeMap<String, (Option<T>, Revision)>,
    name: &str,
    kind: EventKind,
    rev: Revision,
    decode: impl FnOnce() -> Option<T>,
) {
    if map.get(name).is_some_and(|(_, held)| *held >= rev) {
        return;
    }
    match kind {
        EventKind::Delete => {
            map.remove(name);
        }
        EventKind::Put => {
            map.insert(name.to_string(), (decode(), rev));
        }
    }
}

impl Held {
    /// Nothing held yet; a job without limits reserves `reserve`.
    pub fn new(reserve: Reservation) -> Self {
        Self {
            reserve,
            ..Default::default()
        }
    }

    /// Where job `name` is placed in viking-proc, and what it reserves.
    fn placed(&self, name: &str) -> Option<(String, Reservation)> {
        let p = self.procs.get(name)?.0.as_ref()?;
        let host = p.placed_on.clone()?;
        Some((host, Reservation::of(&p.job, self.reserve)))
    }

    /// One change (or a key of a first read). Keys of other prefixes are
    /// ignored.
    pub fn note(&mut self, kind: EventKind, key: &str, value: &[u8], rev: Revision) {
        use viking_core::records::decode;
        if let Some(name) = keys::name_of(keys::PROC, key) {
            let before = self.placed(name);
            apply(&mut self.procs, name, kind, rev, || decode(value).ok());
            let after = self.placed(name);
            if before != after {
                if let Some((h, r)) = &before {
                    let left = self.reserved.get(h).copied().unwrap_or_default().minus(*r);
                    self.reserved.insert(h.clone(), left);
                    self.refresh(h);
                }
                if let Some((h, r)) = &after {
                    let now = self.reserved.get(h).copied().unwrap_or_default().plus(*r);
                    self.reserved.insert(h.clone(), now);
                    self.refresh(h);
                }
            }
            // A decision whose job the watch now shows placed counts once.
            if let Some(h) = self
                .deciding
                .values()
                .find(|(job, _, _)| job == name)
                .map(|(_, h, _)| h.clone())
            {
                self.refresh(&h);
            }
        } else if let Some(name) = keys::name_of(keys::PS, key) {
            apply(&mut self.ps, name, kind, rev, || decode(value).ok());
        } else if let Some(name) = keys::name_of(keys::HOSTS, key) {
            apply(&mut self.alive, name, kind, rev, || decode(value).ok());
            self.fleet_changed();
        } else if let Some(name) = keys::name_of(keys::FLEET, key) {
            apply(&mut self.known, name, kind, rev, || decode(value).ok());
            self.fleet_changed();
        } else if let Some(host) = keys::name_of(keys::PLACEMENTS, key) {
            if self.claimed.get(host).is_some_and(|(held, _)| *held <= rev) {
                self.claimed.remove(host);
            }
            if self.claims.get(host).is_some_and(|(held, _)| *held >= rev) {
                self.refresh(host);
                return;
            }
            match kind {
                EventKind::Delete => {
                    self.claims.remove(host);
                }
                EventKind::Put => {
                    let n = crate::placement::claim_count(value);
                    self.claims.insert(host.to_string(), (rev, n));
                }
            }
            self.refresh(host);
        }
    }

    fn fleet_changed(&mut self) {
        self.fleet = None;
        self.snapshot = None;
    }

    /// `host`'s load for the placer: the load last published, plus the
    /// claims placed on it since, counting its placements counter as at
    /// least what the decisions not claimed yet will make it.
    fn load_of(&self, host: &str) -> u64 {
        let (load, accounted) = self.index.get(host).copied().unwrap_or((0, 0));
        let floor = self.floors.get(host).map_or(0, |f| f.at);
        let now = self.claims_of(host).map_or(0, |(_, n)| n).max(floor);
        load + now.saturating_sub(accounted)
    }

    /// What the jobs placed on `host` reserve, with the placer's decisions
    /// for it whose claims the watch has not brought yet.
    fn reserved_of(&self, host: &str) -> Reservation {
        let mut r = self.reserved.get(host).copied().unwrap_or_default();
        for (job, h, need) in self.deciding.values() {
            let held = self.placed(job).is_some_and(|(at, _)| at == *h);
            if h == host && !held {
                r = r.plus(*need);
            }
        }
        r
    }

    /// Bring `host`'s load in the placer's snapshot up to date.
    fn refresh(&mut self, host: &str) {
        let load = self.load_of(host);
        let reserved = self.reserved_of(host);
        if let Some((hosts, at)) = &mut self.snapshot {
            if let Some(h) = at.get(host).and_then(|i| hosts.get_mut(*i)) {
                h.running = load;
                h.reserved = reserved;
            }
        }
    }

    /// `host`'s placements counter at `rev` (a claim this server made, or
    /// the counter read after a lost race), before the watch brings it:
    /// the next placement compares against it.
    pub fn note_claim(&mut self, host: &str, rev: Revision, claims: u64) {
        if self.claims_of(host).is_some_and(|(held, _)| held >= rev) {
            return;
        }
        self.claimed.insert(host.to_string(), (rev, claims));
        self.refresh(host);
    }

    /// Each host's load and accounted claims as just published.
    pub fn set_index(&mut self, index: HashMap<String, (u64, u64)>) {
        self.index = index;
        let hosts: Vec<String> = match &self.snapshot {
            Some((_, at)) => at.keys().cloned().collect(),
            None => return,
        };
        for h in &hosts {
            self.refresh(h);
        }
    }

    /// Where the other instances of `job`'s service are placed (or being
    /// placed); empty for a job that is not an instance.
    pub fn apart(&self, job: &viking_core::Job) -> std::collections::BTreeSet<String> {
        let Some(service) = &job.service else {
            return Default::default();
        };
        let prefix = format!("{service}.");
        let mut out: std::collections::BTreeSet<String> = self
            .procs
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(name, _)| **name != job.name)
            .filter_map(|(_, (p, _))| p.as_ref())
            .filter(|p| p.job.service.as_deref() == Some(service.as_str()))
            .filter_map(|p| p.placed_on.clone())
            .collect();
        out.extend(
            self.deciding
                .values()
                .filter(|(name, _, _)| name.starts_with(&prefix) && *name != job.name)
                .map(|(_, host, _)| host.clone()),
        );
        out
    }

    /// What a job reserves on its host.
    pub fn need(&self, job: &viking_core::Job) -> Reservation {
        Reservation::of(job, self.reserve)
    }

    /// A decision of the placer to place `job` on `host`, counted until
    /// [`Held::decision_ended`] with the id returned: the host's counter as
    /// at least one more than it is now or than the decisions before make
    /// it, and the job's reservation there until the watch brings it.
    pub fn decided(&mut self, host: &str, job: &viking_core::Job) -> u64 {
        let now = self.claims_of(host).map_or(0, |(_, n)| n);
        let f = self.floors.entry(host.to_string()).or_default();
        f.at = f.at.max(now) + 1;
        f.in_flight += 1;
        self.next_decision += 1;
        let id = self.next_decision;
        let need = self.need(job);
        self.deciding
            .insert(id, (job.name.clone(), host.to_string(), need));
        self.refresh(host);
        id
    }

    /// Decision `id`'s claim ended: made (the counter holds it now), or not
    /// (the host's floor drops by one).
    pub fn decision_ended(&mut self, id: u64, host: &str, claimed: bool) {
        self.deciding.remove(&id);
        if let Some(f) = self.floors.get_mut(host) {
            if !claimed {
                f.at = f.at.saturating_sub(1);
            }
            f.in_flight = f.in_flight.saturating_sub(1);
            if f.in_flight == 0 {
                self.floors.remove(host);
            }
        }
        self.refresh(host);
    }

    /// A host's placements counter now: its revision and claim count.
    pub fn claims_of(&self, host: &str) -> Option<(Revision, u64)> {
        let watched = self.claims.get(host).copied();
        match (watched, self.claimed.get(host).copied()) {
            (Some(w), Some(c)) => Some(if c.0 > w.0 { c } else { w }),
            (w, c) => w.or(c),
        }
    }

    /// What a round plans over, with the placements counters of the same
    /// revision.
    pub fn state(&mut self) -> RoundInput {
        let mut revs = Revs::default();
        let mut procs = Vec::with_capacity(self.procs.len());
        for (name, (p, rev)) in &self.procs {
            let Some(p) = p else { continue };
            // A job whose ps cannot be read is not planned (it may run).
            if self.ps.get(name).is_some_and(|(r, _)| r.is_none()) {
                continue;
            }
            revs.proc.insert(name.clone(), *rev);
            procs.push(p.clone());
        }
        let mut ps = BTreeMap::new();
        for (name, (r, rev)) in &self.ps {
            if let Some(r) = r {
                revs.ps.insert(name.clone(), *rev);
                ps.insert(name.clone(), r.clone());
            }
        }
        (self.claims.clone(), self.hosts(), (procs, ps, revs))
    }

    /// floki's hosts, each with whether it is alive (computed again only
    /// after a host's record changed).
    pub fn hosts(&mut self) -> Arc<Vec<(HostRecord, bool)>> {
        if let Some(f) = &self.fleet {
            return f.clone();
        }
        let records = |m: &BTreeMap<String, (Option<HostRecord>, Revision)>| {
            m.values()
                .filter_map(|(r, _)| r.clone())
                .collect::<Vec<_>>()
        };
        let f = Arc::new(viking_core::records::fleet(
            records(&self.alive),
            records(&self.known),
        ));
        self.fleet = Some(f.clone());
        f
    }

    /// dowding's snapshot for a job without fixed host ports: floki's
    /// hosts, each with the load last published plus the claims placed on
    /// it since, counting its placements counter as at least what the
    /// decisions not claimed yet make it. Built once per change of a
    /// host's record; the loads are kept as they change.
    pub fn placement_snapshot(&mut self) -> &[HostSnapshot] {
        if self.snapshot.is_none() {
            let fleet = self.hosts();
            let hosts = crate::placement::indexed(
                &fleet,
                |name| self.load_of(name),
                |name| self.reserved_of(name),
            );
            let at = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), i))
                .collect();
            self.snapshot = Some((hosts, at));
        }
        self.snapshot.as_ref().map_or(&[], |(hosts, _)| hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use viking_core::records::ProcRecord;

    fn record(name: &str) -> Vec<u8> {
        let r = HostRecord {
            name: name.into(),
            ip: "127.0.0.1".into(),
            api: "http://127.0.0.1:1".into(),
            tags: Vec::new(),
            cpus: 1,
            memory: 1 << 30,
            running: 0,
            memory_used: 0,
            cpu_used: 0,
            version: String::new(),
            started_at: 0,
            updated_at: 0,
            server_id: String::new(),
            held: None,
        };
        viking_core::records::encode(&r).expect("encode")
    }

    /// Job `j{j}`, with a memory limit of `mib` MiB unless 0.
    fn job(j: u8, mib: u64) -> viking_core::Job {
        let memory = match mib {
            0 => String::new(),
            m => format!(r#","memory":"{}m""#, m + 6),
        };
        let doc = format!(r#"{{"name":"j{j}","image":"b"{memory}}}"#);
        viking_core::Job::parse(doc.as_bytes(), String::new).expect("a job")
    }

    /// What can happen to the placer's view, host by host.
    #[derive(Debug, Clone)]
    enum Op {
        Joined(u8),
        Left(u8),
        Counter(u8, u64),
        OwnClaim(u8, u64),
        Index(Vec<(u8, u64, u64)>),
        Proc(u8, Option<u8>, u64),
        ProcGone(u8),
        Decided(u8, u8, u64),
        Ended(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let h = 0u8..6;
        let j = 0u8..8;
        prop_oneof![
            h.clone().prop_map(Op::Joined),
            h.clone().prop_map(Op::Left),
            (h.clone(), 0u64..20).prop_map(|(h, n)| Op::Counter(h, n)),
            (h.clone(), 0u64..20).prop_map(|(h, n)| Op::OwnClaim(h, n)),
            proptest::collection::vec((h.clone(), 0u64..20, 0u64..20), 0..6).prop_map(Op::Index),
            (j.clone(), proptest::option::of(h.clone()), 0u64..3)
                .prop_map(|(j, h, m)| Op::Proc(j, h, m)),
            j.clone().prop_map(Op::ProcGone),
            (h, j, 0u64..3).prop_map(|(h, j, m)| Op::Decided(h, j, m)),
            (any::<usize>(), any::<bool>()).prop_map(|(k, c)| Op::Ended(k, c)),
        ]
    }

    proptest! {
        /// The loads and reservations kept host by host are always the
        /// ones computed afresh from what is held.
        #[test]
        fn the_kept_snapshot_is_the_snapshot_built_afresh(ops in proptest::collection::vec(op(), 1..60)) {
            let mut held = Held::new(Reservation { memory: 64 << 20, cpus: 0 });
            let mut rev: Revision = 0;
            let mut decisions: Vec<(u64, String)> = Vec::new();
            for op in ops {
                rev += 1;
                let name = |h: u8| format!("h{h}");
                match op {
                    Op::Joined(h) => held.note(EventKind::Put, &keys::host(&name(h)), &record(&name(h)), rev),
                    Op::Left(h) => held.note(EventKind::Delete, &keys::host(&name(h)), &[], rev),
                    Op::Counter(h, n) => held.note(EventKind::Put, &keys::placements(&name(h)), n.to_string().as_bytes(), rev),
                    Op::OwnClaim(h, n) => held.note_claim(&name(h), rev, n),
                    Op::Index(i) => held.set_index(i.into_iter().map(|(h, l, a)| (name(h), (l, a))).collect()),
                    Op::Proc(j, h, m) => {
                        let p = ProcRecord { job: job(j, m), created_at: 0, placed_on: h.map(name), waiting: None };
                        let v = viking_core::records::encode(&p).expect("encode");
                        held.note(EventKind::Put, &keys::proc(&format!("j{j}")), &v, rev);
                    }
                    Op::ProcGone(j) => held.note(EventKind::Delete, &keys::proc(&format!("j{j}")), &[], rev),
                    Op::Decided(h, j, m) => {
                        let id = held.decided(&name(h), &job(j, m));
                        decisions.push((id, name(h)));
                    }
                    Op::Ended(k, c) => {
                        if !decisions.is_empty() {
                            let (id, h) = decisions.remove(k % decisions.len());
                            held.decision_ended(id, &h, c);
                        }
                    }
                }
                let kept: Vec<(String, u64, Reservation)> = held
                    .placement_snapshot()
                    .iter()
                    .map(|h| (h.name.clone(), h.running, h.reserved))
                    .collect();
                held.snapshot = None;
                let fresh: Vec<(String, u64, Reservation)> = held
                    .placement_snapshot()
                    .iter()
                    .map(|h| (h.name.clone(), h.running, h.reserved))
                    .collect();
                prop_assert_eq!(kept, fresh);
            }
            // With every decision ended, a host reserves what its jobs in
            // viking-proc do.
            for (id, h) in decisions {
                held.decision_ended(id, &h, true);
            }
            let procs: Vec<ProcRecord> = held.procs.values().filter_map(|(p, _)| p.clone()).collect();
            let want = crate::placement::reserved(&procs, held.reserve);
            for h in held.placement_snapshot() {
                prop_assert_eq!(h.reserved, want.get(h.name.as_str()).copied().unwrap_or_default());
            }
        }
    }
}
