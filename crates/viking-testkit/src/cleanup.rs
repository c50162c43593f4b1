//! Removing what crashed test runs left in Docker: everything labelled
//! `viking-test=1` whose owning test process is gone.

use crate::util::{host_docker, owner_alive, LABEL, OWNER_LABEL};
use anyhow::Result;

/// Removes containers, volumes and networks labelled `viking-test=1` whose
/// owning test process is gone (leftovers of crashed runs). Resources of tests
/// still running (in this or another process) are left alone.
pub fn cleanup_stale() -> Result<()> {
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let stale = |listing: String| -> Vec<String> {
        listing
            .lines()
            .filter_map(|l| {
                let (id, owner) = l.split_once(' ').unwrap_or((l, ""));
                (!id.is_empty() && !owner_alive(owner)).then(|| id.to_string())
            })
            .collect()
    };
    let filter = format!("label={LABEL}");
    let containers = stale(host_docker([
        "ps", "-a", "--filter", &filter, "--format", &fmt,
    ])?);
    if !containers.is_empty() {
        host_docker(
            ["rm", "-f", "-v"]
                .into_iter()
                .chain(containers.iter().map(|s| s.as_str())),
        )?;
    }
    let vfmt = fmt.replace(".ID", ".Name");
    let volumes = stale(host_docker([
        "volume", "ls", "--filter", &filter, "--format", &vfmt,
    ])?);
    if !volumes.is_empty() {
        host_docker(
            ["volume", "rm", "-f"]
                .into_iter()
                .chain(volumes.iter().map(|s| s.as_str())),
        )?;
    }
    let networks = stale(host_docker([
        "network", "ls", "--filter", &filter, "--format", &fmt,
    ])?);
    for n in networks {
        let _ = host_docker(["network", "rm", &n]);
    }
    Ok(())
}
