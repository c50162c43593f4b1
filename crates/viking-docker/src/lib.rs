//! The container runtime: viking's only door to a Docker engine.
//!
//! [`Runtime`] is the seam between viking and the engine that runs its
//! containers; [`DockerRuntime`] implements it on the Docker API through
//! `bollard`, over the local unix socket only (Docker engines are never
//! reached over the network). [`ContainerSpec::for_job`] turns a job into
//! the container to create, with viking's labels and the job's volumes
//! inside the data directory.
//!
//! Architecture invariant: this crate is the only one that knows Docker, and
//! it only ever lists, changes or removes containers that carry the
//! [`LABEL_JOB`] label, or [`LABEL_MESH`] for the mesh's own containers
//! ([`plain`]): viking never touches containers it did not create.
//! [`Runtime::list`] and [`Runtime::events_for`] take the cluster and report
//! only that cluster's containers, so two clusters on one engine stay apart.
//!
//! `fake::FakeRuntime` implements [`Runtime`] in memory, for tests of the
//! code above this seam; [`hollow`] sets one up as a scale test's engine
//! (`viking server --runtime hollow`).

#![forbid(unsafe_code)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::AsyncWrite;
use viking_core::records::PublishedPort;
use viking_core::Job;

mod docker;
pub mod fake;
pub mod hollow;
pub mod owned;
pub mod plain;

pub use docker::DockerRuntime;
pub use owned::{Labelled, OwnedRuntime};
pub use plain::{PlainInfo, PlainSpec, Restart, LABEL_MESH};

/// The label that marks a container as viking's; its value is the job name.
pub const LABEL_JOB: &str = "viking.job";
/// The server (floki name) that created the container.
pub const LABEL_NODE: &str = "viking.node";
/// `true` for a daemonized job's container.
pub const LABEL_DAEMONIZE: &str = "viking.daemonize";
/// The cluster's key prefix, so two clusters on one engine stay apart.
pub const LABEL_CLUSTER: &str = "viking.cluster";
/// What the container carries of its job (`viking_core::records::SpecLabel`,
/// as a versioned record): the fleet can rebuild viking-proc from its
/// containers (`viking recover`).
pub const LABEL_SPEC: &str = "viking.spec";

/// Errors from the container runtime, classified by the engine's status
/// code (never by its message text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine answered 404: no such container (or network).
    #[error("no such container: {0}")]
    NotFound(String),
    /// The engine answered 409: the name is taken by another container, or
    /// the container is in a state that forbids the change (e.g. removing a
    /// running container without force).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("image {image:?} is not available: {reason}")]
    Image { image: String, reason: String },
    #[error("docker: {0}")]
    Docker(String),
    #[error("docker engine unreachable at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
}

