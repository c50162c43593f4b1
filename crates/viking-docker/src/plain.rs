//! Containers that are not jobs: the mesh's etcd member, which `viking mesh`
//! runs with a restart policy of Docker's own, on the host's network.
//!
//! They carry [`LABEL_MESH`] (its value says what the container is) and
//! never [`crate::LABEL_JOB`], so the job side of this crate (list, events,
//! the agent) never sees them. Every function here acts only on a container
//! that carries [`LABEL_MESH`]: a container of the same name made by anyone
//! else is refused with [`RuntimeError::NotFound`], as the job side refuses
//! containers it did not make. A container is named by its name or id;
//! once found, it is acted on by its full id, so a name taken over in
//! between is never touched.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::container::{
    Config, CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as BollardError;
use bollard::models::{HostConfig, RestartPolicy, RestartPolicyNameEnum};

use crate::docker::{err, is_status};
use crate::{DockerRuntime, Result, RuntimeError};

/// The label that marks a container `viking mesh` made; its value is the
/// container's role (`etcd`).
pub const LABEL_MESH: &str = "viking.mesh";

/// The engine the `docker` CLI talks to when `DOCKER_HOST` is not set.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// What Docker does when a plain container's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Nothing: it stays exited.
    No,
    /// Start it again, and at the engine's start, unless it was stopped
    /// (`--restart unless-stopped`).
    UnlessStopped,
}

/// A container that is not a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainSpec {
    /// The Docker container name.
    pub name: String,
    /// The value of [`LABEL_MESH`]: what the container is (`etcd`).
    pub role: String,
    pub image: String,
    /// The command (the image's entrypoint is kept).
    pub command: Vec<String>,
    /// Share the host's network (`--network host`) instead of the bridge.
    pub host_network: bool,
    pub restart: Restart,
    /// (host path, container path) bind mounts.
    pub binds: Vec<(PathBuf, String)>,
}

/// A plain container as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainInfo {
    pub id: String,
    /// The value of [`LABEL_MESH`].
    pub role: String,
    pub image: String,
    /// created, running, restarting, exited, ...
    pub status: String,
    /// How many times Docker restarted it under its restart policy.
    pub restart_count: i64,
}

/// What a name or id refers to on the engine.
enum Found {
    Nothing,
    Ours(PlainInfo),
    /// A container that does not carry [`LABEL_MESH`].
    Foreign,
}

fn refused(r: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("{r} (it exists, but viking mesh did not make it)"))
}

