//! This host's volume directories, `<data-dir>/volumes/<job>/<container
//! path>` ([`viking_docker::volume_host_path`]): made, checked and removed
//! without following a symbolic link anywhere below `<data-dir>/volumes`.
//!
//! A job writes into its volumes, so it can plant a symlink there; if viking
//! followed one while making or binding a later volume, the job would get
//! any directory of the host (issue 14, C2). So every directory below the
//! volume root is opened one component at a time, relative to its parent's
//! descriptor, with `O_NOFOLLOW | O_DIRECTORY`; a missing one is made with
//! `mkdirat`, mode 0700. A symlink, or anything not a directory, on the way
//! is refused with [`VolumeProblem::Symlink`] /
//! [`VolumeProblem::NotADirectory`], naming the volume. The data directory
//! itself is the administrator's and is opened normally (it may be a link).
//!
//! What remains: Docker resolves the bind's source path again when it
//! mounts it. Between this check and that mount no container of the job
//! runs on this host (a job has one container here, and a push stops the old
//! one before it creates the new), and no volume may be nested in another
//! (refused when the job is parsed), so no container can write to a path a
//! bind goes through: nothing can swap a checked directory for a link.
//!
//! The volume root and the job's directory are kept at mode 0700 (made so,
//! or narrowed when found wider).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Result, ServerError};

/// What is wrong with a directory on a volume's way.
#[derive(Debug, thiserror::Error)]
pub enum VolumeProblem {
    /// A symbolic link where viking needs a directory of its own.
    #[error(
        "is a symbolic link; viking follows none below the volumes directory \
         (a job may have planted it in its data), so it refuses the volume \
         until the link is removed"
    )]
    Symlink,
    /// A file (or device, socket...) where viking needs a directory.
    #[error("is not a directory")]
    NotADirectory,
    /// The filesystem refused an operation.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `O_NOFOLLOW` opens of one directory at a time.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Mode of every directory viking makes below the data directory.
const PRIVATE: u32 = 0o700;

/// A failure at `path` while preparing `volume` of `job`.
struct Fault {
    path: PathBuf,
    problem: VolumeProblem,
}

fn fault(path: &Path, problem: impl Into<VolumeProblem>) -> Fault {
    Fault {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io(e: Errno) -> VolumeProblem {
    VolumeProblem::Io(e.into())
}

/// Open directory `name` in `parent` (whose path is `path`) without
/// following a link; make it (mode 0700) first when `create` and it is
/// missing. `Ok(None)`: missing and not made.
fn step(parent: &OwnedFd, path: &Path, name: &str, create: bool) -> Result<Option<OwnedFd>, Fault> {
    let here = path.join(name);
    // A rival may make or remove it in between: a few tries settle it.
    for _ in 0..4 {
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(parent, name, PRIVATE.into()) {
                    Ok(()) | Err(Errno::EXIST) => continue,
                    Err(e) => return Err(fault(&here, io(e))),
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW on a link gives ELOOP, O_DIRECTORY on a file
            // ENOTDIR; ask the entry itself which it is.
            Err(e) => {
                return match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => Err(fault(&here, VolumeProblem::Symlink)),
                        FileType::Directory => Err(fault(&here, io(e))),
                        _ => Err(fault(&here, VolumeProblem::NotADirectory)),
                    },
                    Err(Errno::NOENT) => continue,
                    Err(se) => Err(fault(&here, io(se))),
                }
            }
        }
    }
    Err(fault(
        &here,
        VolumeProblem::Io(std::io::Error::other(
            "it kept appearing and disappearing while viking opened it",
        )),
    ))
}

/// Narrow an open directory of viking's own to mode 0700.
fn keep_private(dir: &OwnedFd, path: &Path) -> Result<(), Fault> {
    let st = rustix::fs::fstat(dir).map_err(|e| fault(path, io(e)))?;
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(dir, PRIVATE.into()).map_err(|e| fault(path, io(e)))?;
    }
    Ok(())
}

/// The components of a volume's container path (validated absolute, without
/// `.` or `..`, by the job model; checked again here).
fn components(volume: &str) -> Result<Vec<&str>, VolumeProblem> {
    let parts: Vec<&str> = volume.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(VolumeProblem::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a volume must be an absolute container path without '.' or '..'",
        )));
    }
    Ok(parts)
}

