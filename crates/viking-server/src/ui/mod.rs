//! The dashboard: every server serves the fleet at `/ui`, the jobs at
//! `/ui/jobs`, one job at `/ui/jobs/NAME`, and their live feed at
//! `/ui/feed` (server-sent events from the fleet's event stream, which the
//! pages' script turns into feed lines and in-place refreshes).
//!
//! Read-only: no page changes anything. A person logs in with the cluster
//! token once (`/ui/login`) and holds a cookie afterwards
//! (`crate::session`); the API's bearer header and a client certificate of the
//! cluster's CA work on every page too. Everything is in the binary: the
//! HTML is rendered here ([`pages`], maud), the stylesheet and the script
//! are two files of `assets/`; a Content-Security-Policy lets a page load
//! nothing else.
//!
//! Architecture invariant: like `api`, this is an HTTP edge; it reads
//! through [`view`] and `events` and never writes.

pub mod pages;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;

use crate::error::ServerError;
use crate::session;
use crate::Shared;
use pages::{Frame, Nav};

/// How many events the fleet page's feed starts with.
const FEED_START: usize = 30;
/// How many of a job's events its page starts with.
const JOB_EVENTS: usize = 50;

/// The dashboard's routes: the login page and the assets are open, every
/// other page behind [`gate`].
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ui", get(fleet))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{name}", get(job))
        .route("/ui/feed", get(feed))
        .route("/ui/logout", post(logout))
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .merge(
            Router::new()
                .route("/ui/login", get(login_form).post(login))
                .route("/ui/assets/style.css", get(style))
                .route("/ui/assets/app.js", get(script)),
        )
        .layer(middleware::map_response(harden))
        .with_state(shared)
}

fn now_secs() -> u64 {
    crate::now_ms() / 1000
}

/// Who may see a page: a client certificate of the cluster's CA, the
/// bearer token, or a session cookie. Anyone else is sent to the login
/// page (the feed, which a script reads, gets 401).
async fn gate(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let certified = req
        .extensions()
        .get::<crate::listen::ClientCertified>()
        .is_some();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| crate::token::matches(&sh.token, t));
    let cookie = session::from_headers(req.headers())
        .is_some_and(|v| session::valid(&sh.token, &v, now_secs()));
    if certified || bearer || cookie {
        return next.run(req).await;
    }
    if req.uri().path() == "/ui/feed" {
        return (StatusCode::UNAUTHORIZED, "log in at /ui/login\n").into_response();
    }
    let next = req
        .uri()
        .path_and_query()
        .map_or("/ui", |p| p.as_str())
        .to_string();
    let query = serde_urlencoded_next(&next);
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/ui/login?{query}"))],
    )
        .into_response()
}

/// `next=PATH`, form-encoded.
fn serde_urlencoded_next(next: &str) -> String {
    let mut out = String::from("next=");
    for b in next.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Where a login may send the browser: a dashboard path of this server,
/// never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n
        }
        _ => "/ui",
    }
}

/// Headers on every answer of the dashboard: nothing loads but its own
/// files, no framing, no caching of pages, no sniffing.
async fn harden(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn html(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<NextQuery>) -> Response {
    html(
        StatusCode::OK,
        pages::login(None, safe_next(q.next.as_deref())),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// The token checked once (in constant time); a session cookie in return.
async fn login(State(sh): State<Arc<Shared>>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref()).to_string();
    if !crate::token::matches(&sh.token, f.token.trim()) {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not this cluster's token."), &next),
        );
    }
    let cookie = session::set_cookie(
        Some(&session::issue(&sh.token, now_secs())),
        sh.tls.is_some(),
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
    )
        .into_response()
}

async fn logout(State(sh): State<Arc<Shared>>) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(None, sh.tls.is_some()),
            ),
            (header::LOCATION, "/ui/login".to_string()),
        ],
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", pages::STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", pages::SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A page inside the frame, or its error inside the frame with the API's
/// status for it.
fn framed(
    sh: &Shared,
    title: &str,
    nav: Nav,
    feed: (&[viking_client::api::FleetEvent], i64),
    job: Option<&str>,
    content: Result<Markup, ServerError>,
) -> Response {
    let frame = Frame {
        title,
        server: &sh.config.name,
        nav,
        rev: feed.1,
        job,
        feed: feed.0,
        now: crate::now_ms(),
    };
    match content {
        Ok(m) => html(StatusCode::OK, pages::page(&frame, m)),
        Err(e) => html(
            crate::status::of(&e),
            pages::page(&frame, pages::problem(&e.to_string())),
        ),
    }
}

/// The header the pages' script sends when it refreshes a page's content
/// in place: the feed's first lines are not read again for it (that reads
/// the store's history).
const REFRESH: &str = "x-viking-refresh";

