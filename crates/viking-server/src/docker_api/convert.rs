//! Docker's JSON and viking's records, one into the other: a create body
//! becomes a job document (every field viking cannot honour refused by its
//! name, nothing written), a job's records become Docker's container
//! summary (`docker ps`) and inspection (`docker inspect`). Pure: no I/O,
//! time comes in as an argument.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use viking_core::job::{EnvSpec, JobSpec, StringOrList};
use viking_core::records::{ProcRecord, PsRecord};

/// What a create body asks for, in viking's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    /// The job document (validated later by `Job::from_spec`).
    pub spec: JobSpec,
    /// Whether the client attaches (`docker run` without `-d`): an
    /// interactive job; otherwise a daemonized one.
    pub attached: bool,
    /// `-t`.
    pub tty: bool,
}

/// The create body's fields (Docker Engine API 1.44, `ContainerConfig`
/// with `HostConfig` and `NetworkingConfig`). Any other name is refused.
const CONFIG_FIELDS: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
    "HostConfig",
    "NetworkingConfig",
    "Platform",
];

/// `HostConfig`'s fields (API 1.44).
const HOST_CONFIG_FIELDS: &[&str] = &[
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "ConsoleSize",
    "Annotations",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "StorageOpt",
    "Tmpfs",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Sysctls",
    "Runtime",
    "Isolation",
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "Mounts",
    "MaskedPaths",
    "ReadonlyPaths",
    "Init",
];

/// Fields whose value does not change what runs (or that viking does its
/// own way): accepted whatever they say.
const IGNORED: &[&str] = &[
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "OpenStdin",
    "StdinOnce",
    "ArgsEscaped",
    "ExposedPorts",
    "StopSignal",
    "StopTimeout",
    "Labels",
    "Platform",
    "HostConfig.AutoRemove",
    "HostConfig.RestartPolicy",
    "HostConfig.ConsoleSize",
    "HostConfig.LogConfig",
    "HostConfig.ContainerIDFile",
    "HostConfig.Annotations",
];

/// Values that mean "as by default" for fields viking does not support.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        // -1: "unset" for MemorySwappiness and the like.
        Value::Number(n) => matches!(n.as_f64(), Some(x) if x == 0.0 || x == -1.0),
        Value::String(s) => {
            s.is_empty() || s == "default" || s == "private" || s == "bridge" || s == "shareable"
        }
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() || o.values().all(is_default),
    }
}

fn refuse(field: &str, why: &str) -> String {
    format!("{field}: {why}")
}

/// Why viking refuses a field that is set, for the ones a user is likely to
/// try; the rest get a plain "not supported".
fn why_refused(field: &str) -> &'static str {
    match field {
        "HostConfig.Binds" | "HostConfig.Mounts" => {
            "viking keeps a job's volumes in its own data directory and binds no host path (use -v /path for a volume)"
        }
        "HostConfig.Privileged" => "viking runs no privileged container",
        "HostConfig.NetworkMode" => {
            "viking runs every job on its host's default bridge (no host or other network)"
        }
        "HostConfig.PidMode" | "HostConfig.IpcMode" | "HostConfig.UTSMode"
        | "HostConfig.UsernsMode" | "HostConfig.CgroupnsMode" => {
            "viking shares no namespace of the host"
        }
        "HostConfig.CapAdd" => "viking adds no capability",
        "HostConfig.Devices" | "HostConfig.DeviceRequests" | "HostConfig.DeviceCgroupRules" => {
            "viking gives a job no device of the host"
        }
        "HostConfig.SecurityOpt" => "viking keeps Docker's default security profile",
        "HostConfig.VolumesFrom" => "a job's volumes are its own",
        "HostConfig.Links" => "use viking's links (--link at `viking run`): services through embassy",
        "User" => "a job runs as its image's user",
        _ => "not supported by viking",
    }
}

