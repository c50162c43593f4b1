//! The dashboard's HTML: pure functions from what a page shows to its
//! markup (maud escapes every value, so a job's name, a log line or an
//! error is text, never markup). No data is read here; `ui::view` gathers
//! it.

use maud::{html, Markup, DOCTYPE};
use viking_client::api::{FleetEvent, HostView, InspectResponse, Rejection};
use viking_client::wire::{human, rfc3339};

/// Which page of the navigation is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Jobs,
}

/// What every page has around its content.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The server that answers (the dashboard is the same on all).
    pub server: &'a str,
    pub nav: Nav,
    /// The store revision the page shows: its live feed follows from the
    /// next one.
    pub rev: i64,
    /// The job a job's page shows: its feed keeps to it.
    pub job: Option<&'a str>,
    /// The feed's events so far, newest last.
    pub feed: &'a [FleetEvent],
    pub now: u64,
}

fn nav_link(frame: &Frame, to: Nav, href: &str, label: &str) -> Markup {
    html! {
        @if frame.nav == to {
            a.active href=(href) { (label) }
        } @else {
            a href=(href) { (label) }
        }
    }
}

/// A page: its content in `#live` (what the live feed refreshes) and the
/// feed beside it.
pub fn page(frame: &Frame, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · viking" }
                link rel="stylesheet" href="/ui/assets/style.css";
                script src="/ui/assets/app.js" defer {}
            }
            body data-rev=(frame.rev) data-job=[frame.job] {
                header {
                    span.brand { "viking" }
                    nav {
                        (nav_link(frame, Nav::Fleet, "/ui", "Fleet"))
                        (nav_link(frame, Nav::Jobs, "/ui/jobs", "Jobs"))
                    }
                    span.server { "served by " (frame.server) }
                    form.logout method="post" action="/ui/logout" {
                        button type="submit" { "Log out" }
                    }
                }
                div.columns {
                    main #live { (content) }
                    aside {
                        h2 {
                            "Events "
                            span #feed-state.state title="the live feed" { "connecting" }
                        }
                        ol #feed {
                            @for e in frame.feed.iter().rev() {
                                (event_item(e))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One event as the feed shows it (app.js builds the same from JSON).
pub fn event_item(e: &FleetEvent) -> Markup {
    let subject = e.job.as_deref().or(e.host.as_deref()).unwrap_or("-");
    html! {
        li data-rev=(e.rev) {
            time datetime=(rfc3339(e.time)) { (rfc3339(e.time)) }
            " "
            span.kind { (e.kind) }
            " "
            b { (e.action) }
            " "
            @if let Some(job) = &e.job {
                a href={"/ui/jobs/" (job)} { (job) }
            } @else {
                (subject)
            }
            @if e.job.is_some() {
                @if let Some(h) = &e.host {
                    " on " (h)
                }
            }
            @for (k, v) in &e.detail {
                " " span.detail { (k) "=" (v) }
            }
        }
    }
}

/// The login form: the cluster token, once; a cookie afterwards.
pub fn login(error: Option<&str>, next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · viking" }
                link rel="stylesheet" href="/ui/assets/style.css";
            }
            body.login {
                form method="post" action="/ui/login" {
                    h1 { "viking" }
                    p { "The cluster token (" code { "<data-dir>/token" } ", or " code { "viking context" } "'s):" }
                    input type="password" name="token" autocomplete="current-password" autofocus required;
                    input type="hidden" name="next" value=(next);
                    @if let Some(e) = error {
                        p.error { (e) }
                    }
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The fleet's figures at the top of the fleet page.
pub struct Totals {
    pub desired: usize,
    pub running: usize,
    pub drifting: usize,
}

/// `/ui`: every host, alive or gone, and the fleet's totals.
pub fn fleet(
    hosts: &[HostView],
    totals: &Totals,
    jobs: &std::collections::BTreeMap<String, Vec<JobRow>>,
    now: u64,
) -> Markup {
    let alive = hosts.iter().filter(|h| h.alive).count();
    html! {
        h1 { "Fleet" }
        div.cards {
            div.card #hosts-alive { b { (alive) } " hosts alive" }
            div.card.bad[hosts.len() > alive] #hosts-gone { b { (hosts.len() - alive) } " gone" }
            div.card { b { (totals.desired) } " jobs desired" }
            div.card { b { (totals.running) } " running" }
            div.card.bad[totals.drifting > 0] #drifting { b { (totals.drifting) } " drifting" }
        }
        table #hosts {
            thead { tr {
                th { "Host" } th { "State" } th { "Address" } th { "Tags" } th { "Jobs" }
                th { "CPU used" } th { "Memory used" } th { "Reserved" } th { "Version" } th { "Since" }
            } }
            tbody {
                @for h in hosts {
                    tr.gone[!h.alive] data-host=(h.host.name) data-state=(host_state(h)) {
                        td { b { (h.host.name) } }
                        td.state { (host_state(h)) @if let Some(why) = &h.host.held { br; small { (why) } } }
                        td { (h.host.ip) }
                        td { @for t in &h.host.tags { span.tag { (t) } " " } }
                        td.jobs {
                            @for j in jobs.get(&h.host.name).map_or(&[][..], Vec::as_slice) {
                                a.job.drift[j.drifting] href={"/ui/jobs/" (j.name)} title=(j.status) { (j.name) }
                                " "
                            }
                        }
                        td { (format!("{:.2}", h.host.cpu_used as f64 / 1000.0)) " of " (h.host.cpus) }
                        td { (mib(h.host.memory_used)) " of " (mib(h.host.memory)) }
                        td { (format!("{:.2}", h.reserved_millicpus as f64 / 1000.0)) " CPU, " (mib(h.reserved_memory)) }
                        td { (h.host.version) }
                        td {
                            @if h.alive {
                                "up " (human(now.saturating_sub(h.host.started_at)))
                            } @else {
                                "gone, last seen " (human(now.saturating_sub(h.host.updated_at))) " ago"
                            }
                        }
                    }
                }
            }
        }
    }
}

fn host_state(h: &HostView) -> &'static str {
    match (h.alive, h.leader, h.host.held.is_some()) {
        (false, _, _) => "gone",
        (true, _, true) => "holding",
        (true, true, false) => "alive, leader",
        (true, false, false) => "alive",
    }
}

/// One row of the jobs page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub name: String,
    /// In viking-proc: viking keeps it running.
    pub desired: bool,
    /// viking-ps's status, or `missing` for a desired job without one.
    pub status: String,
    /// Desired but not running.
    pub drifting: bool,
    pub host: String,
    pub restarts: u32,
    pub image: String,
    /// `container->host:port` of each published port.
    pub ports: Vec<String>,
    /// `container->ambassador port` of each service port.
    pub ambassador: Vec<String>,
}

/// The jobs page's filters (its query).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct JobsFilter {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host: String,
    /// A status (`running`, `exited`...), `drifting`, or empty for all.
    #[serde(default)]
    pub state: String,
}

impl JobsFilter {
    pub fn keeps(&self, r: &JobRow) -> bool {
        (self.name.is_empty() || r.name.contains(self.name.trim()))
            && (self.host.is_empty() || r.host == self.host)
            && match self.state.as_str() {
                "" => true,
                "drifting" => r.drifting,
                s => r.status == s,
            }
    }
}

/// `/ui/jobs`: desired against running, drift first.
pub fn jobs(rows: &[JobRow], filter: &JobsFilter, hosts: &[String], total: usize) -> Markup {
    const STATES: [&str; 7] = [
        "", "drifting", "running", "starting", "waiting", "exited", "failed",
    ];
    html! {
        h1 { "Jobs" }
        form.filters method="get" action="/ui/jobs" {
            input type="search" name="name" placeholder="name" value=(filter.name);
            select name="host" {
                option value="" { "every host" }
                @for h in hosts {
                    option value=(h) selected[filter.host == *h] { (h) }
                }
            }
            select name="state" {
                @for s in STATES {
                    option value=(s) selected[filter.state == s] { @if s.is_empty() { "every state" } @else { (s) } }
                }
            }
            button type="submit" { "Filter" }
            span.count { (rows.len()) " of " (total) }
        }
        table #jobs {
            thead { tr {
                th { "Job" } th { "Desired" } th { "State" } th { "Host" } th { "Restarts" }
                th { "Ports" } th { "Ambassador" } th { "Image" }
            } }
            tbody {
                @for r in rows {
                    tr.drift[r.drifting] data-job=(r.name) data-state=(r.status) {
                        td { a href={"/ui/jobs/" (r.name)} { (r.name) } }
                        td { @if r.desired { "yes" } @else { "no" } }
                        td.state { (r.status) @if r.drifting { " " span.badge { "drifting" } } }
                        td { (r.host) }
                        td { (r.restarts) }
                        td { (r.ports.join(", ")) }
                        td { (r.ambassador.join(", ")) }
                        td { (r.image) }
                    }
                }
            }
        }
    }
}

/// Where dowding would place the job now.
pub struct Explained {
    /// The chosen host, if any.
    pub chosen: Option<String>,
    pub rejected: Vec<Rejection>,
    pub waiting_for: Option<String>,
}

/// What a job's page shows.
pub struct JobPage<'a> {
    pub inspect: &'a InspectResponse,
    /// The record as JSON, indented.
    pub record: String,
    /// Every host of the fleet, alive or not.
    pub hosts: &'a [HostView],
    /// `None` for a job viking does not keep (no viking-proc record).
    pub explained: Option<Result<Explained, String>>,
    /// The last lines of its output, or why they could not be read.
    pub logs: Result<Vec<String>, String>,
}

