//! The job model: what a user asks viking to run.
//!
//! A job is JSON that describes a `docker run`. [`JobSpec`] is the document
//! exactly as a user writes it (every field optional but `image`, loose
//! forms allowed: `command` as a string or a list, `env` as an object or a
//! list). [`Job::parse`] / [`Job::from_spec`] check every rule and produce a
//! [`Job`]: normalised, with the design's defaults applied. A `Job`
//! serialises back into a document that parses to the same `Job`, so what is
//! stored in viking-proc is itself a valid job file.
//!
//! Defaults, exactly as designed:
//! - `daemonize`: false, but true when `ports` is not empty;
//! - `fixed`: false, but true when `volumes` is not empty, when `static` is
//!   true, or when env `VIKING_FIXED` is set (to anything but `""`, `0`,
//!   `false` or `no`);
//! - `static`: false.
//!
//! A value given explicitly always wins over a default.
//!
//! Resources: `memory` (bytes, or Docker's `256m`, `1g`: at least
//! [`MIN_MEMORY`]) and `cpus` (a number of CPUs, `0.5`: from 0.01, in
//! thousandths) become Docker's limits, and what dowding reserves for the
//! job on its host.
//!
//! Replicas: `replicas: N` (from 1 to [`MAX_REPLICAS`]) runs a daemonized,
//! non-fixed job as N instances, jobs named `NAME.1` to `NAME.N` whose
//! `service` is `NAME` ([`Job::instances`]); each is placed, kept running
//! and moved like a job, and embassy balances the service across them.
//!
//! Limits: at most [`MAX_PORTS`] ports and [`MAX_VOLUMES`] volumes, no
//! volume inside another (its host directory would be in the outer one's
//! data, where the job could swap it for a symlink), `pids_limit` from 1 to
//! [`MAX_PIDS_LIMIT`] (each server has its own maximum).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest job document accepted: 256 KiB. The job is stored (in
/// viking-proc, and in its container's label) as one value, which etcd
/// caps at 1.5 MiB per request, and read back in pages of many records.
/// Stored, a job is at most about twice its document (a command given as
/// a string of one-letter words becomes a list), so every record and
/// every page stays well within those limits.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The longest job name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// The most ports one job may publish: each is a docker-proxy process and,
/// for TCP, an ambassador port of the cluster's range.
pub const MAX_PORTS: usize = 64;
/// The most volumes one job may have.
pub const MAX_VOLUMES: usize = 64;
/// The largest `pids_limit` a job may write (Linux's own ceiling on process
/// ids, 2^22); each server has its own, usually lower, maximum.
pub const MAX_PIDS_LIMIT: u64 = 1 << 22;

/// The least memory a job may ask for: Docker's own minimum (6 MiB).
pub const MIN_MEMORY: u64 = 6 << 20;
/// The most memory a job may ask for: 1 PiB.
pub const MAX_MEMORY: u64 = 1 << 50;
/// The most CPUs a job may ask for.
pub const MAX_CPUS: u64 = 1024;
/// The most instances a job may have.
pub const MAX_REPLICAS: u32 = 100;

/// Why a job document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The document is not JSON at all; where the parser gave up.
    #[error("the job is not valid JSON: {message} at line {line} column {column}")]
    NotJson {
        message: String,
        line: usize,
        column: usize,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("invalid job: (document): is {size} bytes, more than the limit of {MAX_DOCUMENT_BYTES} bytes (256 KiB)")]
    TooLarge { size: usize },
    /// A field breaks a rule (or is unknown, or of the wrong type).
    #[error("invalid job: {0}")]
    Field(#[from] FieldError),
}

impl JobError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Field(FieldError::new(field, message))
    }

    /// The field at fault; `(document)` when it is the document as a whole.
    pub fn field(&self) -> &str {
        match self {
            JobError::NotJson { .. } | JobError::TooLarge { .. } => DOCUMENT,
            JobError::Field(f) => &f.field,
        }
    }

    /// A document serde refused: not JSON, or JSON of the wrong shape.
    fn from_serde(e: serde_json::Error) -> Self {
        let msg = e.to_string();
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                let (line, column) = (e.line(), e.column());
                // serde's text ends with the position, which has fields here.
                let at = format!(" at line {line} column {column}");
                JobError::NotJson {
                    message: msg.strip_suffix(&at).unwrap_or(&msg).to_string(),
                    line,
                    column,
                }
            }
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                // serde names unknown fields as "unknown field `x`, expected ..."
                let field = msg
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split('`').next())
                    .unwrap_or(DOCUMENT)
                    .to_string();
                JobError::new(field, msg)
            }
        }
    }
}

/// The name of "the whole document" where a field is named.
const DOCUMENT: &str = "(document)";

/// A rule a field broke: names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A string or a list of strings (`command`, `entrypoint`, `filter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    List(Vec<String>),
}

/// `env` as an object or as `["K=V", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvSpec {
    Map(BTreeMap<String, String>),
    List(Vec<String>),
}

/// A quantity written as a number or as a string (`memory`, `cpus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Number(serde_json::Number),
    Text(String),
}

/// A job document as written by a user. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemonize: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<bool>,
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// Services this job reaches through embassy: `NAME` or `NAME:ALIAS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The most processes the job's container may have; the server's
    /// default (`--pids-limit`) when absent, refused above its maximum
    /// (`--pids-max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// The container's memory limit, and what its host reserves for it:
    /// bytes, or a number with Docker's units (`256m`, `1g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// The CPUs the container may use, and what its host reserves for it
    /// (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Quantity>,
    /// How many instances run (a daemonized job that is not fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The service this job is an instance of (`NAME` of `NAME.3`); set by
    /// viking on the instances it makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl JobSpec {
    /// Whether the job is daemonized: as the document says, else when it
    /// publishes ports (the design's default).
    pub fn daemonized(&self) -> bool {
        self.daemonize.unwrap_or(!self.ports.is_empty())
    }
}

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of a job: `80`, `8080:80`, `53/udp`, `5353:53/udp`.
///
/// Without a host port, Docker picks a free one when the job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub host: Option<u16>,
    pub container: u16,
    pub proto: Proto,
}