/// The create body `body` (with `?name=`) as a job document, or a message
/// naming the first field viking cannot honour.
pub fn create(name: Option<&str>, body: &Value) -> Result<Create, String> {
    let Value::Object(top) = body else {
        return Err("the body must be a JSON object".to_string());
    };
    let empty = Map::new();
    let host = match top.get("HostConfig") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(h)) => h,
        Some(_) => return Err(refuse("HostConfig", "must be an object")),
    };
    for k in top.keys() {
        if !CONFIG_FIELDS.contains(&k.as_str()) {
            return Err(refuse(k, "unknown field"));
        }
    }
    for k in host.keys() {
        if !HOST_CONFIG_FIELDS.contains(&k.as_str()) {
            return Err(refuse(&format!("HostConfig.{k}"), "unknown field"));
        }
    }
    // Fields viking maps; everything else must be left at its default.
    const MAPPED: &[&str] = &[
        "Image",
        "Cmd",
        "Entrypoint",
        "Env",
        "WorkingDir",
        "Volumes",
        "Tty",
        "HostConfig",
        "NetworkingConfig",
        "HostConfig.PortBindings",
        "HostConfig.Memory",
        "HostConfig.NanoCpus",
        "HostConfig.PidsLimit",
    ];
    let fields = top
        .iter()
        .map(|(k, v)| (k.clone(), v))
        .chain(host.iter().map(|(k, v)| (format!("HostConfig.{k}"), v)));
    for (field, v) in fields {
        if MAPPED.contains(&field.as_str()) || IGNORED.contains(&field.as_str()) {
            continue;
        }
        if !is_default(v) {
            return Err(refuse(&field, why_refused(&field)));
        }
    }
    if let Some(Value::Object(n)) = top.get("NetworkingConfig") {
        if n.get("EndpointsConfig").is_some_and(|e| !is_default(e)) {
            return Err(refuse(
                "NetworkingConfig",
                "viking runs every job on its host's default bridge",
            ));
        }
    }

    let image = match top.get("Image") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(refuse("Image", "required")),
    };
    let strings = |field: &str| -> Result<Option<Vec<String>>, String> {
        match top.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| refuse(field, "must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(_) => Err(refuse(field, "must be a list of strings")),
        }
    };
    let command = strings("Cmd")?.filter(|c| !c.is_empty());
    let entrypoint = strings("Entrypoint")?.filter(|c| !c.is_empty());
    let env = strings("Env")?.filter(|e| !e.is_empty());
    let workdir = top
        .get("WorkingDir")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .map(str::to_string);
    let volumes: Vec<String> = match top.get("Volumes") {
        Some(Value::Object(v)) => v.keys().cloned().collect(),
        None | Some(Value::Null) => vec![],
        Some(_) => return Err(refuse("Volumes", "must be an object")),
    };
    let ports = port_bindings(host.get("PortBindings"))?;
    let memory = match host.get("Memory").and_then(Value::as_u64) {
        Some(m) if m > 0 => Some(viking_core::job::Quantity::Number(m.into())),
        _ => None,
    };
    let cpus = match host.get("NanoCpus").and_then(Value::as_u64) {
        Some(n) if n > 0 => Some(viking_core::job::Quantity::Text(format!(
            "{}",
            n as f64 / 1e9
        ))),
        _ => None,
    };
    let pids_limit = host
        .get("PidsLimit")
        .and_then(Value::as_i64)
        .filter(|p| *p > 0);
    let flag = |v: Option<&Value>| matches!(v, Some(Value::Bool(true)));
    let attached = flag(top.get("AttachStdin"))
        || flag(top.get("AttachStdout"))
        || flag(top.get("AttachStderr"));
    let tty = flag(top.get("Tty"));
    let label = |k: &str| -> Result<Option<bool>, String> {
        match top.get("Labels").and_then(|l| l.get(k)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(_) => Err(refuse(
                &format!("Labels.{k}"),
                "must be \"true\" or \"false\"",
            )),
        }
    };
    let spec = JobSpec {
        name: name.filter(|n| !n.is_empty()).map(str::to_string),
        image,
        command: command.map(StringOrList::List),
        entrypoint: entrypoint.map(StringOrList::List),
        workdir,
        env: env.map(EnvSpec::List),
        ports,
        volumes,
        daemonize: Some(!attached),
        fixed: label("viking.fixed")?,
        static_: label("viking.static")?,
        tty: tty.then_some(true),
        pids_limit,
        memory,
        cpus,
        ..Default::default()
    };
    Ok(Create {
        spec,
        attached,
        tty,
    })
}