impl RuntimeError {
    /// The exit code `docker run` gives a container that could not start:
    /// 127 when its command is not found, 126 when it cannot be executed,
    /// 125 otherwise. Docker says which only in its message (both come back
    /// with the same status), so the text is read here, at the one crate
    /// that knows Docker.
    pub fn start_exit_code(&self) -> i64 {
        let message = self.to_string();
        if message.contains("executable file not found")
            || message.contains("no such file or directory")
        {
            127
        } else if message.contains("permission denied") {
            126
        } else {
            125
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What a container to create looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The Docker container name: [`container_name`] of the job's name.
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub env: Vec<String>,
    pub ports: Vec<viking_core::PortSpec>,
    /// (host path, container path) bind mounts.
    pub binds: Vec<(PathBuf, String)>,
    pub labels: HashMap<String, String>,
    /// Keep stdin open and attach to it (an interactive job).
    pub interactive: bool,
    pub tty: bool,
    /// The most processes the container may have (Docker's `PidsLimit`);
    /// `None`: the engine's default (unlimited).
    pub pids_limit: Option<u64>,
    /// The memory limit in bytes (Docker's `Memory`); `None`: none.
    pub memory: Option<u64>,
    /// The CPU limit in thousandths of a CPU (Docker's `NanoCpus` /
    /// 1,000,000); `None`: none.
    pub cpus: Option<u64>,
    /// Rotation of the container's json-file log; `None`: the engine's
    /// default driver and settings.
    pub log: Option<LogRotation>,
}

/// Docker's json-file log rotation: a file is rotated at `max_size` and
/// at most `max_files` are kept, so a chatty job cannot fill the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRotation {
    /// Docker's `max-size`: a number with an optional unit, `10m`.
    pub max_size: String,
    /// Docker's `max-file`.
    pub max_files: u32,
}

impl ContainerSpec {
    /// The container for `job` on server `node`, whose volumes live under
    /// `<data_dir>/volumes/<job>/<path>`.
    pub fn for_job(job: &Job, node: &str, cluster: &str, data_dir: &Path) -> Self {
        let binds = job
            .volumes
            .iter()
            .map(|v| (volume_host_path(data_dir, &job.name, v), v.clone()))
            .collect();
        let labels = HashMap::from([
            (LABEL_JOB.to_string(), job.name.clone()),
            (LABEL_NODE.to_string(), node.to_string()),
            (LABEL_DAEMONIZE.to_string(), job.daemonize.to_string()),
            (LABEL_CLUSTER.to_string(), cluster.to_string()),
        ]);
        let mut labels = labels;
        let carried = viking_core::records::SpecLabel {
            job: job.clone(),
            ambassador: Default::default(),
        };
        if let Ok(doc) = viking_core::records::encode(&carried) {
            labels.insert(
                LABEL_SPEC.to_string(),
                String::from_utf8_lossy(&doc).into_owned(),
            );
        }
        ContainerSpec {
            name: container_name(&job.name),
            image: job.image.clone(),
            command: job.command.clone(),
            entrypoint: job.entrypoint.clone(),
            workdir: job.workdir.clone(),
            env: job.env_list(),
            ports: job.ports.clone(),
            binds,
            labels,
            interactive: !job.daemonize,
            tty: job.tty,
            pids_limit: job.pids_limit,
            memory: job.memory,
            cpus: job.cpus,
            log: None,
        }
    }
}

/// What [`container_name`] appends to a one-character job name. Docker's
/// names need two characters (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`) while viking's
/// job names may have one; every character Docker allows is also allowed in
/// a job name, so the only names no job can have are the ones longer than
/// [`viking_core::job::MAX_NAME_LEN`]: the suffix makes the name that long.
/// `docker ps` shows it, so it says why it is there.
pub const SHORT_NAME_SUFFIX: &str = concat!(
    ".viking-one-character-job",
    "--docker-container-names-need-two-characters",
    "--this-suffix-makes-the-name-longer-than-any-job-name",
    "--so-it-is-nobody-elses",
);
const _: () = assert!(SHORT_NAME_SUFFIX.len() >= viking_core::job::MAX_NAME_LEN);

/// The Docker container name of job `job`, for every name viking accepts:
/// the job's name itself when Docker accepts it (two characters or more),
/// else the name with [`SHORT_NAME_SUFFIX`]. Stable, and distinct for
/// distinct jobs: a suffixed name is longer than any job name.
pub fn container_name(job: &str) -> String {
    if job.len() >= 2 {
        job.to_string()
    } else {
        format!("{job}{SHORT_NAME_SUFFIX}")
    }
}

/// Whether Docker accepts `name` as a container name
/// (`/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`, Docker's `validContainerNamePattern`).
pub fn is_valid_container_name(name: &str) -> bool {
    let name = name.strip_prefix('/').unwrap_or(name);
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Where a job's volume lives on its host: always inside the data directory.
pub fn volume_host_path(data_dir: &Path, job: &str, container_path: &str) -> PathBuf {
    // The container path is validated absolute without `..` by the job
    // model; strip the leading '/' so `join` stays inside the directory.
    data_dir
        .join("volumes")
        .join(job)
        .join(container_path.trim_start_matches('/'))
}

/// The engine's capacity, for floki.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineInfo {
    pub cpus: u64,
    pub memory: u64,
}

/// One of viking's containers as Docker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub job: String,
    pub node: String,
    pub cluster: String,
    pub daemonize: bool,
    pub image: String,
    pub image_id: String,
    pub command: Vec<String>,
    /// created, running, exited, dead, ...
    pub status: String,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub ports: Vec<PublishedPort>,
    /// The container's own address on its network, while it runs: what a
    /// health check probes (a published port answers through Docker's
    /// proxy whether or not the container listens).
    pub ip: Option<String>,
    /// The job's document from the container's [`LABEL_SPEC`] label (absent
    /// on containers made before it existed).
    pub spec: Option<String>,
}

