//! [`Runtime`] on a real Docker engine through `bollard`, over the local
//! unix socket.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::{
    AttachContainerOptions, Config, CreateContainerOptions, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogOutput, LogsOptions, RemoveContainerOptions,
    RenameContainerOptions, StartContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::errors::Error as BollardError;
use bollard::image::CreateImageOptions;
use bollard::models::{ContainerInspectResponse, HostConfig, HostConfigLogConfig, PortBinding};
use bollard::system::EventsOptions;
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;
use viking_core::records::PublishedPort;

use crate::{
    Attached, ContainerEvent, ContainerInfo, ContainerSpec, EngineInfo, Labelled, Output, Result,
    Runtime, RuntimeError, LABEL_CLUSTER, LABEL_DAEMONIZE, LABEL_JOB, LABEL_NODE, LABEL_SPEC,
};

/// How long a forced removal waits for another removal of the same
/// container to finish.
const REMOVE_PATIENCE: Duration = Duration::from_secs(30);

/// A Docker engine on a unix socket.
///
/// Its [`Runtime::events`] (every cluster) is superseded by
/// [`Runtime::events_for`], which reports only one cluster's containers.
#[derive(Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    endpoint: String,
}

impl DockerRuntime {
    /// Connect to the engine at `endpoint` (`unix:///var/run/docker.sock` or
    /// a socket path) and agree on an API version with it.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if !path.starts_with('/') {
            return Err(RuntimeError::Unreachable {
                endpoint: endpoint.to_string(),
                reason: "only a local unix socket is supported (unix:///path/to/docker.sock)"
                    .to_string(),
            });
        }
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        };
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self {
            docker,
            endpoint: endpoint.to_string(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The engine's state of container `id` (`running`, `removing`, ...),
    /// whoever made it; `None` when it does not exist.
    async fn container_status(&self, id: &str) -> Result<Option<String>> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(
                c.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Docker's events of containers that carry every label of `labels`
    /// (`key` or `key=value`), as viking's container events.
    fn container_events(
        &self,
        labels: Vec<String>,
        cluster: Option<String>,
    ) -> BoxStream<'static, Result<ContainerEvent>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            // The engine requires every label filter to match.
            ("label".to_string(), labels),
        ]);
        let opts = EventsOptions::<String> {
            filters,
            ..Default::default()
        };
        self.docker
            .events(Some(opts))
            .filter_map(move |e| {
                let cluster = cluster.clone();
                async move {
                    match e {
                        Ok(m) => {
                            let actor = m.actor?;
                            let attributes = actor.attributes.as_ref()?;
                            let job = attributes.get(LABEL_JOB)?.clone();
                            // The engine filtered already; this keeps the
                            // invariant even if a filter is ignored.
                            if let Some(c) = &cluster {
                                if attributes.get(LABEL_CLUSTER) != Some(c) {
                                    return None;
                                }
                            }
                            Some(Ok(ContainerEvent {
                                id: actor.id.unwrap_or_default(),
                                job,
                                action: m.action.unwrap_or_default(),
                            }))
                        }
                        Err(e) => Some(Err(err(e))),
                    }
                }
            })
            .boxed()
    }
}

/// The runtime error for a bollard error, by the engine's status code.
pub(crate) fn err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(message),
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Docker(message),
        other => RuntimeError::Docker(other.to_string()),
    }
}

pub(crate) fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn port_key(p: &viking_core::PortSpec) -> String {
    format!("{}/{}", p.container, p.proto.as_str())
}

fn output(o: LogOutput) -> Output {
    match o {
        LogOutput::StdErr { message } => Output::Stderr(message),
        LogOutput::StdOut { message }
        | LogOutput::Console { message }
        | LogOutput::StdIn { message } => Output::Stdout(message),
    }
}

