//! Every path of the HTTP API, written once: the route patterns (in axum's
//! `{name}` syntax, for the server's router) and the functions that build a
//! request's path with its query (for [`crate::Client`]). The query
//! parameter names are here too.

/// `GET`: liveness of a server ([`crate::api::Ping`]).
pub const PING: &str = "/v1/ping";
/// `POST`: run a job; with `dry_run=true` or `progress=true`, or upgraded
/// to an attached stream.
pub const JOBS: &str = "/v1/jobs";
/// `GET`: viking-ps; `all=true` for every job.
pub const PS: &str = "/v1/ps";
/// `GET`: viking-proc.
pub const PROC: &str = "/v1/proc";
/// `GET`: floki.
pub const HOSTS: &str = "/v1/hosts";
/// `GET`: inspect a job; `DELETE`: remove it (`force=true`).
pub const JOB: &str = "/v1/jobs/{name}";
/// `POST`: stop a job (`t` = seconds before killing it).
pub const JOB_STOP: &str = "/v1/jobs/{name}/stop";
/// `POST`: send a signal to a job's process (`signal=NAME`); `KILL`
/// stops it for good.
pub const JOB_KILL: &str = "/v1/jobs/{name}/kill";
/// `POST`: scale a job run with replicas (`replicas=N`).
pub const JOB_SCALE: &str = "/v1/jobs/{name}/scale";
/// `GET`: a job's output as frames (`follow=true`).
pub const JOB_LOGS: &str = "/v1/jobs/{name}/logs";
/// `POST` with `Upgrade`: a command in a job's running container
/// ([`crate::api::ExecRequest`]), attached.
pub const JOB_EXEC: &str = "/v1/jobs/{name}/exec";
/// `POST`: a code push (newline-delimited JSON answer).
pub const PUSH: &str = "/v1/push";
/// `GET`: the services.
pub const SERVICES: &str = "/v1/services";
/// `GET`: whether this server acts, or holds and why.
pub const HEALTH: &str = "/v1/health";
/// `POST`: rebuild the store's records from the fleet's containers
/// (`adopt=true`: also a store of another cluster).
pub const RECOVER: &str = "/v1/recover";
/// `POST`: the moves that even out the hosts' loads, made now
/// (`dry_run=true`: only listed).
pub const REBALANCE: &str = "/v1/rebalance";
/// `GET` between servers: this host's containers with what they carry of
/// their jobs.
pub const INTERNAL_CONTAINERS: &str = "/v1/internal/containers";
/// `POST` between servers: start a job placed on this host (`claim_rev`:
/// the revision of the `starting` record that asks).
pub const INTERNAL_START: &str = "/v1/internal/start";
/// `POST` between servers: the image id a reference names here.
pub const INTERNAL_RESOLVE: &str = "/v1/internal/resolve";
/// `POST` between servers: restart one job on its tag's new image.
pub const INTERNAL_REPLACE: &str = "/v1/internal/replace";
/// `POST` between servers, upgraded: run a claimed interactive job here
/// (`claim_rev`).
pub const INTERNAL_ATTACH: &str = "/v1/internal/attach";
/// `POST` between servers, to the leader: place a daemonized job and claim
/// it for the server that asks (which then starts it).
pub const INTERNAL_PLACE: &str = "/v1/internal/place";
/// `GET`: the fleet's events, newline-delimited JSON, from `since`.
pub const EVENTS: &str = "/v1/events";

/// `GET`: events from revision `since` (the current one when `None`),
/// of job `job` and host `host` only when given.
pub fn events(since: Option<i64>, job: Option<&str>, host: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(s) = since {
        q.push(format!("since={s}"));
    }
    if let Some(j) = job {
        q.push(format!("job={j}"));
    }
    if let Some(h) = host {
        q.push(format!("host={h}"));
    }
    if q.is_empty() {
        EVENTS.to_string()
    } else {
        format!("{EVENTS}?{}", q.join("&"))
    }
}

/// `POST`: an operator's client certificate, signed by the cluster's CA.
pub const CLIENT_CERTIFICATE: &str = "/v1/certificates/client";
/// `GET`: the images this host's engine has.
pub const INTERNAL_IMAGES: &str = "/v1/internal/images";
/// `GET`, without the token, over TLS: the cluster's CA certificate, which
/// a joining machine checks against its join token's fingerprint.
pub const MESH_CA: &str = "/v1/mesh/ca";
/// `POST`, without the token: a machine asks to join with the join
/// token's secret and a certificate request.
pub const MESH_JOIN: &str = "/v1/mesh/join";