/// An image a host has (`docker images`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: i64,
}

/// A chunk of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Something happened to one of viking's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    pub job: String,
    /// Docker's action: start, die, destroy, ...
    pub action: String,
}

/// The streams of an attached container.
pub struct Attached {
    pub output: BoxStream<'static, Result<Output>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// The container runtime seam. Every operation is idempotent where Docker
/// allows it: starting a running container, stopping a stopped one and
/// removing a removed one succeed.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    async fn info(&self) -> Result<EngineInfo>;
    /// Whether the engine answers (cheap: for liveness checks).
    async fn ping(&self) -> Result<()>;
    /// The image's id if the engine has it.
    async fn image_id(&self, image: &str) -> Result<Option<String>>;
    /// Pull an image; each item is a line of progress.
    fn pull(&self, image: &str) -> BoxStream<'static, Result<String>>;
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;
    /// Attach to a created container's stdin, stdout and stderr. Call it
    /// before `start`: the stream then carries every byte the container
    /// writes, once, in order; output written before the attach is never
    /// replayed (a replay is how output once arrived twice).
    async fn attach(&self, id: &str) -> Result<Attached>;
    /// Runs `cmd` in running container `id` (`docker exec`), attached
    /// (stdin, stdout, stderr; one stream with `tty`): its streams, and the
    /// exec's id for [`Runtime::exec_exit_code`]. Not every runtime can.
    async fn exec(&self, id: &str, cmd: &[String], tty: bool) -> Result<(String, Attached)> {
        let _ = (cmd, tty);
        Err(RuntimeError::Docker(format!(
            "this runtime cannot run a command in container {id}"
        )))
    }
    /// The images this engine has.
    async fn images(&self) -> Result<Vec<ImageInfo>> {
        Ok(vec![])
    }
    /// The exit code of an exec once it has ended (`None` while it runs).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        Err(RuntimeError::NotFound(exec_id.to_string()))
    }
    async fn start(&self, id: &str) -> Result<()>;
    /// Wait until the container is not running; its exit code.
    async fn wait(&self, id: &str) -> Result<i64>;
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>>;
    async fn stop(&self, id: &str, timeout_secs: i64) -> Result<()>;
    async fn kill(&self, id: &str, signal: &str) -> Result<()>;
    /// Remove a container with its anonymous volumes (an image's `VOLUME`
    /// that no bind covers), as `docker run --rm` does: nothing else can
    /// ever use them again.
    async fn remove(&self, id: &str, force: bool) -> Result<()>;
    async fn rename(&self, id: &str, new_name: &str) -> Result<()>;
    /// The gateway address of Docker's default bridge: what containers on
    /// this host reach the host at.
    async fn bridge_gateway(&self) -> Result<Option<String>>;
    /// Every container labelled by viking for `cluster`, running or not.
    async fn list(&self, cluster: &str) -> Result<Vec<ContainerInfo>>;
    /// Whether host port `port` (`proto`) is taken on this engine's host:
    /// published by any running container, viking's or not, or held by a
    /// process. Checked before a job that publishes it is created, so a
    /// taken port is a typed error (the job goes to another host) rather
    /// than a failed start.
    async fn host_port_in_use(&self, port: u16, proto: viking_core::Proto) -> Result<bool>;
    /// Events of viking's containers labelled for `cluster`, from now on.
    fn events_for(&self, cluster: &str) -> BoxStream<'static, Result<ContainerEvent>>;
    /// Events of viking's containers of every cluster on this engine, from
    /// now on. Superseded by [`Runtime::events_for`], which holds the
    /// crate's invariant; kept until its callers have switched.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>>;
    fn logs(&self, id: &str, follow: bool) -> BoxStream<'static, Result<Output>>;
    /// The full id and labels of any container on the engine, whoever made
    /// it; `None` when there is none. For ownership checks only
    /// ([`OwnedRuntime`]): every other call sees viking's containers.
    async fn labels(&self, id: &str) -> Result<Option<Labelled>>;
    /// The memory container `id` (a full id) uses now, in bytes; `None`
    /// when unknown. A real engine's is read from the container's cgroup
    /// on this host ([`container_memory`]).
    fn memory_used(&self, id: &str) -> Option<u64> {
        container_memory(id)
    }
    /// The CPU time container `id` (a full id) has used since it started,
    /// in microseconds; `None` when unknown. A real engine's is read from
    /// the container's cgroup on this host ([`container_cpu`]).
    fn cpu_used(&self, id: &str) -> Option<u64> {
        container_cpu(id)
    }
}