/// Unix milliseconds from Docker's RFC 3339 timestamps
/// (`2026-11-25T19:00:52.123456789Z`); `None` for Docker's zero time
/// (`0001-01-01T00:00:00Z`, before the epoch) and for anything unreadable.
pub(crate) fn parse_time(s: &str) -> Option<u64> {
    let t: jiff::Timestamp = s.parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

fn info_from_inspect(c: ContainerInspectResponse) -> Option<ContainerInfo> {
    let config = c.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let job = labels.get(LABEL_JOB)?.clone();
    let state = c.state.unwrap_or_default();
    let mut ports = Vec::new();
    let network = c.network_settings.unwrap_or_default();
    let ip = network
        .ip_address
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| {
            network
                .networks
                .iter()
                .flatten()
                .find_map(|(_, n)| n.ip_address.clone().filter(|a| !a.is_empty()))
        });
    if let Some(map) = network.ports {
        for (key, bindings) in map {
            let (num, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
            let Ok(container) = num.parse::<u16>() else {
                continue;
            };
            for b in bindings.unwrap_or_default() {
                let host_port = b.host_port.as_deref().and_then(|p| p.parse().ok());
                if let Some(host_port) = host_port {
                    ports.push(PublishedPort {
                        container,
                        proto: proto.to_string(),
                        host_ip: b.host_ip.unwrap_or_default(),
                        host_port,
                    });
                }
            }
        }
    }
    ports.sort_by(|a, b| {
        (a.container, &a.proto, &a.host_ip).cmp(&(b.container, &b.proto, &b.host_ip))
    });
    // One entry per (port, proto): Docker lists IPv4 and IPv6 separately.
    ports.dedup_by(|a, b| a.container == b.container && a.proto == b.proto);
    let mut command = config.entrypoint.unwrap_or_default();
    command.extend(config.cmd.unwrap_or_default());
    let status = state
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    Some(ContainerInfo {
        id: c.id.unwrap_or_default(),
        node: labels.get(LABEL_NODE).cloned().unwrap_or_default(),
        cluster: labels.get(LABEL_CLUSTER).cloned().unwrap_or_default(),
        spec: labels.get(LABEL_SPEC).cloned(),
        daemonize: labels.get(LABEL_DAEMONIZE).is_some_and(|v| v == "true"),
        job,
        image: config.image.unwrap_or_default(),
        image_id: c.image.unwrap_or_default(),
        command,
        exit_code: if status == "running" || status == "created" {
            None
        } else {
            state.exit_code
        },
        error: state.error.filter(|e| !e.is_empty()),
        started_at: state.started_at.as_deref().and_then(parse_time),
        finished_at: state.finished_at.as_deref().and_then(parse_time),
        status,
        ports,
        ip,
    })
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn info(&self) -> Result<EngineInfo> {
        let i = self.docker.info().await.map_err(err)?;
        Ok(EngineInfo {
            cpus: i.ncpu.unwrap_or(0).max(0) as u64,
            memory: i.mem_total.unwrap_or(0).max(0) as u64,
        })
    }

    async fn ping(&self) -> Result<()> {
        self.docker.ping().await.map(|_| ()).map_err(err)
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    fn pull(&self, image: &str) -> BoxStream<'static, Result<String>> {
        let (from_image, tag) = split_tag(image);
        let opts = CreateImageOptions {
            from_image,
            tag,
            ..Default::default()
        };
        let image = image.to_string();
        self.docker
            .create_image(Some(opts), None, None)
            .map(move |item| match item {
                Ok(info) => {
                    if let Some(e) = info.error {
                        return Err(RuntimeError::Image {
                            image: image.clone(),
                            reason: e,
                        });
                    }
                    let mut line = info.status.unwrap_or_default();
                    if let Some(id) = info.id {
                        line = format!("{id}: {line}");
                    }
                    if let Some(p) = info.progress {
                        line = format!("{line} {p}");
                    }
                    Ok(line)
                }
                Err(e) => Err(RuntimeError::Image {
                    image: image.clone(),
                    reason: match e {
                        BollardError::DockerResponseServerError { message, .. } => message,
                        BollardError::DockerStreamError { error } => error,
                        other => other.to_string(),
                    },
                }),
            })
            .boxed()
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut exposed = HashMap::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            exposed.insert(port_key(p), HashMap::new());
            bindings.insert(
                port_key(p),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(p.host.map(|h| h.to_string()).unwrap_or_default()),
                }]),
            );
        }
        let binds = spec
            .binds
            .iter()
            .map(|(h, c)| format!("{}:{}", h.display(), c))
            .collect::<Vec<_>>();
        let config = Config {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            entrypoint: spec.entrypoint.clone(),
            working_dir: spec.workdir.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(exposed),
            tty: Some(spec.tty),
            open_stdin: Some(spec.interactive),
            stdin_once: Some(spec.interactive),
            attach_stdin: Some(spec.interactive),
            attach_stdout: Some(spec.interactive),
            attach_stderr: Some(spec.interactive),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds: Some(binds),
                init: Some(false),
                pids_limit: spec
                    .pids_limit
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                memory: spec.memory.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                nano_cpus: spec
                    .cpus
                    .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
                log_config: spec.log.as_ref().map(|l| HostConfigLogConfig {
                    typ: Some("json-file".to_string()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), l.max_size.clone()),
                        ("max-file".to_string(), l.max_files.to_string()),
                    ])),
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

    /// Attach to a created container's stdio: call it before `start`.
    ///
    /// The stream alone, never the log replay (`logs`): Docker adds this
    /// attach's pipes to the container's output before it answers the
    /// request, so once this returns the stream carries every byte the
    /// container writes from its start, exactly once and in order. With
    /// `logs` as well, Docker answers first and reads the log file after,
    /// so output written in between came twice: from the log and from the
    /// stream (issue 13).
    async fn attach(&self, id: &str) -> Result<Attached> {
        let opts = AttachContainerOptions::<String> {
            stdin: Some(true),
            stdout: Some(true),
            stderr: Some(true),
            stream: Some(true),
            logs: Some(false),
            detach_keys: None,
        };
        let r = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(err)?;
        Ok(Attached {
            output: r.output.map(|o| o.map(output).map_err(err)).boxed(),
            input: r.input,
        })
    }

    async fn exec(&self, id: &str, cmd: &[String], tty: bool) -> Result<(String, Attached)> {
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(err)?;
        match started {
            StartExecResults::Attached { output, input } => Ok((
                created.id,
                Attached {
                    output: output.map(|o| o.map(self::output).map_err(err)).boxed(),
                    input,
                },
            )),
            StartExecResults::Detached => Err(RuntimeError::Docker(format!(
                "exec {} started detached",
                created.id
            ))),
        }
    }

    async fn images(&self) -> Result<Vec<crate::ImageInfo>> {
        let list = self
            .docker
            .list_images(None::<bollard::image::ListImagesOptions<String>>)
            .await
            .map_err(err)?;
        Ok(list
            .into_iter()
            .map(|i| crate::ImageInfo {
                id: i.id,
                tags: i.repo_tags,
                created: i.created,
                size: i.size,
            })
            .collect())
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        let r = self.docker.inspect_exec(exec_id).await.map_err(err)?;
        Ok(if r.running == Some(true) {
            None
        } else {
            r.exit_code
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        match self
            .docker
            .start_container(id, None::<StartContainerOptions<String>>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64> {
        let opts = WaitContainerOptions {
            condition: "not-running",
        };
        let mut s = self.docker.wait_container(id, Some(opts));
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(err(e)),
            None => Err(RuntimeError::Docker(format!(
                "wait for container {id} ended without a status"
            ))),
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(info_from_inspect(c)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn stop(&self, id: &str, timeout_secs: i64) -> Result<()> {
        match self
            .docker
            .stop_container(id, Some(StopContainerOptions { t: timeout_secs }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        match self
            .docker
            .kill_container(id, Some(KillContainerOptions { signal }))
            .await
        {
            Ok(()) => Ok(()),
            // 409: not running; 404: gone. Both mean "nothing to kill".
            Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn remove(&self, id: &str, force: bool) -> Result<()> {
        // `v`: the container's anonymous volumes go with it; left, each
        // run, restart or push of an image with `VOLUME` leaked one.
        let opts = RemoveContainerOptions {
            force,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // 409 without force: the container runs (a conflict), unless
            // another removal is under way or done (success for us); its
            // state tells them apart.
            Err(e) if is_status(&e, 409) && !force => match self.container_status(id).await? {
                None => Ok(()),
                Some(s) if s == "removing" => Ok(()),
                Some(_) => Err(err(e)),
            },
            // 409 with force: another removal is under way (the engine
            // says "running" until its kill lands), or the container
            // stopped between the engine's check and its kill. Either way
            // it is gone, or removable, shortly: try again until it is.
            Err(e) if is_status(&e, 409) => {
                let deadline = tokio::time::Instant::now() + REMOVE_PATIENCE;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match self.docker.remove_container(id, Some(opts)).await {
                        Ok(()) => return Ok(()),
                        Err(e) if is_status(&e, 404) => return Ok(()),
                        Err(e) if is_status(&e, 409) && tokio::time::Instant::now() < deadline => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        self.docker
            .rename_container(id, RenameContainerOptions { name: new_name })
            .await
            .map_err(err)
    }

    async fn bridge_gateway(&self) -> Result<Option<String>> {
        let net = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::network::InspectNetworkOptions<String>>,
            )
            .await
            .map_err(err)?;
        Ok(net
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway)))
    }

    async fn host_port_in_use(&self, port: u16, proto: viking_core::Proto) -> Result<bool> {
        // Containers of any owner publishing it (Docker's own answer; also
        // right where Docker runs without its userland proxy).
        let filters = HashMap::from([(
            "publish".to_string(),
            vec![format!("{port}/{}", proto.as_str())],
        )]);
        let opts = ListContainersOptions {
            all: false,
            filters,
            ..Default::default()
        };
        if !self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(err)?
            .is_empty()
        {
            return Ok(true);
        }
        // A process holding it: binding it here fails. (The server runs in
        // the network namespace of the engine it drives.)
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let bound = match proto {
            viking_core::Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
            viking_core::Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
        };
        Ok(matches!(bound, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ContainerInfo>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_CLUSTER}={cluster}")],
        )]);
        let opts = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let summaries = self.docker.list_containers(Some(opts)).await.map_err(err)?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            // Inspect for exit codes, times and ports; a container removed
            // in between is simply skipped.
            if let Some(info) = self.inspect(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    fn events_for(&self, cluster: &str) -> BoxStream<'static, Result<ContainerEvent>> {
        self.container_events(
            vec![LABEL_JOB.to_string(), format!("{LABEL_CLUSTER}={cluster}")],
            Some(cluster.to_string()),
        )
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        self.container_events(vec![LABEL_JOB.to_string()], None)
    }

    fn logs(&self, id: &str, follow: bool) -> BoxStream<'static, Result<Output>> {
        let opts = LogsOptions::<String> {
            follow,
            stdout: true,
            stderr: true,
            tail: "all".to_string(),
            ..Default::default()
        };
        self.docker
            .logs(id, Some(opts))
            .map(|o| o.map(output).map_err(err))
            .boxed()
    }

    async fn labels(&self, id: &str) -> Result<Option<Labelled>> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(Labelled {
                id: c.id.unwrap_or_default(),
                labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
            })),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}

/// `repo:tag` split for the pull API; `repo@sha256:...` and a registry port
/// (`host:5000/img`) are kept whole.
fn split_tag(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            image[last_slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use viking_core::Job;

    use super::*;

    // Tests on the machine's real engine, with the image that
    // scripts/test-images.sh builds.
    const SOCKET: &str = "unix:///var/run/docker.sock";
    const IMAGE: &str = "viking-test/busybox";
    /// Every test container's cluster starts with this, so a leftover of an
    /// earlier run is recognised as this test's.
    const TEST_CLUSTER: &str = "/viking-docker-test";

    async fn engine() -> DockerRuntime {
        DockerRuntime::connect(SOCKET).await.expect("docker engine")
    }

    /// A name no other test run uses.
    fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{prefix}-{}-{nanos}", std::process::id())
    }

    fn spec_for(job: &str, cluster: &str, command: &[&str]) -> ContainerSpec {
        let doc = serde_json::json!({ "name": job, "image": IMAGE, "command": command });
        let job = Job::parse(doc.to_string().as_bytes(), String::new).unwrap();
        ContainerSpec::for_job(
            &job,
            "test-node",
            cluster,
            Path::new("/tmp/viking-docker-test"),
        )
    }

    #[tokio::test]
    async fn creating_a_taken_name_is_a_conflict() {
        let rt = engine().await;
        let cluster = format!("{TEST_CLUSTER}/{}", unique("c"));
        let spec = spec_for(&unique("dup"), &cluster, &["true"]);
        let id = rt.create(&spec).await.unwrap();
        let second = rt.create(&spec).await;
        rt.remove(&id, true).await.unwrap();
        match second {
            Err(RuntimeError::Conflict(m)) => assert!(m.contains(&spec.name), "{m}"),
            other => panic!("the second create gave {other:?}"),
        }
        // Removing a removed container succeeds.
        rt.remove(&id, true).await.unwrap();
        assert_eq!(rt.inspect(&id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn removing_a_running_container_needs_force() {
        let rt = engine().await;
        let cluster = format!("{TEST_CLUSTER}/{}", unique("c"));
        let spec = spec_for(&unique("busy"), &cluster, &["sleep", "60"]);
        let id = rt.create(&spec).await.unwrap();
        rt.start(&id).await.unwrap();
        let refused = rt.remove(&id, false).await;
        rt.remove(&id, true).await.unwrap();
        assert!(
            matches!(refused, Err(RuntimeError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(rt.inspect(&id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_forced_removes_all_succeed() {
        let rt = engine().await;
        let cluster = format!("{TEST_CLUSTER}/{}", unique("c"));
        for _ in 0..3 {
            let spec = spec_for(&unique("racing"), &cluster, &["sleep", "60"]);
            let id = rt.create(&spec).await.unwrap();
            rt.start(&id).await.unwrap();
            // The losers see 409 (removal in progress) or 404: both are
            // success, once the container is gone.
            let removes = (0..4).map(|_| {
                let rt = rt.clone();
                let id = id.clone();
                tokio::spawn(async move { rt.remove(&id, true).await })
            });
            for r in futures::future::join_all(removes).await {
                assert_eq!(r.unwrap(), Ok(()));
                assert_eq!(rt.inspect(&id).await.unwrap(), None);
            }
        }
    }

    #[tokio::test]
    async fn a_one_letter_job_gets_a_container() {
        let rt = engine().await;
        let cluster = format!("{TEST_CLUSTER}/{}", unique("c"));
        // One-letter names are few: take one no other test uses, and clear
        // a leftover of an earlier run of this test (never anything else's).
        let spec = spec_for("Z", &cluster, &["true"]);
        if let Some(c) = rt.inspect(&spec.name).await.unwrap() {
            assert!(
                c.cluster.starts_with(TEST_CLUSTER),
                "{:?} exists and is not this test's",
                spec.name
            );
            rt.remove(&c.id, true).await.unwrap();
        }
        let id = rt.create(&spec).await.unwrap();
        let info = rt.inspect(&spec.name).await.unwrap();
        rt.remove(&id, true).await.unwrap();
        let info = info.expect("the container, by its name");
        assert_eq!((info.id.as_str(), info.job.as_str()), (id.as_str(), "Z"));
    }

    /// Read `s` on a task (bollard subscribes when first polled), into a
    /// channel.
    fn forward(
        mut s: BoxStream<'static, Result<ContainerEvent>>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<ContainerEvent> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(e)) = s.next().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Wait until `rx` gives an event of container `id` with `action`,
    /// returning the events read on the way (it included).
    async fn until(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<ContainerEvent>,
        id: &str,
        action: &str,
        within: Duration,
    ) -> Option<Vec<ContainerEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
            let done = e.id == id && e.action == action;
            seen.push(e);
            if done {
                return Some(seen);
            }
        }
    }

    #[tokio::test]
    async fn events_are_only_the_clusters() {
        let rt = engine().await;
        let mine = format!("{TEST_CLUSTER}/{}", unique("mine"));
        let theirs = format!("{TEST_CLUSTER}/{}", unique("theirs"));
        let mut events = forward(rt.events_for(&mine));
        let mut all = forward(rt.events());
        // Wait until both subscriptions are live: a probe of this cluster
        // shows in both.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut probes = Vec::new();
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no events in 30s");
            let probe = rt
                .create(&spec_for(&unique("probe"), &mine, &["true"]))
                .await
                .unwrap();
            rt.remove(&probe, true).await.unwrap();
            probes.push(probe.clone());
            let step = Duration::from_secs(1);
            if until(&mut events, &probe, "destroy", step).await.is_some()
                && until(&mut all, &probe, "destroy", step).await.is_some()
            {
                break;
            }
        }
        let other = rt
            .create(&spec_for(&unique("theirs"), &theirs, &["true"]))
            .await
            .unwrap();
        let job = unique("mine");
        let id = rt.create(&spec_for(&job, &mine, &["true"])).await.unwrap();
        rt.remove(&other, true).await.unwrap();
        rt.remove(&id, true).await.unwrap();
        // Docker sends events in order: the other cluster's, made before
        // this destroy, would have come by then.
        let seen = until(&mut events, &id, "destroy", Duration::from_secs(20))
            .await
            .expect("this cluster's destroy within 20s");
        let ours: Vec<(&str, &str)> = seen
            .iter()
            .filter(|e| !probes.contains(&e.id))
            .map(|e| (e.id.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(ours, [(id.as_str(), "create"), (id.as_str(), "destroy")]);
        assert!(seen.iter().all(|e| e.id != other), "{seen:?}");
        assert_eq!(
            seen.iter().find(|e| e.id == id).map(|e| e.job.as_str()),
            Some(job.as_str())
        );
        // Without a cluster, the other cluster's events come too.
        until(&mut all, &other, "destroy", Duration::from_secs(20))
            .await
            .expect("the other cluster's destroy on events()");
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_time("2026-11-25T19:00:52.123456789Z"),
            Some(1_795_633_252_123)
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("junk"), None);
    }

    #[test]
    fn tags_split() {
        assert_eq!(split_tag("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_tag("a/b:1.2"), ("a/b".into(), "1.2".into()));
        assert_eq!(
            split_tag("127.0.0.1:5000/x"),
            ("127.0.0.1:5000/x".into(), "latest".into())
        );
    }
}
