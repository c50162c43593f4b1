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

/// A `viking server` over TLS with the certificate `NAME.pem` of `pki`, on
/// the embedded store under `data`; its port.
fn tls_server(
    pki: &std::path::Path,
    name: &str,
    data: &std::path::Path,
    token: &str,
) -> (Server, u16) {
    let port = free_port();
    let p = pki.display();
    let server = Server(
        Command::new(bin())
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                name,
            ])
            .arg("--data-dir")
            .arg(data)
            .args(["--key", &format!("/vt-tls-{port}"), "--ip", "127.0.0.1"])
            .args(["--tls-cert", &format!("{p}/{name}.pem")])
            .args(["--tls-key", &format!("{p}/{name}-key.pem")])
            .args(["--ca", &format!("{p}/ca.pem")])
            .env("VIKING_TOKEN", token)
            .env("VIKING_LOG", "info,viking_server::renew=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    (server, port)
}

/// The certificate a TLS server at `port` shows now (trusting `ca_pem`).
fn served(port: u16, ca_pem: &str) -> Result<viking_pki::CertInfo, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = viking_pki::client_config(ca_pem, None).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| "no handshake".to_string())?
        .map_err(|e| e.to_string())?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no certificate")?[0]
            .clone();
        viking_pki::cert_info_der(der.as_ref()).map_err(|e| e.to_string())
    })
}

/// Put the cluster's CA (`pki/ca.pem`, `pki/ca-key.pem`) in the embedded
/// store of `data` under `key`, as `viking mesh init` keeps it in etcd.
fn put_ca_record(pki: &std::path::Path, data: &std::path::Path, key: &str) {
    use viking_store::{Store, StoreExt};
    let rec = viking_core::records::CaRecord {
        cert_pem: std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(pki.join("ca-key.pem")).unwrap(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(data).unwrap();
        let store =
            viking_store::embedded::EmbeddedStore::open(&data.join("viking.redb"), key).unwrap();
        store
            .put(
                viking_core::keys::MESH_CA,
                viking_core::records::encode(&rec).unwrap(),
            )
            .await
            .unwrap();
        assert!(store
            .get(viking_core::keys::MESH_CA)
            .await
            .unwrap()
            .is_some());
    });
}

