//! dowding benchmark (no criterion): placements per second of
//! `viking_core::scheduler::place` over fleet snapshots of 100, 1,000 and
//! 10,000 hosts, and what one host costs (ns/host) as the fleet grows.
//!
//! Each snapshot carries 20 jobs per host worth of load: running counts
//! around 20, a few host ports in use on every host, a mix of tags
//! (`ssd`, `gpu`, `zone=a|b|c`) and 2% dead hosts. Five kinds of job are
//! placed: plain, filtered by tags, pinned to one host, fixed with a history,
//! and one publishing a host port that a third of the hosts already use;
//! "mix" cycles through the five.
//!
//! The baseline, measured in the same run over the same snapshot, is a bare
//! scan that only ranks the live hosts (what any placement must at least do);
//! `x scan` is place()'s cost relative to it, so machine noise cancels out.
//! Every figure is the median of several timed samples.
//!
//! Run with `cargo bench -p viking-core --bench dowding`
//! (`DOWDING_SAMPLE_MS` sets the length of one sample, default 60 ms).
//! Target: >= 100,000 placements/s for the mix at 1,000 hosts.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use viking_core::job::{Job, Proto};
use viking_core::records::History;
use viking_core::scheduler::{place, HostSnapshot, Reservation};

const SIZES: [usize; 3] = [100, 1_000, 10_000];
const JOBS_PER_HOST: u64 = 20;
const SAMPLES: usize = 7;
const TARGET_AT_1000: f64 = 100_000.0;

/// A small deterministic generator (xorshift64*), so every run sees the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn host_name(i: usize) -> String {
    format!("host-{i:05}")
}

/// A fleet of `n` hosts, in name order like floki's listing.
fn fleet(n: usize) -> Vec<HostSnapshot> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    (0..n)
        .map(|i| {
            let mut tags = BTreeSet::new();
            tags.insert(format!("zone={}", ["a", "b", "c"][i % 3]));
            if i % 2 == 0 {
                tags.insert("ssd".to_string());
            }
            if i % 10 == 0 {
                tags.insert("gpu".to_string());
            }
            // About 20 jobs per host; about a quarter of them publish a host port.
            let running = JOBS_PER_HOST / 2 + rng.below(JOBS_PER_HOST + 1);
            let mut used_ports = BTreeSet::new();
            for k in 0..running {
                if rng.below(4) == 0 {
                    used_ports.insert((30_000 + (k * 7 + rng.below(1000)) as u16, Proto::Tcp));
                }
            }
            // The port the "port" job wants is taken on a third of the hosts.
            if i % 3 == 1 {
                used_ports.insert((8080, Proto::Tcp));
            }
            let memory = 16 << 30;
            HostSnapshot {
                name: host_name(i),
                alive: rng.below(50) != 0,
                tags,
                running,
                memory,
                memory_used: rng.below(memory),
                cpu_used: 0,
                used_ports,
                cpus: 16_000,
                reserved: Reservation {
                    memory: running * (64 << 20),
                    cpus: 0,
                },
            }
        })
        .collect()
}

struct Case {
    kind: &'static str,
    job: Job,
    history: History,
}

fn job(doc: &str) -> Job {
    Job::parse(doc.as_bytes(), || "bench".into()).expect("bench job parses")
}

