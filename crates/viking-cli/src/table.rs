//! Docker-style tables and human times ("Up 5 minutes", "2 hours ago").
//!
//! [`render`] is viking's one table layout: the CLI's `ps`, `proc`,
//! `hosts` and `services` and `viking mesh status` all print through it.
//! Every cell goes through [`sanitize`] first: a job's command, name or
//! image is text anyone who can run a job chose, and it must not reach the
//! terminal of whoever lists it as escape sequences.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use viking_client::api::HostView;
use viking_client::wire::{JobIntent, JobState};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use viking_client::wire::human;

fn ago(now: u64, t: u64) -> String {
    format!("{} ago", human(now.saturating_sub(t)))
}

/// Whether `c` is a control character: C0 (ESC among them), DEL or C1.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// `s` with every control character (C0, DEL and C1: ESC, CSI, newlines
/// and tabs among them) written as a visible escape, `\x1b` for ESC; other
/// text is kept as it is.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Render rows as left-aligned columns separated by three spaces, like
/// docker's tables: no borders, no trailing blanks. Every cell is
/// [`sanitize`]d.
pub fn render<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) -> String {
    let header: Vec<Cow<'_, str>> = header.iter().map(|h| sanitize(h.as_ref())).collect();
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            } else {
                widths.push(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            line.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i] - c.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

/// Docker's status column: "Up 5 minutes", "Exited (1) 2 hours ago".
pub fn status(p: &JobState, now: u64) -> String {
    match p.status.as_str() {
        "running" => {
            let up = human(now.saturating_sub(p.started_at.unwrap_or(now)));
            if p.restarts > 0 {
                let last = p
                    .last_exit
                    .map(|c| format!(", last exit {c}"))
                    .unwrap_or_default();
                format!("Up {up} (restarts {}{last})", p.restarts)
            } else {
                format!("Up {up}")
            }
        }
        "exited" | "dead" => {
            let code = p.exit_code.map(|c| format!(" ({c})")).unwrap_or_default();
            let when = p
                .finished_at
                .map(|f| format!(" {}", ago(now, f)))
                .unwrap_or_default();
            format!("Exited{code}{when}")
        }
        other => {
            let mut s = other[..1].to_uppercase() + &other[1..];
            if let Some(e) = &p.error {
                s = format!("{s}: {e}");
            }
            s
        }
    }
}

pub fn ps(v: &[JobState], now: u64) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|p| {
            let ports = p
                .ports
                .iter()
                .map(|pp| {
                    format!(
                        "{}:{}->{}/{}",
                        if pp.host_ip.is_empty() {
                            "0.0.0.0"
                        } else {
                            &pp.host_ip
                        },
                        pp.host_port,
                        pp.container,
                        pp.proto
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                p.job.clone(),
                p.node.clone(),
                truncate(&p.container_id, 12),
                p.image.clone(),
                format!("\"{}\"", truncate(&p.command.join(" "), 20)),
                // A record that cannot be read has no time of its own.
                if p.status == "unreadable" {
                    "-".to_string()
                } else {
                    ago(now, p.created_at)
                },
                status(p, now),
                ports,
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "HOST",
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
        ],
        &rows,
    )
}

/// `viking proc`: one row per job, and one per service run with replicas,
/// its instances running out of those asked for (`3/3`).
pub fn proc(v: &[JobIntent], ps: &[JobState], now: u64) -> String {
    let running = |name: &str| ps.iter().any(|p| p.job == name && p.status == "running");
    // Instances by service, in the order of their first.
    let mut services: Vec<(&str, Vec<&JobIntent>)> = Vec::new();
    for p in v {
        let key = p.job.service.as_deref().unwrap_or(&p.job.name);
        match services.iter_mut().find(|(s, _)| *s == key) {
            Some((_, all)) => all.push(p),
            None => services.push((key, vec![p])),
        }
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .filter_map(|(name, all)| {
            let p = all.first()?;
            let j = &p.job;
            let mut flags = vec!["daemonize"];
            if j.fixed {
                flags.push("fixed");
            }
            if j.static_ {
                flags.push("static");
            }
            let mut place = Vec::new();
            if let Some(h) = &j.host {
                place.push(format!("host={h}"));
            }
            if !j.filter.is_empty() {
                place.push(format!("tags={}", j.filter.join(",")));
            }
            let replicas = match &j.service {
                Some(_) => format!(
                    "{}/{}",
                    all.iter().filter(|i| running(&i.job.name)).count(),
                    all.len()
                ),
                None => format!("{}/1", u8::from(running(&j.name))),
            };
            Some(vec![
                name.to_string(),
                replicas,
                j.image.clone(),
                format!("\"{}\"", truncate(&j.command.join(" "), 20)),
                j.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                flags.join(","),
                place.join(" "),
                ago(now, p.created_at),
            ])
        })
        .collect();
    render(
        &[
            "NAME",
            "REPLICAS",
            "IMAGE",
            "COMMAND",
            "PORTS",
            "FLAGS",
            "PLACEMENT",
            "CREATED",
        ],
        &rows,
    )
}

/// `viking rebalance`: each move and why.
pub fn moves(v: &[viking_core::rebalance::Move]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|m| vec![m.job.clone(), m.from.clone(), m.to.clone(), m.why.clone()])
        .collect();
    render(&["JOB", "FROM", "TO", "WHY"], &rows)
}

/// One event as `viking events` prints it, like `docker events`:
/// `TIME KIND ACTION NAME (key=value, ...)`, control characters escaped.
pub fn event_line(e: &viking_client::api::FleetEvent) -> String {
    let name = e.job.as_deref().or(e.host.as_deref()).unwrap_or("-");
    let mut attrs: Vec<String> = Vec::new();
    if e.job.is_some() {
        if let Some(h) = &e.host {
            attrs.push(format!("host={h}"));
        }
    }
    attrs.extend(e.detail.iter().map(|(k, v)| format!("{k}={v}")));
    attrs.push(format!("rev={}", e.rev));
    let line = format!(
        "{} {} {} {} ({})",
        viking_client::wire::rfc3339(e.time),
        e.kind,
        e.action,
        name,
        attrs.join(", ")
    );
    sanitize(&line).into_owned()
}

pub fn services(v: &[viking_client::api::ServicePort]) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                format!("{}/tcp", s.container_port),
                s.ambassador_port.to_string(),
                s.host.clone().unwrap_or_else(|| "-".to_string()),
                if s.endpoints.is_empty() {
                    "-".to_string()
                } else {
                    s.endpoints.join(",")
                },
            ]
        })
        .collect();
    render(
        &["SERVICE", "PORT", "AMBASSADOR PORT", "HOST", "ENDPOINTS"],
        &rows,
    )
}