#[test]
fn a_server_renews_its_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    assert!(viking(&["ca", "init", "--dir", p]).status.success());
    let out = viking(&[
        "ca",
        "issue",
        "srv",
        "--ip",
        "127.0.0.1",
        "--lifetime",
        "30s",
        "--dir",
        p,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let cert_file = pki.join("srv.pem");
    let key_file = pki.join("srv-key.pem");
    let (cert0, key0) = (
        std::fs::read_to_string(&cert_file).unwrap(),
        std::fs::read_to_string(&key_file).unwrap(),
    );
    let first = viking_pki::cert_info(&cert0).unwrap();
    assert_eq!(
        first.lifetime(),
        Duration::from_secs(33),
        "30 s and its slack"
    );

    let data = dir.path().join("data");
    let token = "renew-test-token-0123456789";
    // The server's store key is /vt-tls-PORT: write the CA once it is known.
    let port = free_port();
    put_ca_record(&pki, &data, &format!("/vt-tls-{port}"));
    let mut server = Server(
        Command::new(bin())
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--name",
                "srv",
            ])
            .arg("--data-dir")
            .arg(&data)
            .args(["--key", &format!("/vt-tls-{port}"), "--ip", "127.0.0.1"])
            .args(["--tls-cert", cert_file.to_str().unwrap()])
            .args(["--tls-key", key_file.to_str().unwrap()])
            .args(["--ca", &format!("{p}/ca.pem")])
            .env("VIKING_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let url = format!("https://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        Command::new(bin())
            .args(["--server", &url, "--ca", &format!("{p}/ca.pem")])
            .args(args)
            .env("VIKING_TOKEN", token)
            .env("VIKING_DATA", dir.path().join("cli"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    eventually(
        "the TLS server to answer",
        Duration::from_secs(20),
        POLL,
        || cli(&["hosts"]).status.success(),
    );
    let shown = served(port, &ca).unwrap();
    assert_eq!(
        shown.fingerprint, first.fingerprint,
        "it serves its certificate"
    );

    // Renewed between 50 % and 80 % of 33 s from not_before (3 s before
    // the issue), so within about 24 s; the CLI works all along.
    let mut calls = 0;
    let renewed = eventually(
        "the server to show a renewed certificate",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let out = cli(&["hosts"]);
            assert!(out.status.success(), "a call failed: {}", stderr(&out));
            calls += 1;
            served(port, &ca)
                .ok()
                .filter(|c| c.fingerprint != first.fingerprint)
        },
    );
    assert!(calls > 1, "the CLI was called across the swap");
    assert_ne!(renewed.serial, first.serial);
    assert!(renewed.not_before > first.not_before);
    assert_eq!(renewed.lifetime(), first.lifetime(), "the same lifetime");
    // Made between 50 % and 80 % of the first one's span (a reissue starts
    // 3 s before it is made; a second of rounding either way).
    let made = renewed.not_before + 3;
    let span = first.lifetime().as_secs();
    assert!(
        (first.not_before + span / 2 - 1..=first.not_before + span * 4 / 5 + 1).contains(&made),
        "renewed at {} s of {span} s",
        made - first.not_before
    );
    // The same process, still running.
    assert!(server.0.try_wait().unwrap().is_none(), "the server exited");
    assert_eq!(server.0.id(), pid);
    // The files of the flags hold the new certificate and key.
    let cert1 = std::fs::read_to_string(&cert_file).unwrap();
    let key1 = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(cert1, cert0);
    assert_ne!(key1, key0);
    let on_disk = viking_pki::cert_info(&cert1).unwrap();
    assert!(
        on_disk.fingerprint == renewed.fingerprint || on_disk.not_before > renewed.not_before,
        "the file holds the served certificate (or a later one)"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // And a new client works with it.
    let out = cli(&["ps", "-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A TLS server that records what its clients send once the handshake is
/// done, and answers 503: it stands for a server the CLI must not send the
/// token to. Returns its port, the plaintext received, and the number of
/// connections accepted.
fn spy(
    pki: &std::path::Path,
    name: &str,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rd = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    let config = viking_pki::server_config(
        &rd(&format!("{name}.pem")),
        &rd(&format!("{name}-key.pem")),
        &rd("ca.pem"),
        viking_pki::ClientAuth::Optional,
    )
    .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, accepted2) = (seen.clone(), accepted.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted2.fetch_add(1, SeqCst);
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
                if let Ok(Ok(n)) = read {
                    seen2.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
    });
    (port, seen, accepted)
}

#[test]
fn the_cli_talks_through_contexts_and_keeps_the_token_from_other_cas() {
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
    let token = "context-test-token-0123456789";
    let (_server, port) = tls_server(&pki, "srv", &dir.path().join("data"), token);
    let url = format!("https://127.0.0.1:{port}");

    // The CLI on "a machine": its own home and data dir (VIKING_DATA: root's
    // is /var/lib/viking whatever HOME says), no other VIKING_* set.
    let machine = |name: &str| {
        let home = dir.path().join(name);
        let data = home.join("data");
        std::fs::create_dir_all(&data).unwrap();
        move |args: &[&str]| {
            Command::new(bin())
                .args(args)
                .env("HOME", &home)
                .env("VIKING_DATA", &data)
                .env_remove("VIKING_SERVER")
                .env_remove("VIKING_TOKEN")
                .env_remove("VIKING_TOKEN_FILE")
                .env_remove("VIKING_CA")
                .env_remove("VIKING_CONTEXT")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    };
    let a = machine("machine-a");
    let ca1 = format!("{p}/ca.pem");
    eventually(
        "the TLS server to answer",
        Duration::from_secs(20),
        POLL,
        || {
            a(&["--server", &url, "--ca", &ca1, "--token", token, "hosts"])
                .status
                .success()
        },
    );
    // Export from flags; it is a context file, token included.
    let out = a(&[
        "--server", &url, "--ca", &ca1, "--token", token, "context", "export",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exported["server"], url.as_str());
    assert_eq!(exported["token"], token);
    assert!(exported["ca"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    // Machine A keeps it as its default context (what mesh init writes):
    // the CLI works without flags.
    let a_data = dir.path().join("machine-a/data");
    let default_ctx = a_data.join("context.json");
    std::fs::write(&default_ctx, &out.stdout).unwrap();
    let out = a(&["hosts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("srv"), "{}", stdout(&out));
    // show: the context, the server, the CA's fingerprint, never the token.
    let out = a(&["context", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    let fp = viking_pki::fingerprint(&std::fs::read_to_string(&ca1).unwrap()).unwrap();
    assert!(shown.contains(default_ctx.to_str().unwrap()), "{shown}");
    assert!(shown.contains(&url) && shown.contains(&fp), "{shown}");
    assert!(
        shown.contains("present") && !shown.contains(token),
        "{shown}"
    );
    // Explicit flags win over the default context.
    let out = a(&["--token", "not-the-token-0123456789", "hosts"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = a(&["--server", "https://127.0.0.1:1", "hosts"]);
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
    let out = a(&["--ca", &format!("{o}/ca.pem"), "hosts"]);
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));

    // Machine B: nothing of its own; the exported file with --context (or
    // VIKING_CONTEXT).
    let b = machine("machine-b");
    let file = dir.path().join("exported.json");
    std::fs::copy(&default_ctx, &file).unwrap();
    let out = b(&["--context", file.to_str().unwrap(), "ps", "-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = b(&["--context", file.to_str().unwrap(), "context", "show"]);
    assert!(
        stdout(&out).contains(file.to_str().unwrap()),
        "{}",
        stdout(&out)
    );
    let out = b(&["context", "show"]);
    assert!(
        stdout(&out).contains("http://127.0.0.1:8791"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("absent"), "{}", stdout(&out));

    // A context whose CA did not sign the server's certificate: the CLI
    // stops at the handshake, and the server sees no request, so no token.
    // The spy stands for the server; with the right CA it does see the
    // token, so what keeps it out is the CA check.
    let (spy_port, seen, accepted) = spy(&pki, "srv");
    let ctx = |ca_dir: &str| {
        let path = dir.path().join(format!("spy-{}.json", ca_dir.len()));
        let c = serde_json::json!({
            "server": format!("https://127.0.0.1:{spy_port}"),
            "ca": std::fs::read_to_string(format!("{ca_dir}/ca.pem")).unwrap(),
            "token": token,
        });
        std::fs::write(&path, c.to_string()).unwrap();
        path
    };
    let wrong = ctx(o);
    let out = b(&["--context", wrong.to_str().unwrap(), "ps"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the CLI connected"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the spy got a request with a CA it is not of"
    );
    let right = ctx(p);
    let _ = b(&["--context", right.to_str().unwrap(), "ps"]);
    let got = eventually(
        "the spy to read the request",
        Duration::from_secs(10),
        POLL,
        || {
            let s = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            s.contains("GET").then_some(s)
        },
    );
    assert!(got.contains(&format!("Bearer {token}")), "{got}");
}
