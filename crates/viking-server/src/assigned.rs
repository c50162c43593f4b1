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

use std::collections::{BTreeMap, BTreeSet};

use viking_core::keys;
use viking_core::records::{decode, encode, AssignedRecord, PsRecord};
use viking_store::Op;

use crate::error::Result;
use crate::Shared;

/// The index from viking-ps: host → its jobs.
pub fn index(ps: &BTreeMap<String, PsRecord>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (job, rec) in ps {
        out.entry(rec.node.clone()).or_default().insert(job.clone());
    }
    out
}

/// The leader's part: write `assigned/<host>` for every host whose jobs
/// changed since `published` (what this leader wrote last; read from the
/// store when `None`), and delete the keys of hosts with no job left.
pub async fn publish(
    sh: &Shared,
    ps: &BTreeMap<String, PsRecord>,
    published: &mut Option<BTreeMap<String, BTreeSet<String>>>,
) -> Result<()> {
    let want = index(ps);
    let have = match published.take() {
        Some(h) => h,
        None => {
            let (kvs, _) = sh.store.list(keys::ASSIGNED).await?;
            kvs.iter()
                .filter_map(|kv| {
                    let r = decode::<AssignedRecord>(&kv.value).ok()?;
                    Some((r.host, r.jobs))
                })
                .collect()
        }
    };
    let mut now = have.clone();
    for (host, jobs) in &want {
        if have.get(host) != Some(jobs) {
            let rec = AssignedRecord {
                host: host.clone(),
                jobs: jobs.clone(),
            };
            let ops = vec![Op::Put {
                key: keys::assigned(host),
                value: encode(&rec)?,
                lease: None,
            }];
            sh.store.txn(vec![], ops, vec![]).await?;
            now.insert(host.clone(), jobs.clone());
        }
    }
    for host in have.keys().filter(|h| !want.contains_key(*h)) {
        let ops = vec![Op::Delete {
            key: keys::assigned(host),
        }];
        sh.store.txn(vec![], ops, vec![]).await?;
        now.remove(host);
    }
    *published = Some(now);
    Ok(())
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
    fn the_index_lists_each_hosts_jobs() {
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
        let idx = index(&ps);
        assert_eq!(
            idx["n1"],
            BTreeSet::from(["a".to_string(), "c".to_string()])
        );
        assert_eq!(idx["n2"], BTreeSet::from(["b".to_string()]));
        assert_eq!(idx.len(), 2);
    }
}
