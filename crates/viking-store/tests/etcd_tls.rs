//! etcd with mutual TLS, as a mesh runs it: it answers only clients that
//! show a certificate from the cluster's CA. A real etcd on loopback with
//! certificates from viking-pki; the store connects with its own.

use std::path::Path;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates_answers_only_the_clusters_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("t").expect("ca");
    let lo = ["127.0.0.1".parse().expect("ip")];
    let server = ca
        .issue("etcd", &lo, &[], CERT_LIFETIME)
        .expect("server cert");
    let client = ca
        .issue("n1", &lo, &[], CERT_LIFETIME)
        .expect("client cert");
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let cert_file = write(dir.path(), "etcd.pem", &server.cert_pem);
    let key_file = write(dir.path(), "etcd-key.pem", &server.key_pem);
    let (cport, pport) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let bin = viking_store::testing::etcd_binary().expect("etcd binary");
    let _etcd = Etcd(
        Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--cert-file", &cert_file, "--key-file", &key_file])
            .args(["--client-cert-auth", "--trusted-ca-file", &ca_file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let tls = EtcdTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: client.cert_pem.clone(),
        key_pem: client.key_pem.clone(),
    };
    let endpoints = vec![url.clone()];
    let store = viking_testkit::eventually_async(
        "etcd to answer over TLS",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || EtcdStore::connect_tls(&endpoints, "/t", Some(&tls)),
    )
    .await;
    store
        .put("k", "v")
        .await
        .expect("put with the cluster's certificate");
    assert_eq!(store.get("k").await.expect("get").expect("k").value, b"v");

    // Without a certificate, or with another CA's, etcd does not answer.
    assert!(
        EtcdStore::connect(&endpoints, "/t").await.is_err(),
        "plain client"
    );
    let stranger = Ca::generate("other").expect("ca");
    let foreign = stranger.issue("n1", &lo, &[], CERT_LIFETIME).expect("cert");
    let other = EtcdTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: foreign.cert_pem,
        key_pem: foreign.key_pem,
    };
    assert!(
        EtcdStore::connect_tls(&endpoints, "/t", Some(&other))
            .await
            .is_err(),
        "a certificate of another CA"
    );
    // etcdctl, from the outside: refused without a client certificate,
    // answered with one.
    let ctl = |extra: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &url,
                "--cacert",
                &ca_file,
                "--dial-timeout",
                "3s",
            ])
            .args(extra)
            .args(["get", "/t/k", "--print-value-only"])
            .output()
            .expect("etcdctl")
    };
    let refused = ctl(&[]);
    assert!(
        !refused.status.success() || refused.stdout.is_empty(),
        "etcdctl without a certificate read the key"
    );
    let cert = write(dir.path(), "n1.pem", &client.cert_pem);
    let key = write(dir.path(), "n1-key.pem", &client.key_pem);
    let ok = ctl(&["--cert", &cert, "--key", &key]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "v");
    // And the store works on: a watch-free read through the same client.
    assert!(store.revision().await.expect("revision") > 0);
}