/// Bytes as Docker shows them: `256MiB`, `1.5GiB`, `0B`.
fn bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if b >= GIB {
        format!("{:.1}GiB", b as f64 / GIB as f64)
    } else if b >= MIB {
        format!("{}MiB", b / MIB)
    } else {
        format!("{b}B")
    }
}

pub fn hosts(v: &[HostView], now: u64) -> String {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|h| {
            let r = &h.host;
            let state = if h.alive && r.held.is_some() {
                "held: run viking recover".to_string()
            } else if h.alive && h.leader {
                "alive (leader)".to_string()
            } else if h.alive {
                "alive".to_string()
            } else {
                format!("gone since {}", ago(now, r.updated_at))
            };
            vec![
                r.name.clone(),
                state,
                r.ip.clone(),
                r.tags.join(","),
                r.running.to_string(),
                format!(
                    "{} / {} / {}",
                    viking_core::job::cpus_text(h.reserved_millicpus),
                    viking_core::job::cpus_text(r.cpu_used),
                    r.cpus
                ),
                format!(
                    "{} / {} / {}",
                    bytes(h.reserved_memory),
                    bytes(r.memory_used),
                    bytes(r.memory)
                ),
                r.version.clone(),
                if h.alive {
                    human(now.saturating_sub(r.started_at))
                } else {
                    "-".to_string()
                },
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "STATE",
            "ADDRESS",
            "TAGS",
            "JOBS",
            "CPUS RESERVED / USED / ALL",
            "MEMORY RESERVED / USED / ALL",
            "VERSION",
            "UPTIME",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times() {
        assert_eq!(human(500), "Less than a second");
        assert_eq!(human(5_000), "5 seconds");
        assert_eq!(human(300_000), "5 minutes");
        assert_eq!(human(3 * 3600 * 1000), "3 hours");
    }

    #[test]
    fn columns_align() {
        let t = render(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A     BB\nxxx   y\n");
        // An empty last cell leaves no trailing blanks.
        let t = render(&["A", "BB"], &[vec!["xxx".into(), String::new()]]);
        assert_eq!(t, "A     BB\nxxx\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(
            sanitize("\u{9b}31m\u{7f}\n\t\0"),
            "\\x9b31m\\x7f\\x0a\\x09\\x00"
        );
        // The escapes count in the width, so columns still line up.
        let t = render(&["A", "B"], &[vec!["\x1b".into(), "y".into()]]);
        assert_eq!(t, "A      B\n\\x1b   y\n");
    }

    fn job_state(command: &[&str], name: &str, image: &str) -> JobState {
        serde_json::from_value(serde_json::json!({
            "job": name,
            "node": "n1",
            "container_id": "0123456789abcdef",
            "image": image,
            "image_id": "sha256:0",
            "command": command,
            "daemonize": true,
            "status": "running",
            "ports": [],
            "created_at": 0,
            "started_at": 0,
        }))
        .expect("a JobState")
    }

    #[test]
    fn ps_prints_no_escape_sequence_of_a_job() {
        let evil = "\x1b[2J\x1b]0;pwned\x07";
        let v = vec![job_state(&["sh", "-c", evil], "web", "img\x1b[31m")];
        let out = ps(&v, 1_000);
        assert!(
            !out.chars().any(|c| is_control(c) && c != '\n'),
            "a control character reached the table: {out:?}"
        );
        assert!(out.contains("\\x1b[2J"), "{out}");
        assert!(out.contains("img\\x1b[31m"), "{out}");
        // Still one header and one row, columns as before.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("NAME   HOST   CONTAINER ID"), "{out}");
    }

    #[test]
    fn an_unreadable_record_is_a_row_with_its_error() {
        let mut bad = job_state(&[], "zz", "");
        bad.status = "unreadable".into();
        bad.error = Some("viking-ps record \"ps/zz\": ps record is not valid: x".into());
        let out = ps(&[job_state(&["sleep"], "web", "busybox"), bad], 1_000);
        let row = out
            .lines()
            .find(|l| l.starts_with("zz"))
            .expect("a row for zz");
        assert!(
            row.contains(
                "-              Unreadable: viking-ps record \"ps/zz\": ps record is not valid"
            ),
            "{out}"
        );
    }
}
