//! Chaos on the test harness: a five-host cluster with 30 jobs (fixed,
//! static, services with links, plain), and for N minutes a random fault
//! every few seconds: a host killed and brought back, a host cut off and
//! healed, a server frozen (SIGSTOP) and thawed, a host's Docker engine
//! frozen and thawed, one of etcd's three members killed and started again,
//! every server restarted at once. After each fault it
//! waits for the cluster to settle (the invariants hold, viking-ps names
//! each job's one running copy, and all of it stays so for longer than a
//! host's TTL: no move still in flight or about to start, whose end would
//! otherwise be blamed on the next fault) and checks the invariants:
//!
//! - every job in viking-proc runs exactly once across the live engines (a
//!   fixed job on its host whenever that host is up);
//! - no running container of the cluster without a job, nor one on
//!   another engine than the host its `viking.node` label names;
//! - no job lost: the 30 jobs stay in viking-proc;
//! - no container stopped by mistake: a job whose host was not touched by
//!   the fault keeps its container.
//!
//! Its last line is JSON: `{"faults":…, "settle_p50_s":…, "settle_p99_s":…,
//! "doubled":…, "lost":…, "stopped_by_mistake":…}`; the exit status is 1 when
//! an invariant did not hold within the settle limit.
//!
//!   scripts/chaos.sh [--minutes N] [--seed S]
//!
//! Needs the test images (`scripts/test-images.sh --node`) and etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use viking_testkit::{Cluster, ClusterOpts, Node, BUSYBOX_IMAGE};

/// How long the cluster may take to settle after a fault.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long a settled state must stay as it is to count: longer than a
/// host's TTL, so a move that a lease expiring just after the fault sets
/// off (a host cut off, or killed, is declared gone only then) is seen as
/// this fault's, not blamed on the next one. The settle time is when that
/// state was first seen.
const STABLE_FOR: Duration = Duration::from_secs(3);
const HOSTS: usize = 5;
const TTL: &str = "2";
/// etcd's members: one may die and the store goes on.
const ETCD_MEMBERS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fixed,
    Static,
    Service,
    Client,
    Plain,
}

struct Job {
    name: String,
    kind: Kind,
}

fn jobs() -> Vec<Job> {
    let mut out = Vec::new();
    let mut add = |prefix: &str, kind: Kind, n: usize| {
        for i in 0..n {
            out.push(Job {
                name: format!("{prefix}{i}"),
                kind,
            });
        }
    };
    add("fixed", Kind::Fixed, 5);
    add("static", Kind::Static, 5);
    add("svc", Kind::Service, 5);
    add("client", Kind::Client, 5);
    add("plain", Kind::Plain, 10);
    out
}