/// An exec's create body (`docker exec`): its command and TTY, or a
/// message naming what viking refuses.
pub fn exec(body: &Value) -> Result<(Vec<String>, bool), String> {
    const FIELDS: &[&str] = &[
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ConsoleSize",
        "Detach",
        "DetachKeys",
        "Tty",
        "Env",
        "Cmd",
        "Privileged",
        "User",
        "WorkingDir",
    ];
    let Value::Object(m) = body else {
        return Err("the body must be a JSON object".to_string());
    };
    for (k, v) in m {
        if !FIELDS.contains(&k.as_str()) {
            return Err(refuse(k, "unknown field"));
        }
        match k.as_str() {
            "Privileged" if !is_default(v) => {
                return Err(refuse(k, "viking runs nothing privileged"))
            }
            "User" if !is_default(v) => {
                return Err(refuse(k, "an exec runs as the container's user"))
            }
            "Env" | "WorkingDir" if !is_default(v) => {
                return Err(refuse(k, "not supported by viking's exec"))
            }
            _ => {}
        }
    }
    let cmd: Vec<String> = match m.get("Cmd") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| refuse("Cmd", "must be a list of strings"))?,
        _ => vec![],
    };
    if cmd.is_empty() {
        return Err(refuse("Cmd", "required"));
    }
    Ok((cmd, matches!(m.get("Tty"), Some(Value::Bool(true)))))
}