/// The volume root, opened (and made when `create`); `None` when missing.
/// The data directory itself is the server's (made 0700 at start).
fn open_root(data_dir: &Path, create: bool) -> Result<Option<(OwnedFd, PathBuf)>, Fault> {
    let data = match rustix::fs::open(
        data_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if !create => return Ok(None),
        Err(e) => return Err(fault(data_dir, io(e))),
    };
    let Some(root) = step(&data, data_dir, "volumes", create)? else {
        return Ok(None);
    };
    let path = data_dir.join("volumes");
    keep_private(&root, &path)?;
    Ok(Some((root, path)))
}

/// Make (if missing) and check the host directory of `volume` of `job`:
/// every directory from the volume root down is a real directory, none a
/// link. Its path, to bind: [`viking_docker::volume_host_path`].
pub fn prepare(data_dir: &Path, job: &str, volume: &str) -> Result<PathBuf> {
    prepare_at(data_dir, job, volume).map_err(|f| ServerError::Volume {
        job: job.to_string(),
        volume: volume.to_string(),
        path: f.path,
        problem: f.problem,
    })
}

fn prepare_at(data_dir: &Path, job: &str, volume: &str) -> Result<PathBuf, Fault> {
    let expected = viking_docker::volume_host_path(data_dir, job, volume);
    let parts = components(volume).map_err(|p| fault(&expected, p))?;
    let (root, root_path) = open_root(data_dir, true)?.ok_or_else(|| {
        fault(
            &data_dir.join("volumes"),
            VolumeProblem::Io(std::io::Error::from(std::io::ErrorKind::NotFound)),
        )
    })?;
    let mut path = root_path.join(job);
    let mut dir = step(&root, &root_path, job, true)?.ok_or_else(|| {
        fault(
            &path,
            VolumeProblem::Io(std::io::ErrorKind::NotFound.into()),
        )
    })?;
    keep_private(&dir, &path)?;
    for part in parts {
        let next = step(&dir, &path, part, true)?;
        path.push(part);
        dir = next.ok_or_else(|| {
            fault(
                &path,
                VolumeProblem::Io(std::io::ErrorKind::NotFound.into()),
            )
        })?;
    }
    debug_assert_eq!(path, expected);
    Ok(path)
}

/// Remove every volume of `job` on this host, `<data-dir>/volumes/<job>`,
/// without following a link: the volume root is checked to be a real
/// directory, a link at the job's own entry is removed as a link, and the
/// tree below is removed by `std::fs::remove_dir_all`, which follows no
/// link inside it. Whether there was anything to remove.
pub fn remove_job(data_dir: &Path, job: &str) -> Result<bool> {
    remove_job_at(data_dir, job).map_err(|f| ServerError::Volume {
        job: job.to_string(),
        volume: "(all)".to_string(),
        path: f.path,
        problem: f.problem,
    })
}