/// The memory a running container uses now, in bytes, read from its cgroup
/// (cgroup v1 or v2, Docker's cgroupfs or systemd driver); `None` when its
/// cgroup is not found on this host.
pub fn container_memory(id: &str) -> Option<u64> {
    let candidates = [
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/docker/{id}/memory.current"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.usage_in_bytes"),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The CPU time a container has used since it started, in microseconds,
/// read from its cgroup (v2's `cpu.stat`, v1's `cpuacct.usage`); `None`
/// when its cgroup is not found on this host.
pub fn container_cpu(id: &str) -> Option<u64> {
    let v2 = [
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
    ];
    let from_v2 = v2
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
    if from_v2.is_some() {
        return from_v2;
    }
    let v1 = [
        format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage"),
    ];
    v1.iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|ns| ns / 1000)
}

/// Drain a pull's progress. On failure the error carries the last progress
/// line seen (it tells how far the pull got).
pub async fn pull_quietly(rt: &dyn Runtime, image: &str) -> Result<()> {
    let mut s = rt.pull(image);
    let mut last: Option<String> = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(line) => {
                if !line.trim().is_empty() {
                    last = Some(line);
                }
            }
            Err(RuntimeError::Image { image, reason }) => {
                let reason = match last {
                    Some(l) => format!("{reason} (last progress: {l})"),
                    None => reason,
                };
                return Err(RuntimeError::Image { image, reason });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_stay_inside_the_data_directory() {
        let p = volume_host_path(Path::new("/var/lib/viking"), "db", "/var/lib/data");
        assert_eq!(p, PathBuf::from("/var/lib/viking/volumes/db/var/lib/data"));
    }

    #[test]
    fn spec_for_job_labels_and_binds() {
        let job = Job::parse(
            br#"{"name":"db","image":"b","volumes":["/data"],"ports":["5432"]}"#,
            String::new,
        )
        .unwrap();
        let s = ContainerSpec::for_job(&job, "n1", "/viking", Path::new("/d"));
        assert_eq!(s.labels[LABEL_JOB], "db");
        assert_eq!(s.labels[LABEL_DAEMONIZE], "true");
        assert_eq!(
            s.binds,
            vec![(PathBuf::from("/d/volumes/db/data"), "/data".to_string())]
        );
        assert!(!s.interactive);
        assert_eq!(s.name, "db");
    }

    /// Docker's `validContainerNamePattern` (daemon/names), verbatim.
    fn docker_accepts(name: &str) -> bool {
        regex::Regex::new("^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
            .map(|re| re.is_match(name))
            .unwrap_or(false)
    }

    fn one_character_names() -> Vec<String> {
        ('a'..='z')
            .chain('A'..='Z')
            .chain('0'..='9')
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_one_character_job_gets_a_valid_container_name_no_job_can_have() {
        let names = one_character_names();
        let mut seen = std::collections::HashSet::new();
        for job in &names {
            viking_core::job::validate_name(job).unwrap();
            assert!(!docker_accepts(job), "docker takes {job:?} after all");
            let c = container_name(job);
            assert!(docker_accepts(&c), "{c:?}");
            assert!(is_valid_container_name(&c), "{c:?}");
            assert!(c.starts_with(job.as_str()), "{c:?}");
            // No job can be named like it, so it cannot collide.
            assert!(viking_core::job::validate_name(&c).is_err(), "{c:?}");
            assert_eq!(container_name(job), c, "stable");
            assert!(seen.insert(c), "two jobs share a container name");
        }
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn a_one_character_job_is_created_under_its_container_name() {
        let job = Job::parse(br#"{"name":"q","image":"b","volumes":["/v"]}"#, String::new).unwrap();
        let s = ContainerSpec::for_job(&job, "n1", "/viking", Path::new("/d"));
        assert_eq!(s.name, container_name("q"));
        assert_ne!(s.name, "q");
        // The job keeps its own name everywhere else.
        assert_eq!(s.labels[LABEL_JOB], "q");
        assert_eq!(s.binds[0].0, PathBuf::from("/d/volumes/q/v"));
    }

    #[test]
    fn valid_container_names_follow_dockers_pattern() {
        for (name, ok) in [
            ("a", false),
            ("ab", true),
            ("/ab", true),
            ("/a", false),
            ("_a", false),
            ("a_b.c-d", true),
            ("a b", false),
            ("", false),
            ("//ab", false),
        ] {
            assert_eq!(is_valid_container_name(name), ok, "{name:?}");
            assert_eq!(docker_accepts(name), ok, "{name:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_job_name_maps_to_a_docker_name(job in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}") {
            viking_core::job::validate_name(&job).unwrap();
            let c = container_name(&job);
            proptest::prop_assert!(docker_accepts(&c), "{:?}", c);
            proptest::prop_assert!(is_valid_container_name(&c));
            if docker_accepts(&job) {
                proptest::prop_assert_eq!(&c, &job);
            }
        }

        #[test]
        fn distinct_jobs_get_distinct_container_names(
            a in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,3}",
            b in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,3}",
        ) {
            proptest::prop_assert_eq!(a == b, container_name(&a) == container_name(&b));
        }

        #[test]
        fn our_check_agrees_with_dockers_regex(name in "/?[a-zA-Z0-9_. /-]{0,6}") {
            proptest::prop_assert_eq!(is_valid_container_name(&name), docker_accepts(&name));
        }
    }

    #[tokio::test]
    async fn a_failed_pull_says_how_far_it_got() {
        let rt = fake::FakeRuntime::new();
        rt.publish_image("img");
        rt.fail_next(
            fake::Op::Pull,
            "img",
            RuntimeError::Image {
                image: "img".to_string(),
                reason: "unexpected EOF".to_string(),
            },
        );
        match pull_quietly(&rt, "img").await {
            Err(RuntimeError::Image { image, reason }) => {
                assert_eq!(image, "img");
                assert!(reason.contains("unexpected EOF"), "{reason}");
                assert!(reason.contains("latest: Pulling from img"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        pull_quietly(&rt, "img").await.unwrap();
        match pull_quietly(&rt, "nothing").await {
            Err(RuntimeError::Image { reason, .. }) => {
                assert!(reason.contains("pull access denied"), "{reason}");
                assert!(!reason.contains("last progress"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