/// `HostConfig.PortBindings` (`{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`)
/// as viking's port strings.
fn port_bindings(v: Option<&Value>) -> Result<Vec<String>, String> {
    const FIELD: &str = "HostConfig.PortBindings";
    let Some(Value::Object(m)) = v else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (port, bindings) in m {
        let (number, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
        let list = match bindings {
            Value::Array(a) if !a.is_empty() => a.clone(),
            _ => vec![json!({})],
        };
        for b in list {
            if b.get("HostIp")
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty() && ip != "0.0.0.0" && ip != "::")
            {
                return Err(refuse(
                    FIELD,
                    "a host address: viking publishes on every address of the host it picks",
                ));
            }
            match b.get("HostPort").and_then(Value::as_str).unwrap_or("") {
                "" | "0" => out.push(format!("{number}/{proto}")),
                hp => out.push(format!("{hp}:{number}/{proto}")),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The id Docker's clients see for a job: the same for its whole life,
/// whichever container runs it now (the SHA-256 of its name, in hex).
pub fn job_id(name: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("viking-job:{name}").as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Docker's word for a job's state.
fn state(ps: Option<&PsRecord>) -> &'static str {
    use viking_core::status::Status;
    match ps.map(|p| &p.status) {
        None | Some(Status::Starting | Status::Created | Status::Waiting) => "created",
        Some(Status::Running) => "running",
        Some(Status::Restarting) => "restarting",
        Some(Status::Paused) => "paused",
        Some(Status::Removing) => "removing",
        Some(Status::Dead) => "dead",
        Some(_) => "exited",
    }
}

use viking_client::wire::human;

/// `Status` of `docker ps`.
fn status_text(ps: Option<&PsRecord>, now_ms: u64) -> String {
    let Some(p) = ps else {
        return "Created".to_string();
    };
    match state(Some(p)) {
        "running" => format!(
            "Up {}",
            human(now_ms.saturating_sub(p.started_at.unwrap_or(p.created_at)))
        ),
        "exited" => format!(
            "Exited ({}) {} ago",
            p.exit_code.unwrap_or(0),
            human(now_ms.saturating_sub(p.finished_at.unwrap_or(p.created_at)))
        ),
        other => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
    }
}

/// The job's published ports as `docker ps` lists them, on its host's
/// address.
fn ports(ps: Option<&PsRecord>, host_ip: &str) -> Vec<Value> {
    ps.map(|p| {
        p.ports
            .iter()
            .map(|pp| {
                json!({"IP": host_ip, "PrivatePort": pp.container, "PublicPort": pp.host_port, "Type": pp.proto})
            })
            .collect()
    })
    .unwrap_or_default()
}

/// One item of `GET /containers/json`: its name is `host/name`.
pub fn summary(
    name: &str,
    proc: Option<&ProcRecord>,
    ps: Option<&PsRecord>,
    host_ip: &str,
    now_ms: u64,
) -> Value {
    let host = ps
        .map(|p| p.node.as_str())
        .or_else(|| proc.and_then(|p| p.placed_on.as_deref()))
        .unwrap_or("");
    let image = ps
        .map(|p| p.image.clone())
        .or_else(|| proc.map(|p| p.job.image.clone()))
        .unwrap_or_default();
    let command = ps
        .map(|p| p.command.join(" "))
        .or_else(|| proc.map(|p| p.job.command.join(" ")))
        .unwrap_or_default();
    let created = ps
        .map(|p| p.created_at)
        .or_else(|| proc.map(|p| p.created_at))
        .unwrap_or(0)
        / 1000;
    json!({
        "Id": job_id(name),
        "Names": [format!("/{host}/{name}")],
        "Image": image,
        "ImageID": ps.map(|p| p.image_id.clone()).unwrap_or_default(),
        "Command": command,
        "Created": created,
        "Ports": ports(ps, host_ip),
        "Labels": labels(name, host),
        "State": state(ps),
        "Status": status_text(ps, now_ms),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    })
}

fn labels(name: &str, host: &str) -> Value {
    json!({"viking.job": name, "viking.host": host})
}

fn rfc3339(ms: Option<u64>) -> String {
    match ms.filter(|m| *m > 0) {
        Some(ms) => viking_client::wire::rfc3339(ms),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// `GET /containers/{id}/json`: Docker's inspection of a job, with the
/// host it runs on (`Node`, as classic Swarm had it).
pub fn inspect(
    name: &str,
    proc: Option<&ProcRecord>,
    ps: Option<&PsRecord>,
    host_ip: &str,
) -> Value {
    let job = proc.map(|p| &p.job);
    let host = ps
        .map(|p| p.node.as_str())
        .or_else(|| proc.and_then(|p| p.placed_on.as_deref()))
        .unwrap_or("");
    let st = state(ps);
    let env: Vec<String> = job
        .map(|j| j.env.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    let mut port_map: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(p) = ps {
        for pp in &p.ports {
            if let Some(a) = port_map
                .entry(format!("{}/{}", pp.container, pp.proto))
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                a.push(json!({"HostIp": host_ip, "HostPort": pp.host_port.to_string()}));
            }
        }
    }
    json!({
        "Id": job_id(name),
        "Name": format!("/{name}"),
        "Created": rfc3339(ps.map(|p| p.created_at).or(proc.map(|p| p.created_at))),
        "Path": ps.and_then(|p| p.command.first().cloned()).unwrap_or_default(),
        "Args": ps.map(|p| p.command.iter().skip(1).cloned().collect::<Vec<_>>()).unwrap_or_default(),
        "State": {
            "Status": st,
            "Running": st == "running",
            "Paused": st == "paused",
            "Restarting": st == "restarting",
            "OOMKilled": false,
            "Dead": st == "dead",
            "Pid": 0,
            "ExitCode": ps.and_then(|p| p.exit_code).unwrap_or(0),
            "Error": ps.and_then(|p| p.error.clone()).unwrap_or_default(),
            "StartedAt": rfc3339(ps.and_then(|p| p.started_at)),
            "FinishedAt": rfc3339(ps.and_then(|p| p.finished_at)),
        },
        "Image": ps.map(|p| p.image_id.clone()).unwrap_or_default(),
        "RestartCount": ps.map(|p| p.restarts).unwrap_or(0),
        "Driver": "viking",
        "Platform": "linux",
        "Config": {
            "Hostname": "",
            "Image": job.map(|j| j.image.clone()).or(ps.map(|p| p.image.clone())).unwrap_or_default(),
            "Cmd": job.map(|j| j.command.clone()).unwrap_or_default(),
            "Entrypoint": job.and_then(|j| j.entrypoint.clone()),
            "Env": env,
            "WorkingDir": job.and_then(|j| j.workdir.clone()).unwrap_or_default(),
            "Tty": job.is_some_and(|j| j.tty),
            "OpenStdin": job.is_some_and(|j| !j.daemonize),
            "Labels": labels(name, host),
        },
        "HostConfig": {"NetworkMode": "default", "Memory": job.and_then(|j| j.memory).unwrap_or(0)},
        "NetworkSettings": {"Ports": port_map},
        "Mounts": [],
        "Node": {"Name": host, "IP": host_ip, "Addr": host_ip},
        "Viking": {
            "Host": host,
            "ContainerId": ps.map(|p| p.container_id.clone()).unwrap_or_default(),
            "Daemonize": job.map(|j| j.daemonize),
            "Fixed": job.map(|j| j.fixed),
            "Static": job.map(|j| j.static_),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What docker CLI 28.2.2 sends for `docker run -d --name web -p 80 -v
    /// /data -e K=V busybox httpd` (recorded).
    fn run_d() -> Value {
        serde_json::from_str(RUN_D).unwrap()
    }

    const RUN_D: &str = r#"{"Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false, "AttachStderr": false, "ExposedPorts": {"80/tcp": {}}, "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": ["K=V"], "Cmd": ["httpd"], "Image": "busybox", "Volumes": {"/data": {}}, "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": {}, "HostConfig": {"Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}}, "NetworkMode": "default", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": false, "VolumeDriver": "", "VolumesFrom": null, "ConsoleSize": [0, 0], "CapAdd": null, "CapDrop": null, "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": null, "GroupAdd": null, "IpcMode": "", "Cgroup": "", "Links": null, "OomScoreAdj": 0, "PidMode": "", "Privileged": false, "PublishAllPorts": false, "ReadonlyRootfs": false, "SecurityOpt": null, "UTSMode": "", "UsernsMode": "", "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": [], "DeviceCgroupRules": null, "DeviceRequests": null, "MemoryReservation": 0, "MemorySwap": 0, "MemorySwappiness": -1, "OomKillDisable": false, "PidsLimit": 0, "Ulimits": [], "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": null, "ReadonlyPaths": null}, "NetworkingConfig": {"EndpointsConfig": {"default": {"IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "", "DriverOpts": null, "GwPriority": 0, "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": null}}}}"#;

    #[test]
    fn docker_run_d_becomes_a_daemonized_job() {
        let c = create(Some("web"), &run_d()).unwrap();
        assert!(!c.attached);
        assert_eq!(c.spec.name.as_deref(), Some("web"));
        assert_eq!(c.spec.image, "busybox");
        assert_eq!(c.spec.ports, vec!["80/tcp".to_string()]);
        assert_eq!(c.spec.volumes, vec!["/data".to_string()]);
        assert_eq!(c.spec.daemonize, Some(true));
        let job = viking_core::Job::from_spec(c.spec, String::new).unwrap();
        assert_eq!(job.env.get("K").map(String::as_str), Some("V"));
        assert_eq!(job.command, vec!["httpd".to_string()]);
    }

    #[test]
    fn attached_runs_are_interactive_and_labels_set_the_flags() {
        let mut b = run_d();
        b["AttachStdout"] = json!(true);
        b["Tty"] = json!(true);
        b["Labels"] = json!({"viking.static": "true", "other": "x"});
        let c = create(None, &b).unwrap();
        assert!(c.attached && c.tty);
        assert_eq!(c.spec.daemonize, Some(false));
        assert_eq!(c.spec.static_, Some(true));
        assert_eq!(c.spec.fixed, None);
    }

    #[test]
    fn every_escape_is_refused_by_its_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/HostConfig/Binds",
                json!(["/etc:/host-etc"]),
                "HostConfig.Binds",
            ),
            (
                "/HostConfig/Privileged",
                json!(true),
                "HostConfig.Privileged",
            ),
            (
                "/HostConfig/NetworkMode",
                json!("host"),
                "HostConfig.NetworkMode",
            ),
            ("/HostConfig/PidMode", json!("host"), "HostConfig.PidMode"),
            (
                "/HostConfig/CapAdd",
                json!(["SYS_ADMIN"]),
                "HostConfig.CapAdd",
            ),
            (
                "/HostConfig/Devices",
                json!([{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda", "CgroupPermissions": "rwm"}]),
                "HostConfig.Devices",
            ),
            (
                "/HostConfig/Mounts",
                json!([{"Type": "bind", "Source": "/", "Target": "/h"}]),
                "HostConfig.Mounts",
            ),
            (
                "/HostConfig/SecurityOpt",
                json!(["seccomp=unconfined"]),
                "HostConfig.SecurityOpt",
            ),
            ("/User", json!("root"), "User"),
        ];
        for (pointer, value, field) in cases {
            let mut b = run_d();
            match pointer.strip_prefix("/HostConfig/") {
                Some(k) => b["HostConfig"][k] = value,
                None => b[pointer.trim_start_matches('/')] = value,
            }
            let e = create(Some("x"), &b).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{pointer}: {e}");
        }
        let mut b = run_d();
        b["Bogus"] = json!(1);
        assert_eq!(create(None, &b).unwrap_err(), "Bogus: unknown field");
        let mut b = run_d();
        b["HostConfig"]["Bogus"] = json!(1);
        assert_eq!(
            create(None, &b).unwrap_err(),
            "HostConfig.Bogus: unknown field"
        );
        let mut b = run_d();
        b["HostConfig"]["PortBindings"] =
            json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "80"}]});
        assert!(create(None, &b)
            .unwrap_err()
            .starts_with("HostConfig.PortBindings: "));
    }

    #[test]
    fn ids_are_stable_and_docker_shaped() {
        let a = job_id("web");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, job_id("web"));
        assert_ne!(a, job_id("web2"));
    }

    #[test]
    fn times_read_like_docker() {
        assert_eq!(human(500), "Less than a second");
        assert_eq!(human(5_000), "5 seconds");
        assert_eq!(human(90_000), "About a minute");
        assert_eq!(human(600_000), "10 minutes");
        assert_eq!(rfc3339(Some(0)), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(Some(1_764_633_600_123)), "2025-12-02T00:00:00.123Z");
    }
}
