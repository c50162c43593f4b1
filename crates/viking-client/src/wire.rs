//! The API's own view of viking's records: what `ps`, `proc`, `hosts`,
//! `inspect` and a run answer carry. They mirror the stored records
//! (viking-core's `records`) field for field today, and are converted by
//! hand, so a change to what is stored cannot change the API by accident:
//! the compiler points at the conversion instead.

use serde::{Deserialize, Serialize};
use viking_core::job::Job;
use viking_core::records::{
    History, HostRecord, Placement as StoredPlacement, ProcRecord, PsRecord, PublishedPort,
};
use viking_core::Status;

/// A published port of a job's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub container: u16,
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// What runs where (viking-ps), as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub job: String,
    pub node: String,
    pub container_id: String,
    pub image: String,
    pub image_id: String,
    pub command: Vec<String>,
    pub daemonize: bool,
    /// Docker's state (`running`, `exited`, ...) or viking's own
    /// (`starting`, `failed`, `missing`, `waiting`).
    pub status: String,
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ports: Vec<Port>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub crash_streak: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i64>,
}

impl JobState {
    pub fn is_running(&self) -> bool {
        self.status == Status::Running.as_str()
    }
}

/// A daemonized job as asked for (viking-proc), as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIntent {
    pub job: Job,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A server of the fleet (floki), as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub ip: String,
    pub api: String,
    pub tags: Vec<String>,
    pub cpus: u64,
    pub memory: u64,
    pub running: u64,
    pub memory_used: u64,
    /// CPU used over the last minute, in thousandths of a CPU.
    #[serde(default)]
    pub cpu_used: u64,
    pub version: String,
    pub started_at: u64,
    pub updated_at: u64,
    /// Why the server holds (does not act on its containers), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// One placement of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub at: u64,
}

/// Where a job has run, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placements {
    pub placements: Vec<Placement>,
}

impl From<&PublishedPort> for Port {
    fn from(p: &PublishedPort) -> Self {
        Port {
            container: p.container,
            proto: p.proto.clone(),
            host_ip: p.host_ip.clone(),
            host_port: p.host_port,
        }
    }
}

impl From<&Port> for PublishedPort {
    fn from(p: &Port) -> Self {
        PublishedPort {
            container: p.container,
            proto: p.proto.clone(),
            host_ip: p.host_ip.clone(),
            host_port: p.host_port,
        }
    }
}

impl From<&PsRecord> for JobState {
    fn from(r: &PsRecord) -> Self {
        JobState {
            job: r.job.clone(),
            node: r.node.clone(),
            container_id: r.container_id.clone(),
            image: r.image.clone(),
            image_id: r.image_id.clone(),
            command: r.command.clone(),
            daemonize: r.daemonize,
            status: r.status.to_string(),
            exit_code: r.exit_code,
            error: r.error.clone(),
            ports: r.ports.iter().map(Port::from).collect(),
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            restarts: r.restarts,
            crash_streak: r.crash_streak,
            last_exit: r.last_exit,
        }
    }
}

/// Back from the API's view: what another server reported it started.
impl From<&JobState> for PsRecord {
    fn from(s: &JobState) -> Self {
        PsRecord {
            job: s.job.clone(),
            node: s.node.clone(),
            container_id: s.container_id.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            command: s.command.clone(),
            daemonize: s.daemonize,
            status: Status::from(s.status.as_str()),
            exit_code: s.exit_code,
            error: s.error.clone(),
            ports: s.ports.iter().map(PublishedPort::from).collect(),
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            restarts: s.restarts,
            crash_streak: s.crash_streak,
            last_exit: s.last_exit,
            claimed_by: None,
        }
    }
}

impl From<&ProcRecord> for JobIntent {
    fn from(r: &ProcRecord) -> Self {
        JobIntent {
            job: r.job.clone(),
            created_at: r.created_at,
            placed_on: r.placed_on.clone(),
            waiting: r.waiting.clone(),
        }
    }
}

impl From<&HostRecord> for Host {
    fn from(h: &HostRecord) -> Self {
        Host {
            name: h.name.clone(),
            ip: h.ip.clone(),
            api: h.api.clone(),
            tags: h.tags.clone(),
            cpus: h.cpus,
            memory: h.memory,
            running: h.running,
            memory_used: h.memory_used,
            cpu_used: h.cpu_used,
            version: h.version.clone(),
            started_at: h.started_at,
            updated_at: h.updated_at,
            held: h.held.clone(),
        }
    }
}

impl From<&History> for Placements {
    fn from(h: &History) -> Self {
        Placements {
            placements: h
                .placements
                .iter()
                .map(|p: &StoredPlacement| Placement {
                    node: p.node.clone(),
                    at: p.at,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today the views read exactly as the records did: the JSON of every
    /// answer is unchanged.
    #[test]
    fn views_serialise_as_the_records_did() {
        let ps = PsRecord {
            job: "web".into(),
            node: "n1".into(),
            container_id: "c".into(),
            image: "i".into(),
            image_id: "sha".into(),
            command: vec!["a".into()],
            daemonize: true,
            status: Status::Running,
            exit_code: None,
            error: None,
            ports: vec![PublishedPort {
                container: 80,
                proto: "tcp".into(),
                host_ip: "0.0.0.0".into(),
                host_port: 32768,
            }],
            created_at: 1,
            started_at: Some(2),
            finished_at: None,
            restarts: 3,
            crash_streak: 0,
            last_exit: Some(1),
            claimed_by: None,
        };
        let view = JobState::from(&ps);
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::to_value(&ps).unwrap()
        );
        assert_eq!(PsRecord::from(&view), ps);
        let mut h = History::default();
        h.push("n1", 5);
        assert_eq!(
            serde_json::to_value(Placements::from(&h)).unwrap(),
            serde_json::to_value(&h).unwrap()
        );
    }
}

/// A duration in milliseconds as Docker says it ("5 minutes", "About a
/// minute"; Docker's `units.HumanDuration`): `viking ps` and the Docker
/// API's `docker ps` both.
pub fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// Unix milliseconds as RFC 3339 in UTC, with milliseconds
/// (`2025-12-02T00:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_of_millis() {
        assert_eq!(
            super::rfc3339(1_764_633_600_123),
            "2025-12-02T00:00:00.123Z"
        );
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
