//! Store benchmark (no criterion): sequential put, get and compare-and-swap
//! on both backends, printed as a markdown table.
//!
//! The embedded store lives in a temp dir (so its fsyncs hit that disk);
//! etcd is a single local member started like the contract tests do.
//! Run with `cargo bench -p viking-store --bench store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use viking_store::testing::EtcdCluster;
use viking_store::{Compare, EmbeddedStore, EtcdStore, Op, Store, StoreExt};

const N: usize = 2000;

struct Row {
    backend: &'static str,
    op: &'static str,
    ops_per_sec: f64,
    median: Duration,
    p99: Duration,
}

fn summarize(backend: &'static str, op: &'static str, mut lat: Vec<Duration>) -> Row {
    let total: Duration = lat.iter().sum();
    lat.sort();
    Row {
        backend,
        op,
        ops_per_sec: lat.len() as f64 / total.as_secs_f64(),
        median: lat[lat.len() / 2],
        p99: lat[(lat.len() * 99) / 100],
    }
}

async fn bench(store: Arc<dyn Store>) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let backend = store.backend();
    let mut rows = Vec::new();

    // Warm up connections and caches.
    for i in 0..50 {
        store.put(&format!("warm/{i}"), "x").await?;
    }

    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        store
            .put(&format!("bench/put/{i:05}"), format!("value-{i}"))
            .await?;
        lat.push(t.elapsed());
    }
    rows.push(summarize(backend, "put", lat));

    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let key = format!("bench/put/{:05}", (i * 7919) % N);
        let t = Instant::now();
        let kv = store.get(&key).await?;
        lat.push(t.elapsed());
        if kv.is_none() {
            return Err(format!("{key} missing").into());
        }
    }
    rows.push(summarize(backend, "get", lat));

    let key = "bench/cas";
    let mut rev = store.put(key, "0").await?;
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        let resp = store
            .txn(
                vec![Compare::ModRevision(key.to_string(), rev)],
                vec![Op::Put {
                    key: key.to_string(),
                    value: i.to_string().into_bytes(),
                    lease: None,
                }],
                vec![],
            )
            .await?;
        lat.push(t.elapsed());
        if !resp.succeeded {
            return Err("cas lost unexpectedly".into());
        }
        rev = resp.revision;
    }
    rows.push(summarize(backend, "cas", lat));
    Ok(rows)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Started from the main thread, which outlives it.
    let etcd = EtcdCluster::start(1)?;
    let dir = tempfile::tempdir()?;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        let embedded: Arc<dyn Store> =
            EmbeddedStore::open(&dir.path().join("bench.redb"), "/viking")?;
        rows.extend(bench(embedded).await?);
        let etcd_store: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(&etcd.endpoints(), "/viking").await?);
        rows.extend(bench(etcd_store).await?);
        Ok::<_, Box<dyn std::error::Error>>(rows)
    })?;

    println!("N = {N} sequential operations per row, one client, loopback.\n");
    println!("| backend | op | ops/s | median latency | p99 latency |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.1} µs | {:.1} µs |",
            r.backend,
            r.op,
            r.ops_per_sec,
            r.median.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