fn run_args(j: &Job) -> Vec<String> {
    let mut a: Vec<String> = ["run", "-d", "--name", &j.name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let svc = j.name.replace("client", "svc");
    let extra: Vec<String> = match j.kind {
        Kind::Fixed => vec!["-v".into(), "/data".into()],
        Kind::Static => vec!["--static".into()],
        Kind::Service => vec!["-p".into(), "80".into()],
        Kind::Client => vec!["--link".into(), svc],
        Kind::Plain => vec![],
    };
    a.extend(extra);
    a.push(BUSYBOX_IMAGE.to_string());
    match j.kind {
        Kind::Service => a.extend(["httpd", "-f", "-p", "80"].map(String::from)),
        _ => a.extend(["sleep", "1000000"].map(String::from)),
    }
    a
}

/// What the cluster looks like now.
#[derive(Debug, Default)]
struct Seen {
    /// job -> (node, container id) of every running copy on a live engine.
    copies: BTreeMap<String, Vec<(String, String)>>,
    /// Jobs in viking-proc.
    procs: BTreeSet<String>,
    /// viking-ps: job -> (node, container id, status).
    records: BTreeMap<String, (String, String, String)>,
    /// Containers whose `viking.node` label names another host than the
    /// engine they run on (no agent would ever look after them).
    foreign: Vec<String>,
}

fn look(c: &Cluster, down: &BTreeSet<String>) -> Option<Seen> {
    let mut seen = Seen::default();
    let asker = c.nodes().iter().find(|n| !down.contains(n.name()))?;
    let procs = asker.cli_json(["proc", "--json"]).ok()?;
    for p in procs.as_array()? {
        let name = p["job"]["name"].as_str().or_else(|| p["name"].as_str())?;
        seen.procs.insert(name.to_string());
    }
    let ps = asker.cli_json(["ps", "-a", "--json"]).ok()?;
    for p in ps.as_array()? {
        let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        seen.records.insert(
            field("job"),
            (field("node"), field("container_id"), field("status")),
        );
    }
    for n in c.nodes() {
        if down.contains(n.name()) || !n.is_running() {
            continue;
        }
        let o = n.docker([
            "ps",
            "--no-trunc",
            "--filter",
            "label=viking.job",
            "--format",
            "{{.ID}} {{.Label \"viking.job\"}} {{.Label \"viking.node\"}}",
        ]);
        if !o.status.success() {
            return None;
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut fields = line.split(' ');
            let (Some(id), Some(job)) = (fields.next(), fields.next()) else {
                continue;
            };
            if let Some(label) = fields.next().filter(|l| *l != n.name()) {
                seen.foreign
                    .push(format!("{job} runs on {} labelled for {label}", n.name()));
            }
            seen.copies
                .entry(job.to_string())
                .or_default()
                .push((n.name().to_string(), id.to_string()));
        }
    }
    Some(seen)
}

/// Whether the invariants hold; if not, why.
fn check(
    seen: &Seen,
    all: &[Job],
    homes: &BTreeMap<String, String>,
    down: &BTreeSet<String>,
) -> Result<(), String> {
    let ours: BTreeSet<&str> = all.iter().map(|j| j.name.as_str()).collect();
    let mut why = Vec::new();
    for j in all {
        if !seen.procs.contains(&j.name) {
            why.push(format!("{} is not in viking-proc", j.name));
        }
        let copies = seen.copies.get(&j.name).map_or(0, Vec::len);
        let home = homes.get(&j.name);
        let home_down = home.is_some_and(|h| down.contains(h));
        // A static job is fixed too (the design's default).
        let fixed = matches!(j.kind, Kind::Fixed | Kind::Static);
        if fixed && home_down {
            if copies != 0 {
                why.push(format!("{} runs off its host", j.name));
            }
            continue;
        }
        if copies != 1 {
            why.push(format!("{} has {copies} copies", j.name));
        }
        // Settled means the store agrees: the one copy is the container
        // viking-ps names, running (no move still in flight, whose end
        // would replace it after the check).
        if let (1, Some((node, id))) = (copies, seen.copies.get(&j.name).and_then(|c| c.first())) {
            let agrees = seen
                .records
                .get(&j.name)
                .is_some_and(|(n, i, st)| n == node && i == id && st == "running");
            if !agrees {
                why.push(format!(
                    "{} runs on {node} but viking-ps says {:?}",
                    j.name,
                    seen.records.get(&j.name)
                ));
            }
        }
        if fixed {
            let on = seen
                .copies
                .get(&j.name)
                .and_then(|c| c.first())
                .map(|c| c.0.as_str());
            if on.is_some() && home.is_some() && on != home.map(String::as_str) {
                why.push(format!("{} runs on {on:?}, not its host {home:?}", j.name));
            }
        }
    }
    why.extend(seen.foreign.iter().cloned());
    for job in seen.copies.keys() {
        if !ours.contains(job.as_str()) {
            why.push(format!("a container of unknown job {job}"));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// How a settle ended: the time it took and what was seen, or the time,
/// the last reason and the last view.
type Settled = Result<(Duration, Seen), (Duration, String, Option<Box<Seen>>)>;

/// Wait until the invariants hold; the time it took, or the last reason.
fn settle(
    c: &Cluster,
    all: &[Job],
    homes: &BTreeMap<String, String>,
    down: &BTreeSet<String>,
) -> Settled {
    let t0 = Instant::now();
    let mut last = (String::from("nothing seen"), None);
    // The first time the state that held since was seen, and that state.
    let mut holding: Option<(Duration, Instant, String)> = None;
    while t0.elapsed() < SETTLE_LIMIT {
        if let Some(seen) = look(c, down) {
            match check(&seen, all, homes, down) {
                Ok(()) => {
                    let sig = signature(&seen);
                    match &holding {
                        Some((at, since, s)) if *s == sig => {
                            if since.elapsed() >= STABLE_FOR {
                                return Ok((*at, seen));
                            }
                        }
                        _ => holding = Some((t0.elapsed(), Instant::now(), sig)),
                    }
                }
                Err(why) => {
                    holding = None;
                    last = (why, Some(Box::new(seen)));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err((t0.elapsed(), last.0, last.1))
}

/// What must not change for a settled state to hold: every copy and every
/// viking-ps record.
fn signature(seen: &Seen) -> String {
    format!("{:?}{:?}", seen.copies, seen.records)
}

fn server_pid_signal(n: &Node, sig: &str) {
    let _ = n.sh(&format!("kill -{sig} $(cat /var/lib/viking/server.pid)"));
}

fn docker_signal(n: &Node, sig: &str) {
    let pid = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", n.container()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !pid.is_empty() {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[derive(Default)]
struct Tally {
    faults: usize,
    settles: Vec<f64>,
    doubled: usize,
    lost: usize,
    stopped_by_mistake: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(
        &mut self,
        what: &str,
        r: Settled,
        before: &Seen,
        touched: &BTreeSet<String>,
    ) -> Option<Seen> {
        match r {
            Ok((d, seen)) => {
                self.settles.push(d.as_secs_f64());
                // A job on an untouched host keeps its container.
                for (job, copies) in &before.copies {
                    let Some((node, id)) = copies.first() else {
                        continue;
                    };
                    if touched.contains(node) {
                        continue;
                    }
                    let now = seen.copies.get(job).and_then(|c| c.first());
                    if now.map(|c| &c.1) != Some(id) {
                        self.stopped_by_mistake += 1;
                        // Which container, and where the job runs now, to
                        // match against the servers' logs.
                        let short = |id: &str| id.get(..12).unwrap_or(id).to_string();
                        let now = now.map(|(n, i)| format!("{n} {}", short(i)));
                        self.failures.push(format!(
                            "{what}: {job} lost its container {} on untouched host {node} (now: {})",
                            short(id),
                            now.as_deref().unwrap_or("nowhere")
                        ));
                    }
                }
                eprintln!(
                    "chaos: {} {what}: settled in {:.1}s",
                    utc_now(),
                    d.as_secs_f64()
                );
                Some(seen)
            }
            Err((d, why, seen)) => {
                self.settles.push(d.as_secs_f64());
                if let Some(s) = &seen {
                    self.doubled += s.copies.values().filter(|c| c.len() > 1).count();
                }
                self.lost += why.matches("has 0 copies").count()
                    + why.matches("is not in viking-proc").count();
                self.failures.push(format!(
                    "{what}: not settled in {:.0}s: {why}",
                    d.as_secs_f64()
                ));
                eprintln!("chaos: {} {what}: NOT settled: {why}", utc_now());
                seen.map(|s| *s)
            }
        }
    }
}

/// The time of day (UTC, to the millisecond), as the servers' logs print
/// it, so a fault's line can be matched with them.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: f64 = arg(&args, "--minutes")
        .and_then(|m| m.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = arg(&args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {minutes} minute(s), seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = match Cluster::start(
        HOSTS,
        ClusterOpts {
            // Rebalancing off: the checker holds that no container on a host
            // a fault did not touch is replaced, and rebalancing moves jobs
            // on purpose (its own tests are in rules.rs and embassy.rs).
            server_args: [
                "--host-ttl",
                TTL,
                "--resync",
                "2",
                "--backoff",
                "0.5",
                "--rebalance",
                "off",
            ]
            .map(String::from)
            .to_vec(),
            etcd_members: ETCD_MEMBERS,
            ..Default::default()
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: cannot start the cluster: {e:#}");
            std::process::exit(2);
        }
    };
    let all = jobs();
    let n1 = c.node(0);
    for j in &all {
        let o = n1.cli(run_args(j));
        if !o.status.success() {
            eprintln!(
                "chaos: cannot run {}: {}",
                j.name,
                String::from_utf8_lossy(&o.stderr)
            );
            std::process::exit(2);
        }
    }
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut tally = Tally::default();
    let first = tally.record(
        "start",
        settle(&c, &all, &BTreeMap::new(), &down),
        &Seen::default(),
        &BTreeSet::new(),
    );
    let Some(mut seen) = first else {
        eprintln!("chaos: the cluster never settled after its jobs started");
        std::process::exit(1);
    };
    // Where each fixed job lives: its home for good.
    let homes: BTreeMap<String, String> = all
        .iter()
        .filter(|j| matches!(j.kind, Kind::Fixed | Kind::Static))
        .filter_map(|j| {
            seen.copies
                .get(&j.name)
                .and_then(|c| c.first())
                .map(|c| (j.name.clone(), c.0.clone()))
        })
        .collect();

    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    while Instant::now() < end {
        let fault = rng.gen_range(0..6);
        if fault == 5 {
            // An etcd member dies (SIGKILL) and comes back on its data:
            // no container may stop, no job move.
            let member = rng.gen_range(0..ETCD_MEMBERS);
            tally.faults += 1;
            c.etcd_mut().kill(member);
            std::thread::sleep(Duration::from_secs(rng.gen_range(1..6)));
            if let Err(e) = c.etcd_mut().restart(member) {
                eprintln!("chaos: etcd member {member} did not come back: {e}");
                std::process::exit(2);
            }
            let before = seen;
            seen = tally
                .record(
                    &format!("kill etcd member m{member}"),
                    settle(&c, &all, &homes, &down),
                    &before,
                    &BTreeSet::new(),
                )
                .or_else(|| look(&c, &down))
                .unwrap_or_default();
            continue;
        }
        let victim = c.node(rng.gen_range(0..HOSTS));
        let v = victim.name().to_string();
        let touched: BTreeSet<String> = [v.clone()].into();
        tally.faults += 1;
        let before = seen;
        let next = match fault {
            0 => {
                let _ = victim.kill();
                down.insert(v.clone());
                let during = tally.record(
                    &format!("kill {v}"),
                    settle(&c, &all, &homes, &down),
                    &before,
                    &touched,
                );
                let _ = victim.restart();
                down.remove(&v);
                let base = during.unwrap_or(before);
                tally.record(
                    &format!("restart {v}"),
                    settle(&c, &all, &homes, &down),
                    &base,
                    &touched,
                )
            }
            1 => {
                let _ = victim.partition();
                std::thread::sleep(Duration::from_secs(rng.gen_range(3..8)));
                let _ = victim.heal();
                tally.record(
                    &format!("partition {v}"),
                    settle(&c, &all, &homes, &down),
                    &before,
                    &touched,
                )
            }
            2 => {
                server_pid_signal(victim, "STOP");
                std::thread::sleep(Duration::from_secs(rng.gen_range(1..6)));
                server_pid_signal(victim, "CONT");
                tally.record(
                    &format!("sigstop server {v}"),
                    settle(&c, &all, &homes, &down),
                    &before,
                    &touched,
                )
            }
            3 => {
                docker_signal(victim, "STOP");
                std::thread::sleep(Duration::from_secs(rng.gen_range(1..6)));
                docker_signal(victim, "CONT");
                tally.record(
                    &format!("freeze docker {v}"),
                    settle(&c, &all, &homes, &down),
                    &before,
                    &touched,
                )
            }
            _ => {
                // All at once, as an upgrade of the fleet does it.
                std::thread::scope(|s| {
                    for n in c.nodes() {
                        s.spawn(|| n.stop_server());
                    }
                });
                std::thread::scope(|s| {
                    for n in c.nodes() {
                        s.spawn(|| n.start_server());
                    }
                });
                tally.record(
                    "restart every server",
                    settle(&c, &all, &homes, &down),
                    &before,
                    &BTreeSet::new(),
                )
            }
        };
        seen = next.or_else(|| look(&c, &down)).unwrap_or_default();
    }
    for f in &tally.failures {
        eprintln!("chaos: FAILED {f}");
    }
    let ok = tally.failures.is_empty();
    println!(
        "{}",
        serde_json::json!({
            "faults": tally.faults,
            "seed": seed,
            "minutes": minutes,
            "settle_p50_s": (percentile(&tally.settles, 0.5) * 10.0).round() / 10.0,
            "settle_p99_s": (percentile(&tally.settles, 0.99) * 10.0).round() / 10.0,
            "doubled": tally.doubled,
            "lost": tally.lost,
            "stopped_by_mistake": tally.stopped_by_mistake,
        })
    );
    if !ok {
        c.print_logs();
        std::process::exit(1);
    }
}