impl PortSpec {
    /// Parse one port string.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => {
                return Err(format!("{s:?}: protocol must be tcp or udp, not {other:?}"))
            }
            None => (s, Proto::Tcp),
        };
        let parse_one = |p: &str| -> Result<u16, String> {
            let n: u64 = p
                .parse()
                .map_err(|_| format!("{s:?}: {p:?} is not a port number"))?;
            if (1..=65535).contains(&n) {
                Ok(n as u16)
            } else {
                Err(format!("{s:?}: port {n} is outside 1-65535"))
            }
        };
        match ports.split_once(':') {
            Some((h, c)) => Ok(Self {
                host: Some(parse_one(h)?),
                container: parse_one(c)?,
                proto,
            }),
            None => Ok(Self {
                host: None,
                container: parse_one(ports)?,
                proto,
            }),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = self.host {
            write!(f, "{h}:")?;
        }
        write!(f, "{}", self.container)?;
        if self.proto == Proto::Udp {
            write!(f, "/udp")?;
        }
        Ok(())
    }
}

/// A validated job with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub image: String,
    /// The command (Docker's `Cmd`); empty means the image's default.
    pub command: Vec<String>,
    /// Overrides the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    /// Absolute container paths; the host side is always
    /// `<data-dir>/volumes/<job>/<path>`.
    pub volumes: Vec<String>,
    pub daemonize: bool,
    pub fixed: bool,
    pub static_: bool,
    /// Pin to this server (`--viking-host`, env `VIKING_HOST`).
    pub host: Option<String>,
    /// Tags a server must have (`--viking-filter`, env `VIKING_TAG`).
    pub filter: Vec<String>,
    pub tty: bool,
    pub links: Vec<Link>,
    /// The most processes the container may have; `None`: the server's
    /// default.
    pub pids_limit: Option<u64>,
    /// The memory limit in bytes; `None`: none (dowding reserves its
    /// default for the job).
    pub memory: Option<u64>,
    /// The CPU limit in thousandths of a CPU; `None`: none.
    pub cpus: Option<u64>,
    /// The instances asked for; `None` for a job run without `replicas`,
    /// which runs as itself.
    pub replicas: Option<u32>,
    /// The service this job is an instance of; `None` for a job that is not
    /// an instance.
    pub service: Option<String>,
}

/// What a job reserves on its host: its limits, or for a job without one,
/// the cluster's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Bytes of memory.
    pub memory: u64,
    /// Thousandths of a CPU.
    pub cpus: u64,
}

impl Reservation {
    /// What `job` reserves, with `default` for a limit it does not set.
    pub fn of(job: &Job, default: Reservation) -> Self {
        Self {
            memory: job.memory.unwrap_or(default.memory),
            cpus: job.cpus.unwrap_or(default.cpus),
        }
    }

    pub fn plus(self, o: Reservation) -> Self {
        Self {
            memory: self.memory.saturating_add(o.memory),
            cpus: self.cpus.saturating_add(o.cpus),
        }
    }

    pub fn minus(self, o: Reservation) -> Self {
        Self {
            memory: self.memory.saturating_sub(o.memory),
            cpus: self.cpus.saturating_sub(o.cpus),
        }
    }
}

/// A link to a service: its job name, and the alias that names its
/// environment variables (the name itself by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub service: String,
    pub alias: String,
}

impl Link {
    pub fn parse(s: &str) -> Result<Self, JobError> {
        let (service, alias) = match s.split_once(':') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        validate_name(service).map_err(|e| JobError::new("links", e.message))?;
        validate_name(alias).map_err(|e| JobError::new("links", e.message))?;
        Ok(Link {
            service: service.to_string(),
            alias: alias.to_string(),
        })
    }

    /// The prefix of the link's variables: the alias upper-cased, other
    /// characters turned to `_`.
    pub fn env_prefix(&self) -> String {
        self.alias
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Docker-link-style variables for this link, pointing at embassy:
    /// `ports` are (container port, ambassador port), the first one also
    /// gives `NAME_PORT`.
    pub fn env(&self, addr: &str, ports: &[(u16, u16)]) -> Vec<(String, String)> {
        let p = self.env_prefix();
        let mut out = Vec::new();
        if let Some((_, amb)) = ports.first() {
            out.push((format!("{p}_PORT"), format!("tcp://{addr}:{amb}")));
        }
        for (cport, amb) in ports {
            let k = format!("{p}_PORT_{cport}_TCP");
            out.push((k.clone(), format!("tcp://{addr}:{amb}")));
            out.push((format!("{k}_ADDR"), addr.to_string()));
            out.push((format!("{k}_PORT"), amb.to_string()));
            out.push((format!("{k}_PROTO"), "tcp".to_string()));
        }
        out
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.alias == self.service {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.alias)
        }
    }
}

impl Job {
    /// Parse and validate a job document (JSON bytes).
    ///
    /// `gen_name` is called for a non-daemonized job without a name.
    pub fn parse(doc: &[u8], gen_name: impl FnOnce() -> String) -> Result<Self, JobError> {
        if doc.len() > MAX_DOCUMENT_BYTES {
            return Err(JobError::TooLarge { size: doc.len() });
        }
        let spec: JobSpec = serde_json::from_slice(doc).map_err(JobError::from_serde)?;
        Self::from_spec(spec, gen_name)
    }

