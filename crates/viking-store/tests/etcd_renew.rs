//! A store's client certificate renewed while it runs
//! (`EtcdStore::set_identity`): a real etcd with client-certificate auth on
//! loopback. The store first connects with a certificate of a few seconds;
//! once it has expired, etcd is restarted so every connection is new: the
//! renewed store goes on, a store left with the old certificate cannot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use viking_pki::{Ca, CERT_LIFETIME};
use viking_store::{EtcdStore, EtcdTls, Store, StoreExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, s: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, s).expect("write");
    p.display().to_string()
}

/// One etcd member with TLS and client-certificate auth, on fixed ports
/// and data directory (so it can be started again).
struct Member {
    data: PathBuf,
    url: String,
    peer: String,
    cert: String,
    key: String,
    ca: String,
}

impl Member {
    fn start(&self) -> Etcd {
        let bin = viking_store::testing::etcd_binary().expect("etcd binary");
        Etcd(
            Command::new(bin)
                .args(["--name", "t", "--data-dir"])
                .arg(&self.data)
                .args(["--listen-client-urls", &self.url])
                .args(["--advertise-client-urls", &self.url])
                .args(["--listen-peer-urls", &self.peer])
                .args(["--initial-advertise-peer-urls", &self.peer])
                .args(["--initial-cluster", &format!("t={}", self.peer)])
                .args(["--cert-file", &self.cert, "--key-file", &self.key])
                .args(["--client-cert-auth", "--trusted-ca-file", &self.ca])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_used_for_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("t").expect("ca");
    let lo = ["127.0.0.1".parse().expect("ip")];
    let server = ca
        .issue("etcd", &lo, &[], CERT_LIFETIME)
        .expect("server cert");
    let (cport, pport) = (free_port(), free_port());
    let member = Member {
        data: dir.path().join("data"),
        url: format!("https://127.0.0.1:{cport}"),
        peer: format!("http://127.0.0.1:{pport}"),
        cert: write(dir.path(), "etcd.pem", &server.cert_pem),
        key: write(dir.path(), "etcd-key.pem", &server.key_pem),
        ca: write(dir.path(), "ca.pem", ca.cert_pem()),
    };
    let mut etcd = member.start();
    let tls = |cert: &viking_pki::Issued| EtcdTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    };
    let endpoints = vec![member.url.clone()];
    let connect = |t: EtcdTls| {
        let endpoints = endpoints.clone();
        viking_testkit::eventually_async(
            "etcd to answer over TLS",
            Duration::from_secs(20),
            Duration::from_millis(100),
            move || {
                let (endpoints, t) = (endpoints.clone(), t.clone());
                async move { EtcdStore::connect_tls(&endpoints, "/t", Some(&t)).await }
            },
        )
    };
    // A certificate of a few seconds, and a store left with it.
    let short = ca
        .issue("n1", &lo, &[], Duration::from_secs(4))
        .expect("short cert");
    let store = connect(tls(&short)).await;
    let stale = connect(tls(&short)).await;
    store.put("k", "v1").await.expect("put");

    // A certificate etcd does not trust is refused and changes nothing.
    let stranger = Ca::generate("other").expect("ca");
    let foreign = stranger.issue("n1", &lo, &[], CERT_LIFETIME).expect("cert");
    assert!(store.set_identity(&tls(&foreign)).await.is_err());
    store
        .put("k", "v2")
        .await
        .expect("put after a refused renewal");

    let long = ca.issue("n1", &lo, &[], CERT_LIFETIME).expect("long cert");
    store.set_identity(&tls(&long)).await.expect("renew");

    // The short certificate expires; a restart of etcd makes every
    // connection new.
    let expiry = viking_pki::cert_info(&short.cert_pem)
        .expect("info")
        .not_after;
    viking_testkit::eventually_async(
        "the short certificate to expire",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                > expiry
        },
    )
    .await;
    drop(etcd);
    etcd = member.start();
    let value = viking_testkit::eventually_async(
        "the renewed store to read from the restarted etcd",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            store
                .get("k")
                .await
                .map_err(|e| e.to_string())
                .and_then(|kv| kv.ok_or_else(|| "no key".to_string()))
        },
    )
    .await;
    assert_eq!(value.value, b"v2");
    // The store left with the expired certificate is refused.
    assert!(
        stale.get("k").await.is_err(),
        "a store with an expired certificate was answered"
    );
    drop(etcd);
}