/// `/ui/jobs/NAME`: its record, placements, the placement explained, its
/// output and (in the feed) its events.
pub fn job(p: &JobPage) -> Markup {
    let i = p.inspect;
    let status = i.ps.as_ref().map_or("missing", |s| s.status.as_str());
    let host = i.ps.as_ref().map(|s| s.node.clone());
    html! {
        h1 { (i.name) " " span.badge #job-state { (status) } }
        dl.facts {
            dt { "Host" } dd #job-host { (host.as_deref().unwrap_or("-")) }
            @if let Some(ps) = &i.ps {
                dt { "Image" } dd { (ps.image) }
                dt { "Restarts" } dd { (ps.restarts) }
                @if let Some(e) = &ps.error { dt { "Error" } dd.error { (e) } }
                @if let Some(t) = ps.started_at { dt { "Started" } dd { (rfc3339(t)) } }
            }
            @if let Some(proc) = &i.proc {
                @if let Some(w) = &proc.waiting { dt { "Waiting" } dd { (w) } }
            }
            @for s in &i.services {
                dt { "Service port" } dd { (s.container_port) "/tcp on every node's embassy at " (s.ambassador_port) }
            }
        }
        h2 { "Placement" }
        @match &p.explained {
            None => p { "Not kept by viking (no viking-proc record): nothing to place." },
            Some(Err(e)) => p.error { "dowding could not explain it: " (e) },
            Some(Ok(x)) => {
                p {
                    @if let Some(c) = &x.chosen {
                        "dowding would place it on " b { (c) } " now"
                        @if host.as_deref() == Some(c.as_str()) { ", where it runs." } @else { "." }
                    } @else if let Some(w) = &x.waiting_for {
                        "It is fixed to " b { (w) } ", which is not alive: it waits for it."
                    } @else {
                        "No host can take it now."
                    }
                }
                table #placement {
                    thead { tr { th { "Host" } th { "Verdict" } } }
                    tbody {
                        @for h in p.hosts {
                            @let why = x.rejected.iter().find(|r| r.host == h.host.name);
                            tr.gone[why.is_some() || !h.alive] data-host=(h.host.name) {
                                td { (h.host.name) }
                                td {
                                    @if x.chosen.as_deref() == Some(h.host.name.as_str()) {
                                        b { "chosen" } ": it passed every filter and ranked first"
                                    } @else if let Some(r) = why {
                                        "rejected: " (r.reason)
                                    } @else if !h.alive {
                                        "not considered: gone"
                                    } @else {
                                        "eligible, ranked lower"
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Placement history" }
        table #history {
            thead { tr { th { "Host" } th { "At" } } }
            tbody {
                @for pl in i.history.placements.iter().rev() {
                    tr { td { (pl.node) } td { (rfc3339(pl.at)) } }
                }
            }
        }
        h2 { "Output" }
        @match &p.logs {
            Ok(lines) => pre #logs { @for l in lines { (l) "\n" } },
            Err(e) => p.error #logs { (e) },
        }
        h2 { "Record" }
        pre #record { (p.record) }
    }
}

/// A page's error (a job that does not exist...) inside the frame.
pub fn problem(message: &str) -> Markup {
    html! {
        h1 { "Not here" }
        p.error { (message) }
        p { a href="/ui/jobs" { "All jobs" } }
    }
}

/// The stylesheet and the script, in the binary.
pub const STYLE: &str = include_str!("assets/style.css");
pub const SCRIPT: &str = include_str!("assets/app.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_text_never_markup() {
        let row = JobRow {
            name: "web".into(),
            desired: true,
            status: "running".into(),
            drifting: false,
            host: "n1".into(),
            restarts: 0,
            image: "<script>alert(1)</script>".into(),
            ports: vec![],
            ambassador: vec![],
        };
        let html = jobs(&[row], &JobsFilter::default(), &["n1".into()], 1).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn the_filter_keeps_by_name_host_and_state() {
        let r = JobRow {
            name: "web-1".into(),
            desired: true,
            status: "exited".into(),
            drifting: true,
            host: "n2".into(),
            restarts: 3,
            image: "i".into(),
            ports: vec![],
            ambassador: vec![],
        };
        let f = |name: &str, host: &str, state: &str| JobsFilter {
            name: name.into(),
            host: host.into(),
            state: state.into(),
        };
        assert!(f("", "", "").keeps(&r));
        assert!(f("web", "n2", "drifting").keeps(&r));
        assert!(f("", "", "exited").keeps(&r));
        assert!(!f("db", "", "").keeps(&r));
        assert!(!f("", "n1", "").keeps(&r));
        assert!(!f("", "", "running").keeps(&r));
    }
}
