//! `viking mesh defrag`: defragment etcd's members, one at a time.
//!
//! Compaction (the leader's, and etcd's auto-compaction) frees the pages
//! of old revisions inside etcd's database file, but the file keeps its
//! size: etcd's backend quota counts the file. Defragmentation rewrites it
//! without the free pages. A member answers nothing while it defragments,
//! so members are done one after the other, each only once the one before
//! is healthy again; the cluster keeps its quorum throughout. Each
//! member's database size before and after is printed, and any alarm
//! still raised (NOSPACE) with what to do about it.

use std::path::Path;
use std::time::Duration;

use viking_cli::table;

use crate::state::DataDir;
use crate::status::{endpoints_of, size};
use crate::{MeshError, Result};

/// How long a defragmented member may take to be healthy again.
const HEALTHY_AGAIN: Duration = Duration::from_secs(30);

/// `viking mesh defrag`.
pub async fn defrag(data_dir: &Path) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let members = dd.members(endpoints_of(&st))?.list().await?;
    let mut rows = Vec::new();
    for m in members {
        let Some(url) = m.client_urls.first() else {
            rows.push(vec![m.name, "-".into(), "-".into(), "not started".into()]);
            continue;
        };
        let one = dd.members(vec![url.clone()])?;
        let before = one.status().await?;
        one.defragment()
            .await
            .map_err(|e| MeshError::Etcd(format!("defragmenting {} ({url}): {e}", m.name)))?;
        // The next member only once this one serves again.
        let deadline = tokio::time::Instant::now() + HEALTHY_AGAIN;
        let after = loop {
            match one.status().await {
                Ok(s) if s.is_healthy() => break s,
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(MeshError::Etcd(format!(
                        "{} ({url}) is not healthy {HEALTHY_AGAIN:?} after its defragmentation; \
                         the other members were not touched",
                        m.name
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        rows.push(vec![
            m.name,
            size(before.db_size),
            size(after.db_size),
            "defragmented".into(),
        ]);
    }
    print!(
        "{}",
        table::render(&["ETCD MEMBER", "BEFORE", "AFTER", "STATUS"], &rows)
    );
    let alarms = dd.members(endpoints_of(&st))?.alarms().await?;
    if !alarms.is_empty() {
        println!(
            "etcd still raises alarms: {}. Once every member is below its quota, \
             `etcdctl alarm disarm` lets writes in again.",
            alarms.join(", ")
        );
    }
    Ok(())
}