/// The five kinds of job, sized to the fleet (the pinned and fixed hosts are
/// in the middle of it and alive).
fn cases(hosts: &[HostSnapshot]) -> Vec<Case> {
    let mid = hosts
        .iter()
        .skip(hosts.len() / 2)
        .find(|h| h.alive)
        .expect("a live host")
        .name
        .clone();
    let mut fixed_history = History::default();
    for (t, h) in hosts.iter().take(19).enumerate() {
        fixed_history.push(&h.name, t as u64);
    }
    fixed_history.push(&mid, 19);
    vec![
        Case {
            kind: "plain",
            job: job(r#"{"image":"busybox"}"#),
            history: History::default(),
        },
        Case {
            kind: "tags",
            job: job(r#"{"image":"busybox","filter":["ssd","zone=b"]}"#),
            history: History::default(),
        },
        Case {
            kind: "pinned",
            job: job(&format!(r#"{{"image":"busybox","host":"{mid}"}}"#)),
            history: History::default(),
        },
        Case {
            kind: "fixed",
            job: job(r#"{"name":"db","image":"busybox","volumes":["/data"],"daemonize":true}"#),
            history: fixed_history,
        },
        Case {
            kind: "port",
            job: job(r#"{"name":"web","image":"busybox","ports":["8080:80"]}"#),
            history: History::default(),
        },
    ]
}

/// The baseline: rank the live hosts and keep the best, nothing else.
fn scan(hosts: &[HostSnapshot]) -> Option<&str> {
    hosts
        .iter()
        .filter(|h| h.alive)
        .min_by_key(|h| {
            (
                h.running,
                std::cmp::Reverse(h.memory.saturating_sub(h.memory_used)),
                h.name.as_str(),
            )
        })
        .map(|h| h.name.as_str())
}

/// Calls `f` repeatedly for `sample` and returns calls per second; the
/// median of `SAMPLES` samples (after one warm-up sample).
fn rate(sample: Duration, mut f: impl FnMut()) -> f64 {
    let mut rates = Vec::with_capacity(SAMPLES);
    for s in 0..=SAMPLES {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < sample {
            for _ in 0..8 {
                f();
            }
            n += 8;
        }
        if s > 0 {
            rates.push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn with_commas(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let sample = Duration::from_millis(
        std::env::var("DOWDING_SAMPLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    println!("dowding: place(, Reservation::default()) over fleets of {SIZES:?} hosts ({JOBS_PER_HOST} jobs/host of load)");
    println!();
    println!("| hosts | job | placements/s | µs/placement | ns/host | x scan | rejected |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut mix_at_1000 = None;
    for &n in &SIZES {
        let hosts = fleet(n);
        let cases = cases(&hosts);
        // Sanity: every kind of job finds a host, and the answers are stable.
        for c in &cases {
            let d = place(&c.job, Reservation::default(), &hosts, Some(&c.history));
            assert!(d.host.is_some(), "{}: {}", c.kind, d.explain());
        }
        let scan_rate = rate(sample, || {
            black_box(scan(black_box(&hosts)));
        });
        let row = |kind: &str, per_s: f64, rejected: String| {
            println!(
                "| {n} | {kind} | {} | {:.2} | {:.1} | {:.1} | {rejected} |",
                with_commas(per_s),
                1e6 / per_s,
                1e9 / per_s / n as f64,
                scan_rate / per_s,
            );
        };
        row("scan (baseline)", scan_rate, "-".into());
        for c in &cases {
            let per_s = rate(sample, || {
                black_box(place(
                    black_box(&c.job),
                    Reservation::default(),
                    black_box(&hosts),
                    black_box(Some(&c.history)),
                ));
            });
            let rejected = place(&c.job, Reservation::default(), &hosts, Some(&c.history))
                .rejected
                .len();
            row(c.kind, per_s, rejected.to_string());
        }
        let mut i = 0;
        let mix = rate(sample, || {
            let c = &cases[i % cases.len()];
            i += 1;
            black_box(place(
                black_box(&c.job),
                Reservation::default(),
                black_box(&hosts),
                black_box(Some(&c.history)),
            ));
        });
        row("**mix**", mix, "-".into());
        if n == 1_000 {
            mix_at_1000 = Some(mix);
        }
    }
    if let Some(mix) = mix_at_1000 {
        println!();
        println!(
            "mix at 1,000 hosts: {} placements/s (target >= {}): {}",
            with_commas(mix),
            with_commas(TARGET_AT_1000),
            if mix >= TARGET_AT_1000 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
