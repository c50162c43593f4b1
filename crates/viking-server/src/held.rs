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
    /// One change (or a key of a first read). Keys of other prefixes are
    /// ignored.
    pub fn note(&mut self, kind: EventKind, key: &str, value: &[u8], rev: Revision) {
        use viking_core::records::decode;
        if let Some(name) = keys::name_of(keys::PROC, key) {
            apply(&mut self.procs, name, kind, rev, || decode(value).ok());
        } else if let Some(name) = keys::name_of(keys::PS, key) {
            apply(&mut self.ps, name, kind, rev, || decode(value).ok());
        } else if let Some(name) = keys::name_of(keys::HOSTS, key) {
            apply(&mut self.alive, name, kind, rev, || decode(value).ok());
            self.fleet = None;
        } else if let Some(name) = keys::name_of(keys::FLEET, key) {
            apply(&mut self.known, name, kind, rev, || decode(value).ok());
            self.fleet = None;
        } else if let Some(host) = keys::name_of(keys::PLACEMENTS, key) {
            if self.claimed.get(host).is_some_and(|(held, _)| *held <= rev) {
                self.claimed.remove(host);
            }
            if self.claims.get(host).is_some_and(|(held, _)| *held >= rev) {
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
    }

    /// Each host's load and accounted claims as just published.
    pub fn set_index(&mut self, index: HashMap<String, (u64, u64)>) {
        self.index = index;
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
    /// hosts, each with the load last published plus the claims placed
    /// on it since, counting its placements counter as at least `floor`
    /// (what it reaches once the claims decided and not yet made are).
    pub fn placement_snapshot(&mut self, floor: impl Fn(&str) -> u64) -> Vec<HostSnapshot> {
        let fleet = self.hosts();
        crate::placement::indexed(&fleet, |name| {
            let (load, accounted) = self.index.get(name).copied().unwrap_or((0, 0));
            let now = self.claims_of(name).map_or(0, |(_, n)| n).max(floor(name));
            load + now.saturating_sub(accounted)
        })
    }
}