impl DockerRuntime {
    async fn find_plain(&self, r: &str) -> Result<Found> {
        let c = match self
            .docker
            .inspect_container(r, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if is_status(&e, 404) => return Ok(Found::Nothing),
            Err(e) => return Err(err(e)),
        };
        let config = c.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let Some(role) = labels.get(LABEL_MESH) else {
            return Ok(Found::Foreign);
        };
        Ok(Found::Ours(PlainInfo {
            id: c.id.unwrap_or_default(),
            role: role.clone(),
            image: config.image.unwrap_or_default(),
            status: c
                .state
                .and_then(|s| s.status)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_string()),
            restart_count: c.restart_count.unwrap_or(0),
        }))
    }

    /// Create (not start) a plain container; its id. A taken name is
    /// [`RuntimeError::Conflict`], an image the engine does not have
    /// [`RuntimeError::Image`] (create does not pull: see
    /// [`crate::pull_quietly`]).
    pub async fn create_plain(&self, spec: &PlainSpec) -> Result<String> {
        let binds = spec
            .binds
            .iter()
            .map(|(h, c)| format!("{}:{}", h.display(), c))
            .collect::<Vec<_>>();
        let restart = match spec.restart {
            Restart::No => RestartPolicyNameEnum::NO,
            Restart::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let config = Config {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            labels: Some(HashMap::from([(LABEL_MESH.to_string(), spec.role.clone())])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: spec.host_network.then(|| "host".to_string()),
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: spec.name.clone(),
            platform: None,
        };
        let r = self
            .docker
            .create_container(Some(opts), config)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => RuntimeError::Image {
                    image: spec.image.clone(),
                    reason: message,
                },
                other => err(other),
            })?;
        Ok(r.id)
    }

    /// The plain container named (or with id) `r`; `None` when there is
    /// none, or when the one there is not a plain container.
    pub async fn inspect_plain(&self, r: &str) -> Result<Option<PlainInfo>> {
        match self.find_plain(r).await? {
            Found::Ours(info) => Ok(Some(info)),
            Found::Nothing | Found::Foreign => Ok(None),
        }
    }

    /// Start plain container `r` (starting a running one succeeds).
    pub async fn start_plain(&self, r: &str) -> Result<()> {
        let id = match self.find_plain(r).await? {
            Found::Ours(info) => info.id,
            Found::Nothing => return Err(RuntimeError::NotFound(r.to_string())),
            Found::Foreign => return Err(refused(r)),
        };
        match self
            .docker
            .start_container(&id, None::<StartContainerOptions<String>>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Stop plain container `r` (SIGTERM, SIGKILL after `timeout_secs`);
    /// stopping a stopped or absent one succeeds. Its restart policy does
    /// not start it again until it is started.
    pub async fn stop_plain(&self, r: &str, timeout_secs: i64) -> Result<()> {
        let id = match self.find_plain(r).await? {
            Found::Ours(info) => info.id,
            Found::Nothing => return Ok(()),
            Found::Foreign => return Err(refused(r)),
        };
        match self
            .docker
            .stop_container(&id, Some(StopContainerOptions { t: timeout_secs }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// Remove plain container `r`, running or not (`docker rm -f`);
    /// removing an absent one succeeds.
    pub async fn remove_plain(&self, r: &str) -> Result<()> {
        let id = match self.find_plain(r).await? {
            Found::Ours(info) => info.id,
            Found::Nothing => return Ok(()),
            Found::Foreign => return Err(refused(r)),
        };
        let opts = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.docker.remove_container(&id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    //! On the machine's real engine, with the image that
    //! scripts/test-images.sh builds.
    use super::*;
    use crate::{ContainerSpec, Runtime};

    const IMAGE: &str = "viking-test/busybox";

    async fn engine() -> DockerRuntime {
        DockerRuntime::connect(DEFAULT_ENDPOINT)
            .await
            .expect("docker engine")
    }

    fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{prefix}-{}-{nanos}", std::process::id())
    }

    fn spec(name: &str) -> PlainSpec {
        PlainSpec {
            name: name.to_string(),
            role: "test".to_string(),
            image: IMAGE.to_string(),
            command: vec!["sleep".into(), "60".into()],
            host_network: true,
            restart: Restart::UnlessStopped,
            binds: vec![(std::env::temp_dir(), "/host-tmp".to_string())],
        }
    }

    #[tokio::test]
    async fn a_plain_container_is_created_started_stopped_and_removed() {
        let rt = engine().await;
        let name = unique("viking-plain");
        assert_eq!(rt.inspect_plain(&name).await.unwrap(), None);
        let id = rt.create_plain(&spec(&name)).await.unwrap();
        // A second one of the same name is a conflict.
        let second = rt.create_plain(&spec(&name)).await;
        assert!(
            matches!(second, Err(RuntimeError::Conflict(_))),
            "{second:?}"
        );
        rt.start_plain(&name).await.unwrap();
        rt.start_plain(&name).await.unwrap();
        let info = rt.inspect_plain(&name).await.unwrap().expect("created");
        assert_eq!(
            (info.id.as_str(), info.role.as_str(), info.status.as_str()),
            (id.as_str(), "test", "running")
        );
        let raw = rt.docker.inspect_container(&id, None).await.unwrap();
        let host = raw.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(
            host.restart_policy.and_then(|p| p.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(
            host.binds.unwrap_or_default(),
            [format!("{}:/host-tmp", std::env::temp_dir().display())]
        );
        // Not a job: the job side does not see it.
        assert_eq!(rt.inspect(&id).await.unwrap(), None);
        rt.stop_plain(&name, 1).await.unwrap();
        let stopped = rt.inspect_plain(&name).await.unwrap().expect("stopped");
        assert_eq!(stopped.status, "exited");
        rt.remove_plain(&name).await.unwrap();
        assert_eq!(rt.inspect_plain(&name).await.unwrap(), None);
        // Idempotent where Docker's CLI users expect it.
        rt.stop_plain(&name, 1).await.unwrap();
        rt.remove_plain(&name).await.unwrap();
        assert!(matches!(
            rt.start_plain(&name).await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_container_mesh_did_not_make_is_refused() {
        let rt = engine().await;
        let name = unique("not-plain");
        // A job container (no mesh label) stands for anyone else's.
        let doc = serde_json::json!({ "name": name, "image": IMAGE, "command": ["sleep", "60"] });
        let job = viking_core::Job::parse(doc.to_string().as_bytes(), String::new).unwrap();
        let cs = ContainerSpec::for_job(
            &job,
            "test-node",
            "/viking-plain-test",
            std::path::Path::new("/tmp/viking-plain-test"),
        );
        let id = rt.create(&cs).await.unwrap();
        rt.start(&id).await.unwrap();
        let results = [
            rt.stop_plain(&name, 1).await,
            rt.remove_plain(&name).await,
            rt.start_plain(&id).await,
        ];
        let inspected = rt.inspect_plain(&name).await;
        let still = rt.inspect(&id).await;
        rt.remove(&id, true).await.unwrap();
        for r in results {
            assert!(matches!(r, Err(RuntimeError::NotFound(_))), "{r:?}");
        }
        assert_eq!(inspected.unwrap(), None);
        assert_eq!(still.unwrap().map(|c| c.status).as_deref(), Some("running"));
    }
}