    /// Validate a [`JobSpec`] and apply the defaults.
    pub fn from_spec(spec: JobSpec, gen_name: impl FnOnce() -> String) -> Result<Self, JobError> {
        Self::checked(spec, gen_name, Rules::NewJob)
    }

    fn checked(
        spec: JobSpec,
        gen_name: impl FnOnce() -> String,
        rules: Rules,
    ) -> Result<Self, JobError> {
        let new_job = rules == Rules::NewJob;
        let daemonize = spec.daemonized();
        // env first: VIKING_FIXED / VIKING_HOST / VIKING_TAG feed the flags.
        let env = parse_env(spec.env)?;

        let image = spec.image.trim().to_string();
        if image.is_empty() {
            return Err(JobError::new("image", "is required and must not be empty"));
        }
        if image.len() > 512 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(JobError::new(
                "image",
                format!("{image:?} is not an image reference (no spaces, at most 512 characters)"),
            ));
        }

        let command = match spec.command {
            None => Vec::new(),
            Some(c) => split_command("command", c)?,
        };
        let entrypoint = match spec.entrypoint {
            None => None,
            Some(c) => Some(split_command("entrypoint", c)?),
        };
        if let Some(w) = &spec.workdir {
            if !w.starts_with('/') || w.contains('\0') {
                return Err(JobError::new(
                    "workdir",
                    format!("{w:?} must be an absolute path"),
                ));
            }
        }

        if new_job && spec.ports.len() > MAX_PORTS {
            return Err(JobError::new(
                "ports",
                format!(
                    "{} ports listed; a job may publish at most {MAX_PORTS}",
                    spec.ports.len()
                ),
            ));
        }
        let mut ports = Vec::with_capacity(spec.ports.len());
        let mut seen_ports = BTreeSet::new();
        for p in &spec.ports {
            let port = PortSpec::parse(p.trim()).map_err(|m| JobError::new("ports", m))?;
            if !seen_ports.insert((port.container, port.proto)) {
                return Err(JobError::new(
                    "ports",
                    format!("container port {} is listed twice", port),
                ));
            }
            ports.push(port);
        }

        if new_job && spec.volumes.len() > MAX_VOLUMES {
            return Err(JobError::new(
                "volumes",
                format!(
                    "{} volumes listed; a job may have at most {MAX_VOLUMES}",
                    spec.volumes.len()
                ),
            ));
        }
        let mut volumes: Vec<String> = Vec::with_capacity(spec.volumes.len());
        for v in &spec.volumes {
            let path = normalize_volume(v).map_err(|m| JobError::new("volumes", m))?;
            if volumes.contains(&path) {
                return Err(JobError::new(
                    "volumes",
                    format!("{path:?} is listed twice"),
                ));
            }
            // One volume inside another would put the inner one's host
            // directory inside the outer one's data, where the job can
            // replace it (with a symlink to anywhere on the host).
            let nested = volumes
                .iter()
                .filter(|_| new_job)
                .find(|o| is_beneath(&path, o) || is_beneath(o, &path));
            if let Some(outer) = nested {
                let (outer, inner) = if is_beneath(&path, outer) {
                    (outer.as_str(), path.as_str())
                } else {
                    (path.as_str(), outer.as_str())
                };
                return Err(JobError::new(
                    "volumes",
                    format!(
                        "{inner:?} is inside volume {outer:?}; volumes must not be nested (make {inner:?} a directory of {outer:?}, or give them separate paths)"
                    ),
                ));
            }
            volumes.push(path);
        }

        let pids_limit = match spec.pids_limit {
            None => None,
            Some(n) => match u64::try_from(n) {
                Ok(n) if (1..=MAX_PIDS_LIMIT).contains(&n) => Some(n),
                _ => {
                    return Err(JobError::new(
                        "pids_limit",
                        format!("{n} must be a number of processes from 1 to {MAX_PIDS_LIMIT}"),
                    ))
                }
            },
        };

        let memory = spec.memory.as_ref().map(parse_memory).transpose()?;
        let cpus = spec.cpus.as_ref().map(parse_cpus).transpose()?;
        if let Some(replicas) = spec.replicas.filter(|r| !(1..=MAX_REPLICAS).contains(r)) {
            return Err(JobError::new(
                "replicas",
                format!("{replicas} must be from 1 to {MAX_REPLICAS}"),
            ));
        }

        let static_ = spec.static_.unwrap_or(false);
        let fixed = spec.fixed.unwrap_or(
            !volumes.is_empty() || static_ || env.get("VIKING_FIXED").is_some_and(|v| truthy(v)),
        );

        let mut links: Vec<Link> = Vec::with_capacity(spec.links.len());
        for l in &spec.links {
            let link = Link::parse(l)?;
            if links.iter().any(|x| x.alias == link.alias) {
                return Err(JobError::new(
                    "links",
                    format!("{:?} is linked twice", link.alias),
                ));
            }
            links.push(link);
        }

        let host = merge_host(spec.host, env.get("VIKING_HOST"))?;
        let filter = merge_filter(spec.filter, env.get("VIKING_TAG"))?;

        let name = match spec.name {
            Some(n) => {
                validate_name(&n)?;
                n
            }
            None if daemonize => {
                return Err(JobError::new(
                    "name",
                    "is required for a daemonized job (one with ports or -d)",
                ))
            }
            None => {
                let n = gen_name();
                validate_name(&n)?;
                n
            }
        };

