//! This server on its own machine: the data directory (mode 0700, since it
//! holds the token, the embedded store with every job's environment, and
//! the jobs' volumes) and the server's identity, a random id made once and
//! kept in `<data-dir>/server-id`.
//!
//! floki registers the name with the id: a server that restarts on the same
//! data directory takes its name back at once, and a second server with the
//! same name (another machine, a cloned image without its data directory)
//! is refused while the first is alive.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// The id file's name inside the data directory.
pub const SERVER_ID_FILE: &str = "server-id";

/// Make the data directory if needed and make it private to its owner
/// (0700), whatever mode it had.
pub fn data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading the data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making the data directory {} private", dir.display()))?;
        tracing::info!(
            "data directory {} was mode {:o}; now 0700",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// The cluster id file's name inside the data directory.
pub const CLUSTER_ID_FILE: &str = "cluster-id";

/// The id of the cluster this server belongs to, if it ever joined one.
pub fn cluster_id(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Remember the cluster this server belongs to.
pub fn save_cluster_id(dir: &Path, id: &str) -> anyhow::Result<()> {
    write_private(dir, CLUSTER_ID_FILE, id)
}

/// A new random id: 32 hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `name` in `dir` (mode 0600), replacing it atomically (the token,
/// the server id, the cluster id).
pub(crate) fn write_private(dir: &Path, name: &str, value: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(value.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Read this server's id, or make one (mode 0600) at first start.
pub fn server_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(SERVER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = new_id();
    write_private(dir, SERVER_ID_FILE, &id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_becomes_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        data_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_server_id_is_made_once() {
        let d = tempfile::tempdir().unwrap();
        let a = server_id(d.path()).unwrap();
        let b = server_id(d.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, server_id(other.path()).unwrap());
    }
}
