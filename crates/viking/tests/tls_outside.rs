//! The harness's cluster over TLS, checked from the outside (issue 15):
//! its etcd answers only clients with a certificate from the cluster's CA
//! (etcdctl in plain HTTP, over TLS without a certificate and with another
//! CA's certificate is refused; with the cluster's it reads), a workload
//! container reaches no data through etcd's port, and a node's API answers
//! nothing usable in plain HTTP while https with the CA and the token works.
//!
//! Needs `scripts/test-images.sh --node`, `etcdctl` and `curl`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use viking_testkit::{eventually, Cluster, ClusterOpts, POLL};

const BUSYBOX: &str = "viking-test/busybox";

fn text(o: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// `etcdctl get /viking --prefix --keys-only` at `endpoint` with `flags`.
fn etcd_keys(endpoint: &str, flags: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--dial-timeout", "3s"])
        .args(["--command-timeout", "5s"])
        .args(flags)
        .args(["get", "/viking", "--prefix", "--keys-only"])
        .output()
        .expect("etcdctl (install etcd-client)")
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl")
}

#[test]
fn etcd_and_the_api_answer_only_through_the_clusters_ca() {
    let c = Cluster::start(
        2,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            ..Default::default()
        },
    )
    .expect("start a 2-node cluster");
    assert!(c.tls(), "the harness runs over TLS by default");
    let ca = c.ca_file().expect("the cluster's CA");
    let ca = ca.to_str().expect("utf-8 path");
    let https = c.etcd_endpoint().to_string();
    assert!(https.starts_with("https://"), "{https}");
    let plain = https.replacen("https://", "http://", 1);

    // With the cluster's CA and a certificate it signed, etcd answers: the
    // servers registered (they reach etcd with their own certificates).
    let ok = eventually(
        "etcd to list both hosts",
        Duration::from_secs(20),
        POLL,
        || {
            let o = c
                .etcdctl()
                .args(["get", "/viking/hosts/", "--prefix", "--keys-only"])
                .output()
                .expect("etcdctl");
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            if o.status.success()
                && out.contains("/viking/hosts/n1")
                && out.contains("/viking/hosts/n2")
            {
                Ok(out)
            } else {
                Err(text(&o))
            }
        },
    );
    assert!(ok.contains("/viking/hosts/n1"), "{ok}");

    // Without a certificate, in plain HTTP or over TLS, etcd answers
    // nothing; nor to a certificate from another CA.
    let stranger = tempfile::tempdir().expect("tempdir");
    let other = viking_pki::Ca::generate("stranger").expect("ca");
    let cert = other
        .issue(
            "n1",
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), c.gateway().into()],
            &[],
            viking_pki::CERT_LIFETIME,
        )
        .expect("cert");
    let cert_file = stranger.path().join("n1.pem");
    let key_file = stranger.path().join("n1-key.pem");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let (cert_file, key_file) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    for (what, endpoint, flags) in [
        ("plain HTTP", plain.as_str(), vec![]),
        (
            "TLS without a certificate",
            https.as_str(),
            vec!["--cacert", ca],
        ),
        (
            "TLS with another CA's certificate",
            https.as_str(),
            vec!["--cacert", ca, "--cert", cert_file, "--key", key_file],
        ),
    ] {
        let o = etcd_keys(endpoint, &flags);
        assert!(
            !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("/viking/"),
            "etcdctl with {what} was answered: {}",
            text(&o)
        );
    }
    // The harness's own certificate, given by hand, reads.
    let (mine, mine_key) = c.client_cert_files().expect("client certificate");
    let o = etcd_keys(
        &https,
        &[
            "--cacert",
            ca,
            "--cert",
            mine.to_str().unwrap(),
            "--key",
            mine_key.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("/viking/hosts/"),
        "{}",
        text(&o)
    );

    // From inside a workload container, etcd's port on the gateway answers
    // nothing: a range request in plain HTTP (etcd's JSON gateway) gets
    // the connection (busybox nc exits 1 when it cannot connect) and not a
    // byte back.
    let n1 = c.node(0);
    let body = r#"{"key":"L3Zpa2luZy8=","range_end":"L3Zpa2luZzA="}"#;
    let script = format!(
        "printf 'POST /v3/kv/range HTTP/1.1\\r\\nHost: etcd\\r\\nContent-Length: {len}\\r\\n\\r\\n%s' '{body}' \
         | nc -w 5 {gw} {port} 2>&1; echo \"exit=$?\"",
        len = body.len(),
        gw = c.gateway(),
        port = c.etcd().port(),
    );
    let out = n1
        .cli_ok(["run", "--rm", BUSYBOX, "sh", "-c", &script])
        .expect("a workload container");
    eprintln!("probe from a workload: {out}");
    assert!(
        !out.contains("kvs") && !out.contains("HTTP/1."),
        "etcd answered a workload: {out}"
    );
    assert_eq!(out.trim(), "exit=0", "the probe reached etcd's port");

    // The API: plain HTTP to the TLS port gets no usable answer, even with
    // the token; https with the CA and the token works, without the token
    // it is refused, and without the CA curl does not trust the server.
    let node = c.node(1);
    let addr = format!("{}:8791", node.ip());
    let bearer = format!("Authorization: Bearer {}", c.token());
    let o = curl(&["-H", &bearer, &format!("http://{addr}/v1/ping")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && !out.contains("\"name\""),
        "plain HTTP was answered: {}",
        text(&o)
    );
    let o = curl(&[
        "--cacert",
        ca,
        "-H",
        &bearer,
        &format!("https://{addr}/v1/ping"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.ends_with("\n200") && out.contains("\"name\":\"n2\""),
        "{}",
        text(&o)
    );
    let o = curl(&["--cacert", ca, &format!("https://{addr}/v1/ps")]);
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("\n401"),
        "no token: {}",
        text(&o)
    );
    let o = curl(&["-H", &bearer, &format!("https://{addr}/v1/ping")]);
    assert!(
        !o.status.success(),
        "a server not signed by a CA curl trusts: {}",
        text(&o)
    );

    // viking-client with the harness's TLS configuration.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client =
        viking_client::Client::with_tls(&node.url(), Some(c.token().to_string()), c.client_tls())
            .expect("client");
    let ping = rt.block_on(client.ping()).expect("ping over TLS");
    assert_eq!(ping.name, "n2");
    let plain_client =
        viking_client::Client::new(&format!("http://{addr}"), Some(c.token().to_string()))
            .expect("client");
    assert!(
        rt.block_on(plain_client.ping()).is_err(),
        "a plain-HTTP client got a ping"
    );
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What TLS costs, for `scripts/bench-tls.sh`: two 2-node clusters of the
/// harness from the same `viking` binary (`$VIKING_BENCH_BIN`, else this
/// crate's), one over TLS and one plain (`insecure_http`), measured
/// interleaved so that the machine's noise hits both alike. Each call goes
/// to n1 and the job is pinned to n2, so every byte crosses the CLI's
/// connection, the server-to-server relay and (for `run -d`) etcd.
/// `viking run -d` latency: `$BENCH_N` (20) runs each, median; the pipe:
/// `$BENCH_PIPE_RUNS` (3) runs each of `$BENCH_PIPE_MIB` (200) MiB through
/// `viking run -i --viking-host n2 busybox cat | wc -c`, MiB/s median.
#[test]
#[ignore = "a benchmark: run by scripts/bench-tls.sh"]
fn bench_tls_against_plain() {
    use std::time::Instant;
    let bin = std::env::var("VIKING_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_viking").to_string());
    let n = env_or("BENCH_N", 20);
    let pipe_runs = env_or("BENCH_PIPE_RUNS", 3);
    let pipe_mib = env_or("BENCH_PIPE_MIB", 200);
    let start = |insecure_http: bool| {
        Cluster::start(
            2,
            ClusterOpts {
                viking_bin: Some(bin.clone().into()),
                insecure_http,
                ..Default::default()
            },
        )
        .expect("start a 2-node cluster")
    };
    let tls = start(false);
    let plain = start(true);
    assert!(tls.tls() && !plain.tls());
    let modes = [("tls", &tls), ("plain", &plain)];
    // Both see both hosts before anything is measured.
    for (_, c) in modes {
        eventually("two hosts", Duration::from_secs(30), POLL, || {
            c.node(0)
                .cli_json(["hosts", "--json"])
                .ok()
                .and_then(|v| v.as_array().map(|a| a.len() == 2))
                .unwrap_or(false)
        });
    }
    // Interleaved: tls first in odd rounds, plain first in even ones.
    let order = |i: usize| if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
    let mut run_ms = [Vec::new(), Vec::new()];
    for i in 0..n {
        for m in order(i) {
            let c = modes[m].1;
            let name = format!("j{i}");
            let t0 = Instant::now();
            let o = c.node(0).cli([
                "run",
                "-d",
                "--name",
                &name,
                "--viking-host",
                "n2",
                BUSYBOX,
                "sleep",
                "600",
            ]);
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            assert!(o.status.success(), "{} run: {}", modes[m].0, text(&o));
            run_ms[m].push(ms);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let payload = dir.path().join("payload");
    let bytes = pipe_mib * 1024 * 1024;
    let o = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&payload).expect("payload"))
        .output()
        .expect("head");
    assert!(o.status.success());
    let mut pipe = [Vec::new(), Vec::new()];
    for i in 0..pipe_runs {
        for m in order(i) {
            let mut cli = modes[m].1.node(0).cli_command();
            cli.args(["run", "-i", "--viking-host", "n2", BUSYBOX, "cat"]);
            let t0 = Instant::now();
            // viking ... <payload | wc -c
            let mut wc = Command::new("wc")
                .arg("-c")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("wc");
            let into_wc = wc.stdin.take().expect("wc's stdin");
            let status = cli
                .stdin(std::fs::File::open(&payload).expect("payload"))
                .stdout(into_wc)
                .status()
                .expect("viking run -i");
            // The command holds wc's end of the pipe: wc sees EOF once it goes.
            drop(cli);
            let o = wc.wait_with_output().expect("wc");
            assert!(status.success(), "{} pipe: {status}", modes[m].0);
            let secs = t0.elapsed().as_secs_f64();
            let count = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert_eq!(
                count,
                bytes.to_string(),
                "{} pipe: {}",
                modes[m].0,
                text(&o)
            );
            pipe[m].push(pipe_mib as f64 / secs);
        }
    }
    let run = [median(&mut run_ms[0]), median(&mut run_ms[1])];
    let mibs = [median(&mut pipe[0]), median(&mut pipe[1])];
    let (run_ratio, pipe_ratio) = (run[0] / run[1], mibs[0] / mibs[1]);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    eprintln!("bench-tls: run -d ms tls {:?}", run_ms[0]);
    eprintln!("bench-tls: run -d ms plain {:?}", run_ms[1]);
    eprintln!(
        "bench-tls: pipe MiB/s tls {:?} plain {:?}",
        pipe[0], pipe[1]
    );
    println!("| benchmark | tls | plain | tls/plain | target | |");
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| `viking run -d` (n1 → n2), median of {n} | {:.1} ms | {:.1} ms | {run_ratio:.2} | <= 1.10 | {} |",
        run[0],
        run[1],
        verdict(run_ratio <= 1.10)
    );
    println!(
        "| {pipe_mib} MiB through `run -i cat` (n1 → n2), median of {pipe_runs} | {:.1} MiB/s | {:.1} MiB/s | {pipe_ratio:.2} | >= 0.9 | {} |",
        mibs[0],
        mibs[1],
        verdict(pipe_ratio >= 0.9)
    );
}
