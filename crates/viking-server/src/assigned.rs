//! Each host's jobs, as the leader publishes them: `assigned/<host>` lists
//! the jobs whose viking-ps record names the host. A host's agent reads its
//! own key and then those jobs' records one by one, so its periodic resync
//! costs its own work, not the fleet's: no server but the leader reads
//! every record.
//!
//! An index, never the authority: the agent acts only on the records it
//! reads itself. A job missing from a stale index is looked at in a later
//! resync (or at once through Docker's events if it has a container here);
//! a job listed by mistake has a record that names another host, and the
//! agent leaves it alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use viking_core::job::Reservation;
use viking_core::keys;
use viking_core::records::{AssignedRecord, ProcRecord, PsRecord};
use viking_store::Revision;

use crate::error::Result;
use crate::Shared;

/// The index from viking-ps and viking-proc: each host's jobs, its load
/// (dowding's figure) and the claims on it the records count (`claims`:
/// each host's placements counter, read before the records).
pub fn index(
    ps: &BTreeMap<String, PsRecord>,
    procs: &[ProcRecord],
    claims: &HashMap<String, (Revision, u64)>,
    default: Reservation,
) -> BTreeMap<String, AssignedRecord> {
    let mut out: BTreeMap<String, AssignedRecord> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<String, AssignedRecord>, host: &str| {
        out.entry(host.to_string())
            .or_insert_with(|| AssignedRecord {
                host: host.to_string(),
                jobs: BTreeSet::new(),
                load: 0,
                claims: claims.get(host).map_or(0, |(_, n)| *n),
                reserved: Reservation::default(),
            });
    };
    // A host with claims and no jobs left is in it too, with no load: the
    // claims are accounted for (an index without it would count them all
    // as made since).
    for host in claims.keys() {
        entry(&mut out, host);
    }
    for (job, rec) in ps {
        entry(&mut out, &rec.node);
        if let Some(r) = out.get_mut(&rec.node) {
            r.jobs.insert(job.clone());
        }
    }
    for (host, jobs) in crate::placement::load(ps.values(), procs) {
        entry(&mut out, host);
        if let Some(r) = out.get_mut(host) {
            r.load = jobs.len() as u64;
        }
    }
    for (host, reserved) in crate::placement::reserved(procs, default) {
        entry(&mut out, host);
        if let Some(r) = out.get_mut(host) {
            r.reserved = reserved;
        }
    }
    out
}

/// The leader's part: write `assigned/<host>` for every host whose record
/// changed since `published` (what this leader wrote last; read from the
/// store when `None`), and delete the keys of hosts with nothing left.
pub async fn publish(
    sh: &Shared,
    ps: &BTreeMap<String, PsRecord>,
    procs: &[ProcRecord],
    claims: &HashMap<String, (Revision, u64)>,
    published: &mut Option<BTreeMap<String, AssignedRecord>>,
) -> Result<()> {
    let want = index(ps, procs, claims, sh.config.policy.reserve);
    crate::state::publish_index(sh.store.as_ref(), keys::ASSIGNED, want, published).await
}

/// The jobs the leader last listed for this host (none if it listed none).
pub async fn mine(sh: &Shared) -> Result<BTreeSet<String>> {
    Ok(
        crate::state::get::<AssignedRecord>(sh.store.as_ref(), &keys::assigned(&sh.config.name))
            .await?
            .map(|(r, _)| r.jobs)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_lists_each_hosts_jobs_and_load() {
        let rec = |job: &str, node: &str| {
            let mut r: PsRecord = serde_json::from_value(serde_json::json!({
                "job": job, "node": node, "container_id": "c", "image": "i",
                "image_id": "x", "command": [], "daemonize": true, "status": "running",
                "ports": [], "created_at": 0
            }))
            .expect("a ps record");
            r.node = node.to_string();
            (job.to_string(), r)
        };
        let ps: BTreeMap<String, PsRecord> = [rec("a", "n1"), rec("b", "n2"), rec("c", "n1")]
            .into_iter()
            .collect();
        let claims = HashMap::from([("n1".to_string(), (7, 5))]);
        let idx = index(&ps, &[], &claims, Reservation::default());
        assert_eq!(
            idx["n1"].jobs,
            BTreeSet::from(["a".to_string(), "c".to_string()])
        );
        assert_eq!((idx["n1"].load, idx["n1"].claims), (2, 5));
        assert_eq!(idx["n2"].jobs, BTreeSet::from(["b".to_string()]));
        assert_eq!((idx["n2"].load, idx["n2"].claims), (1, 0));
        assert_eq!(idx.len(), 2);
        // A host whose jobs are all gone: no load, its claims accounted.
        let claims = HashMap::from([("n1".to_string(), (7, 5)), ("n3".to_string(), (9, 4))]);
        let idx = index(&ps, &[], &claims, Reservation::default());
        assert_eq!((idx["n3"].load, idx["n3"].claims), (0, 4));
        assert!(idx["n3"].jobs.is_empty());
    }
}