fn remove_job_at(data_dir: &Path, job: &str) -> Result<bool, Fault> {
    let Some((root, root_path)) = open_root(data_dir, false)? else {
        return Ok(false);
    };
    let path = root_path.join(job);
    if job.is_empty() || job.contains('/') || job == "." || job == ".." {
        return Err(fault(
            &path,
            VolumeProblem::Io(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        ));
    }
    match rustix::fs::statat(&root, job, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(fault(&path, io(e))),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            std::fs::remove_dir_all(&path).map_err(|e| fault(&path, e))?;
            Ok(true)
        }
        // Viking made no such thing: remove the entry itself, never what
        // it points at.
        Ok(_) => {
            rustix::fs::unlinkat(&root, job, AtFlags::empty()).map_err(|e| fault(&path, io(e)))?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn problem(r: Result<PathBuf>) -> (PathBuf, VolumeProblem) {
        match r {
            Err(ServerError::Volume { path, problem, .. }) => (path, problem),
            other => panic!("expected a volume error, got {other:?}"),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn makes_the_volume_and_every_directory_private() {
        let d = tempfile::tempdir().unwrap();
        let p = prepare(d.path(), "db", "/var/lib/data").unwrap();
        assert_eq!(p, d.path().join("volumes/db/var/lib/data"));
        assert!(p.is_dir());
        for dir in [
            "volumes",
            "volumes/db",
            "volumes/db/var",
            "volumes/db/var/lib",
            "volumes/db/var/lib/data",
        ] {
            assert_eq!(mode(&d.path().join(dir)), 0o700, "{dir}");
        }
        // Again: it exists, and is the same.
        assert_eq!(prepare(d.path(), "db", "/var/lib/data").unwrap(), p);
    }

    #[test]
    fn a_wide_volume_root_is_narrowed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("volumes/db")).unwrap();
        for dir in ["volumes", "volumes/db"] {
            std::fs::set_permissions(d.path().join(dir), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        prepare(d.path(), "db", "/data").unwrap();
        assert_eq!(mode(&d.path().join("volumes")), 0o700);
        assert_eq!(mode(&d.path().join("volumes/db")), 0o700);
    }

    #[test]
    fn a_symlink_at_the_end_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        prepare(d.path(), "esc", "/data").unwrap();
        let link = d.path().join("volumes/esc/data/hostetc");
        symlink(outside.path(), &link).unwrap();
        let (path, p) = problem(prepare(d.path(), "esc", "/data/hostetc"));
        assert_eq!(path, link);
        assert!(matches!(p, VolumeProblem::Symlink), "{p:?}");
        // Nothing was made through it.
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_in_the_middle_is_refused_and_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        prepare(d.path(), "esc", "/data").unwrap();
        let link = d.path().join("volumes/esc/data/x");
        symlink(outside.path(), &link).unwrap();
        let (path, p) = problem(prepare(d.path(), "esc", "/data/x/y/z"));
        assert_eq!(path, link);
        assert!(matches!(p, VolumeProblem::Symlink), "{p:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_at_the_jobs_directory_or_the_root_is_refused() {
        // The job's own directory pointing at another job's volumes.
        let d = tempfile::tempdir().unwrap();
        prepare(d.path(), "victim", "/data").unwrap();
        symlink(
            d.path().join("volumes/victim"),
            d.path().join("volumes/thief"),
        )
        .unwrap();
        let (path, p) = problem(prepare(d.path(), "thief", "/data"));
        assert_eq!(path, d.path().join("volumes/thief"));
        assert!(matches!(p, VolumeProblem::Symlink), "{p:?}");
        // The volume root itself.
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), d.path().join("volumes")).unwrap();
        let (path, p) = problem(prepare(d.path(), "db", "/data"));
        assert_eq!(path, d.path().join("volumes"));
        assert!(matches!(p, VolumeProblem::Symlink), "{p:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let d = tempfile::tempdir().unwrap();
        prepare(d.path(), "j", "/data").unwrap();
        std::fs::write(d.path().join("volumes/j/data/f"), b"x").unwrap();
        let (_, p) = problem(prepare(d.path(), "j", "/data/f"));
        assert!(matches!(p, VolumeProblem::NotADirectory), "{p:?}");
    }

    #[test]
    fn dot_dot_never_reaches_the_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let (_, p) = problem(prepare(d.path(), "j", "/data/../../etc"));
        assert!(matches!(p, VolumeProblem::Io(_)), "{p:?}");
        assert!(!d.path().join("volumes/j").exists());
    }

    #[test]
    fn removing_a_jobs_volumes_follows_no_link() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let data = prepare(d.path(), "db", "/data").unwrap();
        std::fs::write(data.join("file"), b"x").unwrap();
        symlink(outside.path(), data.join("link")).unwrap();
        assert!(remove_job(d.path(), "db").unwrap());
        assert!(!d.path().join("volumes/db").exists());
        assert!(outside.path().join("keep").exists());
        assert!(!remove_job(d.path(), "db").unwrap(), "nothing left");
        // A link at the job's entry goes, its target stays.
        symlink(outside.path(), d.path().join("volumes/other")).unwrap();
        assert!(remove_job(d.path(), "other").unwrap());
        assert!(outside.path().join("keep").exists());
        // No volume root at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(!remove_job(empty.path(), "db").unwrap());
    }
}
