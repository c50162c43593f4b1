//! The API over TLS, end to end on one machine: a server with a certificate
//! from `viking ca`, the CLI trusting only the cluster's CA, and a server
//! that would show the token in plain text on the network refused.
//!
//! Needs the `viking-test/busybox` image (`scripts/test-images.sh`).

// Part of `common` is for the other single-host tests.
#[allow(dead_code, unused_imports)]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn viking(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run viking")
}

#[test]
fn the_api_over_tls_answers_only_through_the_clusters_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    assert!(viking(&["ca", "init", "--dir", p]).status.success());
    assert!(
        viking(&["ca", "issue", "srv", "--ip", "127.0.0.1", "--dir", p])
            .status
            .success()
    );
    let other = dir.path().join("other");
    let o = other.to_str().unwrap();
    assert!(viking(&["ca", "init", "--dir", o]).status.success());

    // Plain HTTP on the network is refused, naming the way out.
    let data = dir.path().join("plain");
    let mut plain = Server(
        Command::new(bin())
            .args(["server", "--listen", &format!("0.0.0.0:{}", free_port())])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let code = eventually(
        "the plain server to refuse to start",
        Duration::from_secs(20),
        POLL,
        || plain.0.try_wait().ok().flatten(),
    );
    assert_eq!(code.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(plain.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("--insecure-http") && err.contains("--tls-cert"),
        "{err}"
    );

    let port = free_port();
    let data = dir.path().join("data");
    let key = format!("/vt-tls-{port}");
    let token = "tls-test-token-0123456789";
    let _server = Server(
        Command::new(bin())
            .args([
                "server",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--name",
                "srv",
            ])
            .arg("--data-dir")
            .arg(&data)
            .args(["--key", &key, "--ip", "127.0.0.1"])
            .args([
                "--tls-cert",
                &format!("{p}/srv.pem"),
                "--tls-key",
                &format!("{p}/srv-key.pem"),
            ])
            .args(["--ca", &format!("{p}/ca.pem")])
            .env("VIKING_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let cli = |ca: &str, args: &[&str]| {
        Command::new(bin())
            .args(["--server", &url, "--ca", ca])
            .args(args)
            .env("VIKING_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ca = format!("{p}/ca.pem");
    eventually(
        "the TLS server to answer",
        Duration::from_secs(20),
        POLL,
        || cli(&ca, &["hosts"]).status.success(),
    );
    // The CLI works over TLS, an attached job's stream too.
    let out = cli(&ca, &["run", BUSYBOX, "echo", "over tls"]);
    assert_eq!(stdout(&out), "over tls\n", "{}", stderr(&out));
    // curl with the CA and the token; plain HTTP gets no answer.
    let ok = Command::new("curl")
        .args([
            "-sf",
            "--cacert",
            &ca,
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!("{url}/v1/ps"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let plain = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{port}/v1/ps"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "000",
        "plain HTTP was answered"
    );
    // A server whose certificate another CA signed is not trusted: the
    // handshake fails before any request (and the token) is sent.
    let out = cli(&format!("{o}/ca.pem"), &["ps"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    // https without a CA is refused before connecting.
    let out = Command::new(bin())
        .args(["--server", &url, "ps"])
        .env("VIKING_TOKEN", token)
        .env_remove("VIKING_CA")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));
}