/// The placeholder of a job name in the patterns.
const NAME: &str = "{name}";

/// `POST /v1/jobs?dry_run=true`.
pub fn dry_run() -> String {
    format!("{JOBS}?dry_run=true")
}

/// `POST /v1/jobs?no_wait=true`: answered once the job is accepted
/// (placed and claimed), its start carried out after the answer.
pub fn run_no_wait() -> String {
    format!("{JOBS}?no_wait=true")
}

/// `POST /v1/jobs?progress=true`.
pub fn run_with_progress() -> String {
    format!("{JOBS}?progress=true")
}

/// `GET /v1/ps`, `?all=true` for every job.
pub fn ps(all: bool) -> String {
    if all {
        format!("{PS}?all=true")
    } else {
        PS.to_string()
    }
}

/// `GET` (inspect) or `DELETE` (remove, see [`rm`]) one job.
pub fn job(name: &str) -> String {
    JOB.replace(NAME, name)
}

/// `POST` (upgraded): run a command in a job's container.
pub fn exec(name: &str) -> String {
    JOB_EXEC.replace(NAME, name)
}

/// `POST`: scale a job run with replicas to `replicas`.
pub fn scale(name: &str, replicas: u32) -> String {
    format!("{}?replicas={replicas}", JOB_SCALE.replace(NAME, name))
}

/// `POST`: stop a job, killing it after `timeout` seconds.
pub fn stop(name: &str, timeout: i64) -> String {
    format!("{}?t={timeout}", JOB_STOP.replace(NAME, name))
}

/// `POST`: send `signal` (a parsed one: letters only) to a job's process.
pub fn kill(name: &str, signal: &viking_core::signal::Signal) -> String {
    format!("{}?signal={}", JOB_KILL.replace(NAME, name), signal.name)
}

/// `DELETE`: remove a job (`force`: a running one too).
pub fn rm(name: &str, force: bool) -> String {
    format!("{}?force={force}", job(name))
}

/// `DELETE`: remove a job, and with `volumes` its data directory and
/// history too.
pub fn rm_with(name: &str, force: bool, volumes: bool) -> String {
    if volumes {
        format!("{}&volumes=true", rm(name, force))
    } else {
        rm(name, force)
    }
}

/// `GET`: a job's output.
pub fn logs(name: &str, follow: bool) -> String {
    format!("{}?follow={follow}", JOB_LOGS.replace(NAME, name))
}

/// `POST` between servers: start a daemonized job placed here, claimed at
/// `claim_rev` (without it, by a server that predates claim revisions).
pub fn internal_start(claim_rev: Option<i64>) -> String {
    match claim_rev {
        Some(r) => format!("{INTERNAL_START}?claim_rev={r}"),
        None => INTERNAL_START.to_string(),
    }
}

/// `POST` between servers, upgraded: run an interactive job claimed at
/// `claim_rev`.
pub fn internal_attach(claim_rev: i64) -> String {
    format!("{INTERNAL_ATTACH}?claim_rev={claim_rev}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_what_the_server_serves() {
        assert_eq!(ps(false), "/v1/ps");
        assert_eq!(ps(true), "/v1/ps?all=true");
        assert_eq!(job("web"), "/v1/jobs/web");
        assert_eq!(stop("web", 3), "/v1/jobs/web/stop?t=3");
        assert_eq!(rm("web", true), "/v1/jobs/web?force=true");
        assert_eq!(rm_with("web", true, false), "/v1/jobs/web?force=true");
        assert_eq!(
            rm_with("web", false, true),
            "/v1/jobs/web?force=false&volumes=true"
        );
        assert_eq!(logs("web", false), "/v1/jobs/web/logs?follow=false");
        assert_eq!(dry_run(), "/v1/jobs?dry_run=true");
        assert_eq!(run_with_progress(), "/v1/jobs?progress=true");
        assert_eq!(internal_attach(42), "/v1/internal/attach?claim_rev=42");
        assert_eq!(internal_start(Some(7)), "/v1/internal/start?claim_rev=7");
        assert_eq!(internal_start(None), "/v1/internal/start");
    }
}