        if spec.replicas.is_some() || spec.service.is_some() {
            if !daemonize {
                return Err(JobError::new(
                    "replicas",
                    "needs a daemonized job (-d, or ports): an attached job runs once",
                ));
            }
            if fixed {
                return Err(JobError::new(
                    "replicas",
                    "a fixed job (with volumes, static, or VIKING_FIXED) runs on one host, where its data is: it cannot have replicas",
                ));
            }
        }
        if spec.service.is_none() && spec.replicas.is_some() && name.len() + 4 > MAX_NAME_LEN {
            return Err(JobError::new(
                "name",
                format!("a job with replicas has a name of at most {} characters (its instances add .N)", MAX_NAME_LEN - 4),
            ));
        }
        if let Some(s) = &spec.service {
            validate_name(s).map_err(|e| JobError::new("service", e.message))?;
            let k = name
                .strip_prefix(s.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|k| k.parse::<u32>().ok());
            if !k.is_some_and(|k| (1..=MAX_REPLICAS).contains(&k)) {
                return Err(JobError::new(
                    "service",
                    format!("{s:?}: an instance of service {s:?} is named {s}.N, not {name:?}"),
                ));
            }
        }

        Ok(Job {
            name,
            image,
            command,
            entrypoint,
            workdir: spec.workdir,
            env,
            ports,
            volumes,
            daemonize,
            fixed,
            static_,
            host,
            filter,
            tty: spec.tty.unwrap_or(false),
            links,
            pids_limit,
            memory,
            cpus,
            replicas: spec.replicas,
            service: spec.service,
        })
    }

    /// The job as a document with every flag explicit; parses back to `self`.
    pub fn to_spec(&self) -> JobSpec {
        JobSpec {
            name: Some(self.name.clone()),
            image: self.image.clone(),
            command: Some(StringOrList::List(self.command.clone())),
            entrypoint: self.entrypoint.clone().map(StringOrList::List),
            workdir: self.workdir.clone(),
            env: Some(EnvSpec::Map(self.env.clone())),
            ports: self.ports.iter().map(|p| p.to_string()).collect(),
            volumes: self.volumes.clone(),
            daemonize: Some(self.daemonize),
            fixed: Some(self.fixed),
            static_: Some(self.static_),
            host: self.host.clone(),
            filter: Some(StringOrList::List(self.filter.clone())),
            tty: Some(self.tty),
            links: self.links.iter().map(|l| l.to_string()).collect(),
            pids_limit: self.pids_limit.and_then(|n| i64::try_from(n).ok()),
            memory: self.memory.map(|b| Quantity::Number(b.into())),
            cpus: self.cpus.map(|m| Quantity::Text(cpus_text(m))),
            replicas: self.replicas,
            service: self.service.clone(),
        }
    }

    /// The service this job is part of: its own name, or for an instance,
    /// its service's.
    pub fn service_name(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }

    /// Instance `k` (from 1) of this job: `NAME.k`, an instance of service
    /// `NAME`, which asks for `replicas` instances.
    pub fn instance(&self, k: u32, replicas: u32) -> Job {
        let service = self.service_name().to_string();
        Job {
            name: format!("{service}.{k}"),
            service: Some(service),
            replicas: Some(replicas),
            ..self.clone()
        }
    }

    /// The instances of a job run with `replicas` (any count, even 1):
    /// `NAME.1` to `NAME.N`; `None` for a job run without (it runs as
    /// itself) and for an instance.
    pub fn instances(&self) -> Option<Vec<Job>> {
        let n = self.replicas.filter(|_| self.service.is_none())?;
        Some((1..=n).map(|k| self.instance(k, n)).collect())
    }

    /// The env as Docker's `K=V` list.
    pub fn env_list(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// A health check, as designed: env `VIKING_HEALTH=tcp|http` checks every
/// TCP port of the job, `VIKING_HEALTH_<port>=tcp|http` one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect succeeds.
    Tcp(u16),
    /// `GET /` answers 200.
    Http(u16),
}

impl Job {
    /// The job's health checks, by container port.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let kind = |v: &str, port: u16| match v.trim().to_ascii_lowercase().as_str() {
            "tcp" => Some(HealthCheck::Tcp(port)),
            "http" => Some(HealthCheck::Http(port)),
            _ => None,
        };
        let mut out = Vec::new();
        for p in self.ports.iter().filter(|p| p.proto == Proto::Tcp) {
            let specific = self.env.get(&format!("VIKING_HEALTH_{}", p.container));
            if let Some(c) = specific
                .or(self.env.get("VIKING_HEALTH"))
                .and_then(|v| kind(v, p.container))
            {
                out.push(c);
            }
        }
        out
    }
}

impl Serialize for Job {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_spec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = JobSpec::deserialize(d)?;
        let name_missing = || String::new();
        Job::checked(spec, name_missing, Rules::Stored).map_err(serde::de::Error::custom)
    }
}

/// Which rules a job document must follow. A job read back (a stored
/// record, a server's answer) was accepted under the rules of its time, so
/// the limits added since (at most [`MAX_PORTS`] ports and [`MAX_VOLUMES`]
/// volumes, no nested volumes) are only applied to new jobs: a record
/// written before them still reads, instead of stopping every reader of
/// the store. The host that starts such a job still refuses a volume that
/// goes through a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// [`Job::parse`] / [`Job::from_spec`]: every rule.
    NewJob,
    /// `Deserialize`: every rule but the limits added since jobs were first
    /// stored.
    Stored,
}

/// Check a job name: letters, digits, `_`, `.`, `-`, starting with a letter
/// or digit, at most 128 characters.
pub fn validate_name(n: &str) -> Result<(), FieldError> {
    let rule = "must be 1-128 characters of letters, digits, '_', '.', '-', starting with a letter or digit";
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        let shown: String = n.chars().take(40).collect();
        Err(FieldError::new("name", format!("{shown:?} {rule}")))
    }
}

fn truthy(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no"
    )
}

