//! The dashboard (issue 21) in a real headless Chromium against a real
//! three-host cluster over TLS: log in with the token, see the three hosts
//! and the jobs, a job's page; then kill a host and watch the live feed
//! and the fleet page change without a reload. Screenshots of each page go
//! to `target/dashboard/` for a person to look at.
//!
//! Needs `scripts/test-images.sh --node` and Debian's `chromium`
//! (`scripts/prereqs.sh test`).

use std::path::PathBuf;
use std::time::Duration;

use viking_testkit::{Browser, Cluster, ClusterOpts};

const BUSYBOX: &str = "viking-test/busybox";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard")
}

#[test]
fn the_dashboard_follows_the_fleet_in_a_browser() {
    let c = Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: ["--host-ttl", "2", "--resync", "2"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .expect("cluster");
    let (n1, n3) = (c.node(0), c.node(2));
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080",
        BUSYBOX,
        "sh",
        "-c",
        "echo serving; exec httpd -f -p 8080",
    ])
    .expect("web");
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "pinned",
        "--viking-host",
        n3.name(),
        BUSYBOX,
        "sh",
        "-c",
        "echo pinned here; exec sleep 100000",
    ])
    .expect("pinned");
    let base = format!("https://{}:8791", n1.ip());
    let mut b = Browser::start().expect("chromium");
    let wait = Duration::from_secs(20);

    // Not logged in: the login page; the token once, a cookie after.
    b.navigate(&format!("{base}/ui")).expect("navigate");
    b.wait_for(
        "the login form",
        "document.querySelector('input[name=token]')",
        wait,
    )
    .expect("login page");
    b.screenshot(&shots().join("login.png"))
        .expect("screenshot");
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = {:?}; document.querySelector('form').submit(); true",
        c.token()
    ))
    .expect("log in");
    b.wait_for(
        "the fleet page with three live hosts",
        "location.pathname === '/ui' && document.querySelectorAll('#hosts tbody tr[data-state^=alive]').length === 3",
        wait,
    )
    .expect("fleet");
    let cookie_visible = b.eval("document.cookie").expect("cookie");
    assert_eq!(cookie_visible, "", "the session cookie is HttpOnly");
    b.screenshot(&shots().join("fleet.png"))
        .expect("screenshot");

    // The jobs, then one job with its placement explained and its output.
    b.navigate(&format!("{base}/ui/jobs")).expect("navigate");
    b.wait_for(
        "both jobs running",
        "document.querySelector('#jobs tr[data-job=web][data-state=running]') && document.querySelector('#jobs tr[data-job=pinned][data-state=running]')",
        wait,
    )
    .expect("jobs");
    b.screenshot(&shots().join("jobs.png")).expect("screenshot");
    b.navigate(&format!("{base}/ui/jobs/pinned"))
        .expect("navigate");
    b.wait_for(
        "pinned's page",
        "document.querySelectorAll('#placement tbody tr').length === 3 && document.querySelector('#logs').textContent.includes('pinned here')",
        wait,
    )
    .expect("job page");
    let verdicts = b
        .eval("Array.from(document.querySelectorAll('#placement tbody tr')).map(r => r.innerText).join('\\n')")
        .expect("verdicts");
    let verdicts = verdicts.as_str().unwrap_or_default().to_string();
    assert!(verdicts.contains("chosen"), "{verdicts}");
    assert_eq!(verdicts.matches("rejected: ").count(), 2, "{verdicts}");
    b.screenshot(&shots().join("job.png")).expect("screenshot");

    // The fleet page, live; a marker that a reload would lose.
    b.navigate(&format!("{base}/ui")).expect("navigate");
    b.wait_for(
        "the live feed connected",
        "document.querySelector('#feed-state').textContent === 'live'",
        wait,
    )
    .expect("live");
    b.eval("window.kept = 'this page was not reloaded'; true")
        .expect("marker");
    let before = b
        .eval("Number(document.body.dataset.refreshed || 0)")
        .expect("refreshed")
        .as_u64()
        .unwrap_or(0);
    n3.kill().expect("kill n3");
    let gone = format!(
        "window.kept === 'this page was not reloaded' \
         && document.querySelector('#hosts tr[data-host={n}]').dataset.state === 'gone' \
         && Array.from(document.querySelectorAll('#feed li')).some(li => li.innerText.includes('gone') && li.innerText.includes('{n}'))",
        n = n3.name()
    );
    b.wait_for(
        "n3 gone in the feed and on the fleet page, without a reload",
        &gone,
        Duration::from_secs(60),
    )
    .expect("n3 gone");
    let refreshed = b
        .eval("Number(document.body.dataset.refreshed || 0)")
        .expect("refreshed");
    assert!(refreshed.as_u64().unwrap_or(0) > before, "{refreshed}");
    let feed = b
        .eval("document.querySelector('#feed').innerText")
        .expect("feed");
    let feed = feed.as_str().unwrap_or_default().to_string();
    assert!(feed.contains(&format!("host gone {}", n3.name())), "{feed}");
    b.screenshot(&shots().join("fleet-host-gone.png"))
        .expect("screenshot");

    // Logging out ends the session.
    b.eval("document.querySelector('form.logout').submit(); true")
        .expect("log out");
    b.wait_for(
        "the login page again",
        "location.pathname === '/ui/login'",
        wait,
    )
    .expect("logged out");
    b.navigate(&format!("{base}/ui/jobs")).expect("navigate");
    b.wait_for(
        "still the login page",
        "location.pathname === '/ui/login'",
        wait,
    )
    .expect("no session");
}