/// A page's first feed lines and the revision they go up to; none for an
/// in-place refresh.
async fn feed_start(
    sh: &Shared,
    headers: &HeaderMap,
    job: Option<&str>,
    limit: usize,
) -> Result<(Vec<viking_client::api::FleetEvent>, i64), ServerError> {
    if headers.contains_key(REFRESH) {
        return Ok((Vec::new(), sh.store.revision().await?));
    }
    crate::events::recent(sh, job, limit).await
}

async fn fleet(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    // The feed's revision first: what changes after it reaches the page
    // through the feed.
    let (feed, rev) = match feed_start(&sh, &headers, None, FEED_START).await {
        Ok(r) => r,
        Err(e) => return framed(&sh, "Fleet", Nav::Fleet, (&[], 0), None, Err(e)),
    };
    let content = view::fleet(&sh)
        .await
        .map(|(hosts, totals, jobs)| pages::fleet(&hosts, &totals, &jobs, crate::now_ms()));
    framed(&sh, "Fleet", Nav::Fleet, (&feed, rev), None, content)
}

async fn jobs(
    State(sh): State<Arc<Shared>>,
    Query(filter): Query<pages::JobsFilter>,
    headers: HeaderMap,
) -> Response {
    let (feed, rev) = match feed_start(&sh, &headers, None, FEED_START).await {
        Ok(r) => r,
        Err(e) => return framed(&sh, "Jobs", Nav::Jobs, (&[], 0), None, Err(e)),
    };
    let content = async {
        let all = view::jobs(&sh).await?;
        let hosts: Vec<String> = crate::floki::list(&sh)
            .await?
            .into_iter()
            .map(|h| h.host.name)
            .collect();
        let kept: Vec<_> = all.iter().filter(|r| filter.keeps(r)).cloned().collect();
        Ok(pages::jobs(&kept, &filter, &hosts, all.len()))
    }
    .await;
    framed(&sh, "Jobs", Nav::Jobs, (&feed, rev), None, content)
}

async fn job(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (feed, rev) = match feed_start(&sh, &headers, Some(&name), JOB_EVENTS).await {
        Ok(r) => r,
        Err(e) => return framed(&sh, &name, Nav::Jobs, (&[], 0), Some(&name), Err(e)),
    };
    let content = view::job(&sh, &name).await.map(|j| {
        let record = serde_json::to_string_pretty(&j.inspect).unwrap_or_default();
        pages::job(&pages::JobPage {
            inspect: &j.inspect,
            record,
            hosts: &j.hosts,
            explained: j.explained,
            logs: j.logs,
        })
    });
    framed(&sh, &name, Nav::Jobs, (&feed, rev), Some(&name), content)
}

#[derive(Deserialize)]
struct FeedQuery {
    since: Option<i64>,
    job: Option<String>,
}

/// `/ui/feed`: the event stream as server-sent events (`event: fleet`,
/// the revision as its id, so a reconnecting browser resumes after the
/// last one it saw). A page starts it from now (so a move reads as a move:
/// `events::follow` tells it against the state now) and refreshes itself
/// once it is open; `since` replays. A revision the store no longer holds
/// resumes at the oldest one it has: a page wants what it can get, not an
/// error.
async fn feed(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|r| r.checked_add(1));
    // Without either: from now, told against the state now.
    let from = last_seen
        .into_iter()
        .chain(q.since)
        .max()
        .filter(|r| *r >= 1);
    let rx = match crate::events::follow(&sh, from, q.job.clone(), None).await {
        Ok(rx) => rx,
        Err(ServerError::Store(viking_store::StoreError::Compacted { oldest, .. })) => {
            crate::events::follow(&sh, Some(oldest), q.job, None).await?
        }
        Err(e) => return Err(e),
    };
    let stream = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |e| {
        Event::default()
            .event("fleet")
            .id(e.rev.to_string())
            .json_data(&e)
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_only_sends_the_browser_within_the_dashboard() {
        assert_eq!(
            safe_next(Some("/ui/jobs?state=drifting")),
            "/ui/jobs?state=drifting"
        );
        assert_eq!(safe_next(Some("/ui")), "/ui");
        assert_eq!(safe_next(Some("https://evil.example/ui")), "/ui");
        assert_eq!(safe_next(Some("//evil.example/ui")), "/ui");
        assert_eq!(safe_next(Some("/ui//evil.example")), "/ui");
        assert_eq!(safe_next(Some("/ui\\evil")), "/ui");
        assert_eq!(safe_next(Some("/uix")), "/ui");
        assert_eq!(safe_next(None), "/ui");
        assert_eq!(
            serde_urlencoded_next("/ui/jobs?a=b c"),
            "next=/ui/jobs%3Fa%3Db%20c"
        );
    }
}