fn parse_env(env: Option<EnvSpec>) -> Result<BTreeMap<String, String>, JobError> {
    let pairs: Vec<(String, String)> = match env {
        None => return Ok(BTreeMap::new()),
        Some(EnvSpec::Map(m)) => m.into_iter().collect(),
        Some(EnvSpec::List(l)) => {
            let mut v = Vec::with_capacity(l.len());
            for item in l {
                match item.split_once('=') {
                    Some((k, val)) => v.push((k.to_string(), val.to_string())),
                    None => {
                        return Err(JobError::new(
                            "env",
                            format!("{item:?} must be of the form KEY=VALUE"),
                        ))
                    }
                }
            }
            v
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(JobError::new(
                "env",
                format!("{k:?}: names must be non-empty without '=' or NUL"),
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn split_command(field: &str, c: StringOrList) -> Result<Vec<String>, JobError> {
    let v = match c {
        StringOrList::List(l) => l,
        StringOrList::One(s) => shell_words::split(&s)
            .map_err(|e| JobError::new(field, format!("cannot split {s:?}: {e}")))?,
    };
    if v.iter().any(|a| a.contains('\0')) {
        return Err(JobError::new(field, "must not contain NUL characters"));
    }
    Ok(v)
}

/// Whether normalised container path `inner` is `outer` or below it, at a
/// path-component boundary (`/data/x` is below `/data`, `/database` is not).
fn is_beneath(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Normalise an absolute container path: no `..`, no `.`, no empty parts.
fn normalize_volume(v: &str) -> Result<String, String> {
    if !v.starts_with('/') {
        return Err(format!(
            "{v:?} must be an absolute container path like \"/data\"; the host side is always inside the viking data directory"
        ));
    }
    if v.contains(['\0', ':', ',']) {
        return Err(format!(
            "{v:?} must be a container path only (no ':' or ','); the host side is always inside the viking data directory"
        ));
    }
    let mut parts = Vec::new();
    for part in v.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{v:?} must not contain '..'")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("{v:?}: the container root cannot be a volume"));
    }
    Ok(format!("/{}", parts.join("/")))
}

fn merge_host(field: Option<String>, env: Option<&String>) -> Result<Option<String>, JobError> {
    let field = field
        .filter(|h| !h.trim().is_empty())
        .map(|h| h.trim().to_string());
    let env = env
        .filter(|h| !h.trim().is_empty())
        .map(|h| h.trim().to_string());
    let host = match (field, env) {
        (Some(a), Some(b)) if a != b => {
            return Err(JobError::new(
                "host",
                format!("{a:?} disagrees with env VIKING_HOST={b:?}"),
            ))
        }
        (a, b) => a.or(b),
    };
    if let Some(h) = &host {
        validate_name(h).map_err(|e| JobError::new("host", e.message))?;
    }
    Ok(host)
}

fn merge_filter(
    field: Option<StringOrList>,
    env: Option<&String>,
) -> Result<Vec<String>, JobError> {
    let mut tags = BTreeSet::new();
    let mut add = |s: &str| {
        for t in s.split(',') {
            let t = t.trim();
            if !t.is_empty() {
                tags.insert(t.to_string());
            }
        }
    };
    match field {
        None => {}
        Some(StringOrList::One(s)) => add(&s),
        Some(StringOrList::List(l)) => l.iter().for_each(|s| add(s)),
    }
    if let Some(e) = env {
        add(e);
    }
    for t in &tags {
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) || t.len() > 128 {
            return Err(JobError::new("filter", format!("{t:?} is not a valid tag")));
        }
    }
    Ok(tags.into_iter().collect())
}

/// `memory` in bytes: a whole number of bytes, or a number with one of
/// Docker's units (`b`, `k`, `m`, `g`, `t`, `p`, powers of 1024, with an
/// optional `i` and `b`: `256m`, `1.5g`, `512MiB`).
pub fn parse_memory(q: &Quantity) -> Result<u64, JobError> {
    let bad = |why: String| JobError::new("memory", why);
    let bytes = match q {
        Quantity::Number(n) => n
            .as_u64()
            .ok_or_else(|| bad(format!("{n} is not a whole number of bytes")))?,
        Quantity::Text(t) => {
            let lower = t.trim().to_ascii_lowercase();
            let unitless = lower.trim_end_matches('b').trim_end_matches('i');
            let (num, shift) = match unitless.chars().last() {
                Some('k') => (&unitless[..unitless.len() - 1], 10),
                Some('m') => (&unitless[..unitless.len() - 1], 20),
                Some('g') => (&unitless[..unitless.len() - 1], 30),
                Some('t') => (&unitless[..unitless.len() - 1], 40),
                Some('p') => (&unitless[..unitless.len() - 1], 50),
                _ => (unitless, 0),
            };
            let valid = !num.is_empty()
                && num.chars().all(|c| c.is_ascii_digit() || c == '.')
                && num.matches('.').count() <= 1;
            let n: f64 = match valid {
                true => num.parse().ok(),
                false => None,
            }
            .ok_or_else(|| {
                bad(format!(
                    "{t:?} is not an amount of memory (a number of bytes, or with a unit: 256m, 1g)"
                ))
            })?;
            let b = n * (1u64 << shift) as f64;
            if b >= MAX_MEMORY as f64 * 2.0 {
                u64::MAX
            } else {
                b as u64
            }
        }
    };
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return Err(bad(format!(
            "{bytes} bytes is outside {} MiB to {} TiB",
            MIN_MEMORY >> 20,
            MAX_MEMORY >> 40
        )));
    }
    Ok(bytes)
}

/// `cpus` in thousandths of a CPU: a number (or a string of one) from 0.01
/// to [`MAX_CPUS`], with at most three decimals.
pub fn parse_cpus(q: &Quantity) -> Result<u64, JobError> {
    let text = match q {
        Quantity::Number(n) => n.to_string(),
        Quantity::Text(t) => t.trim().to_string(),
    };
    let bad = || {
        JobError::new(
            "cpus",
            format!("{text:?} must be a number of CPUs from 0.01 to {MAX_CPUS}, with at most three decimals (0.5)"),
        )
    };
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && frac.is_empty()
        || !digits(whole)
        || !digits(frac)
        || frac.len() > 3
        || whole.len() > 5
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let milli = whole * 1000 + frac;
    if !(10..=MAX_CPUS * 1000).contains(&milli) {
        return Err(bad());
    }
    Ok(milli)
}

/// Thousandths of a CPU written as a number of CPUs: `500` is `0.5`.
pub fn cpus_text(milli: u64) -> String {
    let (w, f) = (milli / 1000, milli % 1000);
    if f == 0 {
        return w.to_string();
    }
    format!("{w}.{f:03}").trim_end_matches('0').to_string()
}

/// Bytes written with the largest of Docker's units that divides them
/// (`256m`), or as MiB with two decimals.
pub fn memory_text(bytes: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Job, JobError> {
        Job::parse(s.as_bytes(), || "gen-name".to_string())
    }

    #[test]
    fn minimal_job_defaults() {
        let j = parse(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!(j.name, "gen-name");
        assert!(!j.daemonize && !j.fixed && !j.static_);
        assert!(j.command.is_empty());
    }

    #[test]
    fn ports_make_daemonized_and_need_a_name() {
        let e = parse(r#"{"image":"b","ports":["80"]}"#).unwrap_err();
        assert_eq!(e.field(), "name");
        let j = parse(r#"{"name":"web","image":"b","ports":["8080:80","53/udp"]}"#).unwrap();
        assert!(j.daemonize);
        assert!(!j.fixed);
        assert_eq!(
            j.ports[0],
            PortSpec {
                host: Some(8080),
                container: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            j.ports[1],
            PortSpec {
                host: None,
                container: 53,
                proto: Proto::Udp
            }
        );
    }

    #[test]
    fn fixed_defaults() {
        assert!(parse(r#"{"image":"b","volumes":["/data"]}"#).unwrap().fixed);
        assert!(parse(r#"{"image":"b","static":true}"#).unwrap().fixed);
        assert!(
            parse(r#"{"image":"b","env":{"VIKING_FIXED":"1"}}"#)
                .unwrap()
                .fixed
        );
        assert!(
            parse(r#"{"image":"b","env":["VIKING_FIXED=yes"]}"#)
                .unwrap()
                .fixed
        );
        assert!(
            !parse(r#"{"image":"b","env":["VIKING_FIXED=0"]}"#)
                .unwrap()
                .fixed
        );
        // explicit wins
        assert!(
            !parse(r#"{"image":"b","volumes":["/d"],"fixed":false}"#)
                .unwrap()
                .fixed
        );
        assert!(
            !parse(r#"{"image":"b","ports":["80"],"name":"x","daemonize":false}"#)
                .unwrap()
                .daemonize
        );
    }

    #[test]
    fn command_forms() {
        let j = parse(r#"{"image":"b","command":"sh -c 'echo hi there'"}"#).unwrap();
        assert_eq!(j.command, vec!["sh", "-c", "echo hi there"]);
        let j = parse(r#"{"image":"b","command":["a","b c"]}"#).unwrap();
        assert_eq!(j.command, vec!["a", "b c"]);
        assert_eq!(
            parse(r#"{"image":"b","command":"sh -c 'x"}"#)
                .unwrap_err()
                .field(),
            "command"
        );
    }

    #[test]
    fn placement_hints_from_env() {
        let j = parse(
            r#"{"image":"b","env":{"VIKING_HOST":"n2","VIKING_TAG":"ssd,gpu"},"filter":"eu"}"#,
        )
        .unwrap();
        assert_eq!(j.host.as_deref(), Some("n2"));
        assert_eq!(j.filter, vec!["eu", "gpu", "ssd"]);
        let e = parse(r#"{"image":"b","host":"n1","env":{"VIKING_HOST":"n2"}}"#).unwrap_err();
        assert_eq!(e.field(), "host");
    }

    #[test]
    fn broken_json_says_so_and_where() {
        let e = parse("{\"image\":\"b\",\n").unwrap_err();
        assert_eq!(
            e,
            JobError::NotJson {
                message: "EOF while parsing a value".to_string(),
                line: 2,
                column: 0
            }
        );
        assert_eq!(
            e.to_string(),
            "the job is not valid JSON: EOF while parsing a value at line 2 column 0"
        );
        let e = parse("{\"image\": busybox}").unwrap_err();
        assert!(
            matches!(
                e,
                JobError::NotJson {
                    line: 1,
                    column: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.field(), "(document)");
        // Valid JSON of the wrong shape names the field, as before.
        let e = parse(r#"{"image":"b","name":3}"#).unwrap_err();
        assert!(matches!(e, JobError::Field(_)), "{e:?}");
        assert!(e.to_string().starts_with("invalid job: "), "{e}");
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"{"image":"b","bogus":1}"#, "bogus"),
            (r#"{"image":"b","name":"-x"}"#, "name"),
            (r#"{"image":"b","name":"a b"}"#, "name"),
            (r#"{"image":""}"#, "image"),
            (r#"{"name":"x"}"#, "image"),
            (r#"{"image":"b","ports":["0"]}"#, "ports"),
            (r#"{"image":"b","ports":["65536"]}"#, "ports"),
            (r#"{"image":"b","ports":["80/sctp"]}"#, "ports"),
            (r#"{"image":"b","volumes":["data"]}"#, "volumes"),
            (r#"{"image":"b","volumes":["/a/../etc"]}"#, "volumes"),
            (r#"{"image":"b","volumes":["/host:/data"]}"#, "volumes"),
            (r#"{"image":"b","volumes":["/"]}"#, "volumes"),
            (r#"{"image":"b","env":["NOEQUALS"]}"#, "env"),
            (r#"{"image":"b","workdir":"rel"}"#, "workdir"),
        ];
        for (doc, field) in cases {
            let e = parse(doc).unwrap_err();
            assert_eq!(e.field(), field, "{doc}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        let long = format!(r#"{{"image":"b","name":"{}"}}"#, "a".repeat(129));
        assert_eq!(parse(&long).unwrap_err().field(), "name");
        let ok = format!(r#"{{"image":"b","name":"{}"}}"#, "a".repeat(128));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn health_checks_from_env() {
        let j = parse(r#"{"name":"w","image":"b","ports":["80","8080:81","53/udp"],"env":{"VIKING_HEALTH":"tcp","VIKING_HEALTH_81":"http"}}"#).unwrap();
        assert_eq!(
            j.health_checks(),
            vec![HealthCheck::Tcp(80), HealthCheck::Http(81)]
        );
        let j = parse(r#"{"name":"w","image":"b","ports":["80"]}"#).unwrap();
        assert!(j.health_checks().is_empty());
    }

    #[test]
    fn links_make_docker_style_variables() {
        let j = parse(r#"{"image":"b","links":["db","web-1:front"]}"#).unwrap();
        assert_eq!(
            j.links[1],
            Link {
                service: "web-1".into(),
                alias: "front".into()
            }
        );
        let env = j.links[0].env("172.17.0.1", &[(5432, 20001)]);
        assert_eq!(
            env,
            vec![
                ("DB_PORT".into(), "tcp://172.17.0.1:20001".into()),
                ("DB_PORT_5432_TCP".into(), "tcp://172.17.0.1:20001".into()),
                ("DB_PORT_5432_TCP_ADDR".into(), "172.17.0.1".into()),
                ("DB_PORT_5432_TCP_PORT".into(), "20001".into()),
                ("DB_PORT_5432_TCP_PROTO".into(), "tcp".into()),
            ]
        );
        assert_eq!(Link::parse("my.svc-2").unwrap().env_prefix(), "MY_SVC_2");
        assert_eq!(
            parse(r#"{"image":"b","links":["-x"]}"#)
                .unwrap_err()
                .field(),
            "links"
        );
        assert_eq!(
            parse(r#"{"image":"b","links":["a","a"]}"#)
                .unwrap_err()
                .field(),
            "links"
        );
    }

    #[test]
    fn oversized_document_is_refused() {
        let big = format!(
            r#"{{"image":"b","command":["{}"]}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES)
        );
        let e = parse(&big).unwrap_err();
        assert_eq!(e.field(), "(document)");
        assert!(
            e.to_string().contains(&format!(
                "is {} bytes, more than the limit of 262144 bytes (256 KiB)",
                big.len()
            )),
            "{e}"
        );
        // Just under the limit is accepted.
        let fits = format!(
            r#"{{"image":"b","command":["{}"]}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES - 40)
        );
        assert!(fits.len() <= MAX_DOCUMENT_BYTES);
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn volumes_are_normalised() {
        let j = parse(r#"{"image":"b","volumes":["//data/./x/"]}"#).unwrap();
        assert_eq!(j.volumes, vec!["/data/x"]);
    }

    #[test]
    fn nested_volumes_are_refused_naming_the_field() {
        for vols in [
            r#"["/data","/data/hostetc"]"#,
            r#"["/data/hostetc","/data"]"#,
            r#"["/a/b/c","/a"]"#,
            r#"["/data","//data/./x/"]"#,
        ] {
            let e = parse(&format!(r#"{{"image":"b","volumes":{vols}}}"#)).unwrap_err();
            assert_eq!(e.field(), "volumes", "{vols}: {e}");
            assert!(e.to_string().contains("nested"), "{e}");
        }
        // A shared prefix that is not a path component is not nesting.
        let j = parse(r#"{"image":"b","volumes":["/data","/database","/data2/x"]}"#).unwrap();
        assert_eq!(j.volumes, vec!["/data", "/database", "/data2/x"]);
    }

    #[test]
    fn ports_and_volumes_are_capped_at_64() {
        let doc = |field: &str, n: usize, item: &dyn Fn(usize) -> String| {
            let items: Vec<String> = (0..n).map(item).collect();
            serde_json::json!({"name": "x", "image": "b", field: items}).to_string()
        };
        let port = |i: usize| (1000 + i).to_string();
        let vol = |i: usize| format!("/v{i}");
        assert_eq!(
            parse(&doc("ports", MAX_PORTS, &port)).unwrap().ports.len(),
            64
        );
        let e = parse(&doc("ports", MAX_PORTS + 1, &port)).unwrap_err();
        assert_eq!(e.field(), "ports", "{e}");
        assert!(e.to_string().contains("at most 64"), "{e}");
        assert_eq!(
            parse(&doc("volumes", MAX_VOLUMES, &vol))
                .unwrap()
                .volumes
                .len(),
            64
        );
        let e = parse(&doc("volumes", MAX_VOLUMES + 1, &vol)).unwrap_err();
        assert_eq!(e.field(), "volumes", "{e}");
        assert!(e.to_string().contains("at most 64"), "{e}");
        // 10,000 ports (the review's exhaustion) are refused the same way.
        let e = parse(&doc("ports", 10_000, &|i| (i + 1).to_string())).unwrap_err();
        assert_eq!(e.field(), "ports", "{e}");
    }

    #[test]
    fn a_stored_job_from_before_the_limits_still_reads() {
        let ports: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
        let doc = serde_json::json!({
            "name": "old", "image": "b", "volumes": ["/data", "/data/x"], "ports": ports,
        });
        assert!(Job::parse(doc.to_string().as_bytes(), String::new).is_err());
        let j: Job = serde_json::from_value(doc).unwrap();
        assert_eq!(j.volumes, vec!["/data", "/data/x"]);
        assert_eq!(j.ports.len(), 65);
    }

    #[test]
    fn pids_limit_is_checked_and_kept() {
        let j = parse(r#"{"image":"b","pids_limit":200}"#).unwrap();
        assert_eq!(j.pids_limit, Some(200));
        assert_eq!(parse(r#"{"image":"b"}"#).unwrap().pids_limit, None);
        for bad in ["0", "-1", "4194305"] {
            let e = parse(&format!(r#"{{"image":"b","pids_limit":{bad}}}"#)).unwrap_err();
            assert_eq!(e.field(), "pids_limit", "{bad}: {e}");
        }
        // The stored form keeps it, and leaves it out when unset.
        let back = Job::parse(&serde_json::to_vec(&j).unwrap(), String::new).unwrap();
        assert_eq!(back, j);
        let plain = parse(r#"{"image":"b"}"#).unwrap();
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("pids_limit"));
    }

    #[test]
    fn memory_and_cpus_are_checked_and_kept() {
        let j = parse(r#"{"image":"b","memory":"256m","cpus":0.5}"#).unwrap();
        assert_eq!((j.memory, j.cpus), (Some(256 << 20), Some(500)));
        for (doc, bytes) in [
            ("268435456", 256u64 << 20),
            ("\"1g\"", 1 << 30),
            ("\"1.5G\"", 3 << 29),
            ("\"512MiB\"", 512 << 20),
            ("\"6m\"", 6 << 20),
        ] {
            let j = parse(&format!(r#"{{"image":"b","memory":{doc}}}"#)).unwrap();
            assert_eq!(j.memory, Some(bytes), "{doc}");
        }
        for (doc, milli) in [
            ("2", 2000u64),
            ("\"0.25\"", 250),
            ("0.01", 10),
            ("1.5", 1500),
        ] {
            let j = parse(&format!(r#"{{"image":"b","cpus":{doc}}}"#)).unwrap();
            assert_eq!(j.cpus, Some(milli), "{doc}");
        }
        for bad in [
            "\"5m\"",
            "\"lots\"",
            "-1",
            "1.5",
            "\"1x\"",
            "\"\"",
            "\"2pb\"",
            "\"1..2m\"",
        ] {
            let e = parse(&format!(r#"{{"image":"b","memory":{bad}}}"#)).unwrap_err();
            assert_eq!(e.field(), "memory", "{bad}: {e}");
        }
        for bad in [
            "0", "0.001", "1025", "0.1234", "-1", "\"half\"", "\".\"", "1e4",
        ] {
            let e = parse(&format!(r#"{{"image":"b","cpus":{bad}}}"#)).unwrap_err();
            assert_eq!(e.field(), "cpus", "{bad}: {e}");
        }
        // The stored form keeps them, and leaves them out when unset.
        let back = Job::parse(&serde_json::to_vec(&j).unwrap(), String::new).unwrap();
        assert_eq!(back, j);
        let plain = parse(r#"{"image":"b"}"#).unwrap();
        assert_eq!((plain.memory, plain.cpus), (None, None));
        let doc = serde_json::to_string(&plain).unwrap();
        assert!(!doc.contains("memory") && !doc.contains("cpus"), "{doc}");
        assert_eq!(
            (cpus_text(500), cpus_text(2000), cpus_text(1250)),
            ("0.5".into(), "2".into(), "1.25".into())
        );
        assert_eq!(memory_text(256 << 20), "256m");
    }

    fn arb_spec() -> impl Strategy<Value = JobSpec> {
        let name = proptest::option::of("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}");
        let port = (proptest::option::of(1u16..), 1u16.., any::<bool>()).prop_map(|(h, c, udp)| {
            let p = PortSpec {
                host: h,
                container: c,
                proto: if udp { Proto::Udp } else { Proto::Tcp },
            };
            p.to_string()
        });
        let vol = "(/[a-z]{1,5}){1,3}";
        let env = proptest::collection::btree_map("[A-Z_]{1,8}", "[ -~]{0,8}", 0..4);
        (
            name,
            "[a-z/:.]{1,20}",
            proptest::collection::vec(port, 0..3),
            proptest::collection::vec(vol, 0..3),
            env,
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(name, image, ports, volumes, env, d, f, s)| JobSpec {
                name,
                image,
                ports,
                volumes,
                env: Some(EnvSpec::Map(env)),
                daemonize: d,
                fixed: f,
                static_: s,
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_bytes(doc in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Job::parse(&doc, || "g".into());
        }

        #[test]
        fn parser_never_panics_on_json_like(doc in r#"\{("[a-z]{1,9}":("[ -~]{0,12}"|\[("[ -~]{0,8}",?){0,3}\]|true|false|[0-9]{1,6}),?){0,6}\}"#) {
            let _ = Job::parse(doc.as_bytes(), || "g".into());
        }

        #[test]
        fn defaults_follow_the_design(spec in arb_spec()) {
            match Job::from_spec(spec.clone(), || "g".into()) {
                Ok(job) => {
                    let st = spec.static_.unwrap_or(false);
                    prop_assert_eq!(job.static_, st);
                    prop_assert_eq!(job.daemonize, spec.daemonize.unwrap_or(!spec.ports.is_empty()));
                    let env_fixed = job.env.get("VIKING_FIXED").is_some_and(|v| truthy(v));
                    prop_assert_eq!(job.fixed, spec.fixed.unwrap_or(!spec.volumes.is_empty() || st || env_fixed));
                    // stored form round-trips
                    let bytes = serde_json::to_vec(&job).unwrap();
                    let back = Job::parse(&bytes, || "other".into()).unwrap();
                    prop_assert_eq!(back, job);
                }
                Err(e) => {
                    // only the name rule or duplicate ports/volumes can fail here
                    prop_assert!(["name", "ports", "volumes", "image", "env"].contains(&e.field()), "{}", e);
                }
            }
        }
    }
}
