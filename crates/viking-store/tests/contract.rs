//! The store contract: one suite of cases, each an `async fn` taking an
//! `Arc<dyn Store>`, run against both backends (an embedded store in a temp
//! dir, and a real etcd started by the tests), plus a few backend-specific
//! tests (persistence and locking for the embedded store, member failure
//! for etcd).
//!
//! etcd must be installed (`etcd-server` on Debian); the etcd tests fail,
//! never skip, without it.

use std::sync::Arc;
use std::time::Duration;
use viking_testkit::{eventually_async, POLL};

use viking_store::{
    Compare, EmbeddedStore, EtcdStore, EventKind, Op, Store, StoreError, StoreExt, WatchEvent,
    WatchStream,
};

/// Cases shared by both backends.
mod cases {
    use std::collections::HashSet;

    use viking_store::{spawn_keep_alive, Election, KeyValue};

    use super::*;

    pub async fn kv_basics(s: Arc<dyn Store>) {
        assert_eq!(s.get("kv/a").await.unwrap(), None);
        let r1 = s.put("kv/a", "one").await.unwrap();
        let a = s.get("kv/a").await.unwrap().unwrap();
        assert_eq!(
            a,
            KeyValue {
                key: "kv/a".into(),
                value: b"one".to_vec(),
                create_revision: r1,
                mod_revision: r1,
                lease: None,
            }
        );
        let r2 = s.put("kv/a", "two").await.unwrap();
        assert!(r2 > r1);
        let a = s.get("kv/a").await.unwrap().unwrap();
        assert_eq!(
            (a.value.as_slice(), a.create_revision, a.mod_revision),
            (&b"two"[..], r1, r2)
        );

        s.put("kv/c", "3").await.unwrap();
        s.put("kv/b", "2").await.unwrap();
        let r3 = s.put("kvx/outside", "x").await.unwrap();
        let (kvs, rev) = s.list("kv/").await.unwrap();
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["kv/a", "kv/b", "kv/c"]);
        assert!(rev >= r3);
        assert!(s.revision().await.unwrap() >= r3);
        let (all, _) = s.list("").await.unwrap();
        assert_eq!(all.len(), 4);

        assert!(s.delete("kv/a").await.unwrap());
        assert!(!s.delete("kv/a").await.unwrap());
        assert_eq!(s.get("kv/a").await.unwrap(), None);
        let (kvs, _) = s.list("kv/").await.unwrap();
        assert_eq!(kvs.len(), 2);
        assert!(!s.backend().is_empty());
        assert!(matches!(s.get("").await, Err(StoreError::Invalid(_))));
    }

    pub async fn get_many_in_order(s: Arc<dyn Store>) {
        for i in 0..70 {
            s.put(&format!("m/{i:03}"), format!("v{i}").as_bytes())
                .await
                .unwrap();
        }
        // More keys than one etcd read carries, some absent, out of order.
        let keys: Vec<String> = (0..80).rev().map(|i| format!("m/{i:03}")).collect();
        let got = s.get_many(&keys).await.unwrap();
        assert_eq!(got.len(), 80);
        for (k, v) in keys.iter().zip(&got) {
            let i: usize = k[2..].parse().unwrap();
            match v {
                Some(kv) => {
                    assert!(i < 70, "{k} is absent");
                    assert_eq!(&kv.key, k);
                    assert_eq!(kv.value, format!("v{i}").into_bytes());
                }
                None => assert!(i >= 70, "{k} is present"),
            }
        }
        assert!(s.get_many(&[]).await.unwrap().is_empty());
    }

    pub async fn create_if_absent(s: Arc<dyn Store>) {
        assert!(s.create("c/k", "first", None).await.unwrap());
        assert!(!s.create("c/k", "second", None).await.unwrap());
        assert_eq!(s.get("c/k").await.unwrap().unwrap().value, b"first");
        assert!(s.delete("c/k").await.unwrap());
        assert!(s.create("c/k", "third", None).await.unwrap());
        assert_eq!(s.get("c/k").await.unwrap().unwrap().value, b"third");
    }

    pub async fn cas_on_revision(s: Arc<dyn Store>) {
        assert!(s.cas("cas/k", 0, "v1").await.unwrap());
        assert!(!s.cas("cas/k", 0, "v1 again").await.unwrap());
        let kv = s.get("cas/k").await.unwrap().unwrap();
        assert!(!s
            .cas("cas/k", kv.mod_revision + 1000, "wrong")
            .await
            .unwrap());
        assert!(s.cas("cas/k", kv.mod_revision, "v2").await.unwrap());
        // The old revision is now stale.
        assert!(!s.cas("cas/k", kv.mod_revision, "v3").await.unwrap());
        let kv2 = s.get("cas/k").await.unwrap().unwrap();
        assert_eq!(kv2.value, b"v2");
        assert_eq!(kv2.create_revision, kv.create_revision);
    }

    pub async fn txn_atomicity(s: Arc<dyn Store>) {
        s.put("t/c", "to delete").await.unwrap();
        let success = vec![
            Op::Put {
                key: "t/a".into(),
                value: b"A".to_vec(),
                lease: None,
            },
            Op::Put {
                key: "t/b".into(),
                value: b"B".to_vec(),
                lease: None,
            },
            Op::Delete { key: "t/c".into() },
        ];
        let failure = vec![Op::Put {
            key: "t/failed".into(),
            value: b"yes".to_vec(),
            lease: None,
        }];
        let compares = vec![
            Compare::Absent("t/a".into()),
            Compare::Absent("t/b".into()),
            Compare::Exists("t/c".into()),
            Compare::Value("t/c".into(), b"to delete".to_vec()),
        ];
        let r = s
            .txn(compares.clone(), success.clone(), failure.clone())
            .await
            .unwrap();
        assert!(r.succeeded);
        let a = s.get("t/a").await.unwrap().unwrap();
        let b = s.get("t/b").await.unwrap().unwrap();
        assert_eq!(a.mod_revision, r.revision);
        assert_eq!(b.mod_revision, r.revision, "one revision for the whole txn");
        assert_eq!(s.get("t/c").await.unwrap(), None);
        assert_eq!(s.get("t/failed").await.unwrap(), None);

        // Same txn again: the compares fail, only the failure branch runs.
        let r2 = s.txn(compares, success, failure).await.unwrap();
        assert!(!r2.succeeded);
        assert_eq!(s.get("t/failed").await.unwrap().unwrap().value, b"yes");
        assert_eq!(s.get("t/a").await.unwrap().unwrap(), a);
        assert_eq!(s.get("t/b").await.unwrap().unwrap(), b);

        // A failing compare in the middle blocks every write.
        let r3 = s
            .txn(
                vec![
                    Compare::Exists("t/a".into()),
                    Compare::ModRevision("t/b".into(), b.mod_revision + 1),
                ],
                vec![Op::Delete { key: "t/a".into() }],
                vec![],
            )
            .await
            .unwrap();
        assert!(!r3.succeeded);
        assert!(s.get("t/a").await.unwrap().is_some());

        // An op that cannot be applied (unknown lease) aborts the whole txn.
        let err = s
            .txn(
                vec![],
                vec![
                    Op::Put {
                        key: "t/partial".into(),
                        value: b"no".to_vec(),
                        lease: None,
                    },
                    Op::Put {
                        key: "t/leased".into(),
                        value: b"no".to_vec(),
                        lease: Some(0x7a11_1eaf),
                    },
                ],
                vec![],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseNotFound(_)), "{err:?}");
        assert_eq!(s.get("t/partial").await.unwrap(), None);
        assert_eq!(s.get("t/leased").await.unwrap(), None);

        // Writing a key twice in one branch is rejected up front.
        let dup = s
            .txn(
                vec![],
                vec![
                    Op::Delete { key: "t/a".into() },
                    Op::Delete { key: "t/a".into() },
                ],
                vec![],
            )
            .await;
        assert!(matches!(dup, Err(StoreError::Invalid(_))), "{dup:?}");
    }

    pub async fn lease_keep_alive_keeps_keys(s: Arc<dyn Store>) {
        let ttl = Duration::from_secs(1);
        let lease = s.lease_grant(ttl).await.unwrap();
        s.put_with_lease("l/kept", "v", lease).await.unwrap();
        assert_eq!(s.get("l/kept").await.unwrap().unwrap().lease, Some(lease));
        let keeper = spawn_keep_alive(s.clone(), lease, ttl);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert!(!keeper.is_lost());
        assert!(s.get("l/kept").await.unwrap().is_some(), "kept alive");
        s.lease_keep_alive(lease).await.unwrap();
        drop(keeper);
        s.lease_revoke(lease).await.unwrap();
    }

    pub async fn lease_expiry_removes_keys(s: Arc<dyn Store>) {
        let lease = s.lease_grant(Duration::from_secs(1)).await.unwrap();
        let rev = s.put_with_lease("l/exp/a", "v", lease).await.unwrap();
        s.put_with_lease("l/exp/b", "v", lease).await.unwrap();
        s.put("l/exp/plain", "stays").await.unwrap();
        let mut w = s.watch("l/exp/", rev).await.unwrap();
        eventually_async(
            "the leased keys to expire",
            Duration::from_secs(6),
            POLL,
            || async { s.list("l/exp/").await.unwrap().0.len() == 1 },
        )
        .await;
        assert!(s.get("l/exp/plain").await.unwrap().is_some());
        assert!(matches!(
            s.lease_keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        assert!(matches!(
            s.put_with_lease("l/exp/c", "v", lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        let evs = collect(&mut w, 5).await;
        let deleted: HashSet<&str> = evs
            .iter()
            .filter(|e| e.kind == EventKind::Delete)
            .map(|e| e.kv.key.as_str())
            .collect();
        assert_eq!(deleted, HashSet::from(["l/exp/a", "l/exp/b"]), "{evs:?}");
    }

    pub async fn lease_revoke_removes_keys(s: Arc<dyn Store>) {
        let lease = s.lease_grant(Duration::from_secs(10)).await.unwrap();
        s.put_with_lease("l/rev/a", "v", lease).await.unwrap();
        s.create("l/rev/b", "v", Some(lease)).await.unwrap();
        let keeper = spawn_keep_alive(s.clone(), lease, Duration::from_secs(1));
        s.lease_revoke(lease).await.unwrap();
        assert_eq!(s.list("l/rev/").await.unwrap().0, vec![]);
        assert!(matches!(
            s.lease_revoke(lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        tokio::time::timeout(Duration::from_secs(3), keeper.lost())
            .await
            .expect("keep-alive reports the lost lease");
        assert!(keeper.is_lost());
    }

    pub async fn watch_in_order(s: Arc<dyn Store>) {
        let (_, start) = s.list("w/").await.unwrap();
        let mut live = s.watch("w/", start + 1).await.unwrap();
        let mut now = s.watch("w/", 0).await.unwrap();

        let mut expected: Vec<(EventKind, String, i64)> = Vec::new();
        for i in 0..5 {
            let r = s.put(&format!("w/k{i}"), format!("v{i}")).await.unwrap();
            expected.push((EventKind::Put, format!("w/k{i}"), r));
        }
        s.put("w-outside/k", "not watched").await.unwrap();
        let r = s.put("w/k0", "again").await.unwrap();
        expected.push((EventKind::Put, "w/k0".into(), r));
        let txn = s
            .txn(
                vec![],
                vec![
                    Op::Delete { key: "w/k1".into() },
                    Op::Put {
                        key: "w/k9".into(),
                        value: b"t".to_vec(),
                        lease: None,
                    },
                ],
                vec![],
            )
            .await
            .unwrap();
        expected.push((EventKind::Delete, "w/k1".into(), txn.revision));
        expected.push((EventKind::Put, "w/k9".into(), txn.revision));
        assert!(s.delete("w/k2").await.unwrap());
        let r = s.get("w/k3").await.unwrap().unwrap().mod_revision;
        assert!(s.cas("w/k3", r, "cas").await.unwrap());

        let n = expected.len() + 2;
        let check = |evs: Vec<WatchEvent>| {
            let got: Vec<(EventKind, String, i64)> = evs
                .iter()
                .take(expected.len())
                .map(|e| (e.kind.clone(), e.kv.key.clone(), e.revision()))
                .collect();
            assert_eq!(got, expected);
            assert_eq!(evs[expected.len()].kind, EventKind::Delete);
            assert_eq!(evs[expected.len()].kv.key, "w/k2");
            assert!(evs[expected.len()].kv.value.is_empty());
            assert_eq!(evs[expected.len() + 1].kv.value, b"cas");
            for pair in evs.windows(2) {
                assert!(pair[0].revision() <= pair[1].revision(), "in order");
            }
            assert!(evs.iter().all(|e| e.kv.key.starts_with("w/")));
            let first_put = &evs[0];
            assert_eq!(first_put.kv.create_revision, first_put.kv.mod_revision);
        };
        check(collect(&mut live, n).await);
        check(collect(&mut now, n).await);
        assert_no_more(&mut live).await;

        // A watch from an old revision replays the same history, then
        // follows live changes.
        let mut replay = s.watch("w/", start + 1).await.unwrap();
        check(collect(&mut replay, n).await);
        let r = s.put("w/late", "x").await.unwrap();
        let late = collect(&mut replay, 1).await;
        assert_eq!((late[0].kv.key.as_str(), late[0].revision()), ("w/late", r));
        let late = collect(&mut live, 1).await;
        assert_eq!(late[0].revision(), r);
        assert_no_more(&mut replay).await;
    }

    /// The events of one transaction come in one batch, live and replayed.
    pub async fn watch_delivers_a_transaction_whole(s: Arc<dyn Store>) {
        let (_, start) = s.list("tw/").await.unwrap();
        let mut live = s.watch("tw/", start + 1).await.unwrap();
        let single = s.put("tw/before", "1").await.unwrap();
        let put = |k: &str| Op::Put {
            key: k.into(),
            value: b"t".to_vec(),
            lease: None,
        };
        let txn = s
            .txn(
                vec![],
                vec![put("tw/a"), put("tw-outside/b"), put("tw/c"), put("tw/d")],
                vec![],
            )
            .await
            .unwrap();
        let after = s.put("tw/after", "2").await.unwrap();
        let expected = vec![
            vec![("tw/before".to_string(), single)],
            vec![
                ("tw/a".to_string(), txn.revision),
                ("tw/c".to_string(), txn.revision),
                ("tw/d".to_string(), txn.revision),
            ],
            vec![("tw/after".to_string(), after)],
        ];
        assert_eq!(revisions(&mut live, 3).await, expected, "live");
        let mut replay = s.watch("tw/", start + 1).await.unwrap();
        assert_eq!(revisions(&mut replay, 3).await, expected, "replayed");
        // One event taken alone leaves the rest of its revision together.
        let mut mixed = s.watch("tw/", txn.revision).await.unwrap();
        let first = mixed.next().await.expect("an event").expect("no error");
        assert_eq!(first.kv.key, "tw/a");
        let rest = mixed
            .next_revision()
            .await
            .expect("more")
            .expect("no error");
        let rest: Vec<&str> = rest.iter().map(|e| e.kv.key.as_str()).collect();
        assert_eq!(rest, ["tw/c", "tw/d"]);
    }

    pub async fn counter(s: Arc<dyn Store>) {
        assert_eq!(s.incr("ctr/a").await.unwrap(), 1);
        assert_eq!(s.incr("ctr/a").await.unwrap(), 2);
        assert_eq!(s.incr("ctr/a").await.unwrap(), 3);
        assert_eq!(s.get("ctr/a").await.unwrap().unwrap().value, b"3");
        assert_eq!(s.incr("ctr/b").await.unwrap(), 1);
        s.put("ctr/bad", "nope").await.unwrap();
        assert!(matches!(
            s.incr("ctr/bad").await,
            Err(StoreError::Invalid(_))
        ));
    }

    pub async fn race_create_one_winner(s: Arc<dyn Store>) {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create("race/key", format!("c{i}"), None).await.unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    pub async fn race_incr_distinct(s: Arc<dyn Store>) {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    got.push(s.incr("race/ctr").await.unwrap());
                }
                got
            }));
        }
        let mut all = HashSet::new();
        for t in tasks {
            for v in t.await.unwrap() {
                assert!(all.insert(v), "value {v} handed out twice");
            }
        }
        assert_eq!(all.len(), 200);
        assert_eq!(all, (1..=200).collect::<HashSet<u64>>());
        assert_eq!(s.get("race/ctr").await.unwrap().unwrap().value, b"200");
    }

    pub async fn election(s: Arc<dyn Store>) {
        let ttl = Duration::from_secs(2);
        let lease_a = s.lease_grant(ttl).await.unwrap();
        let lease_b = s.lease_grant(ttl).await.unwrap();
        let _keep_a = spawn_keep_alive(s.clone(), lease_a, ttl);
        let _keep_b = spawn_keep_alive(s.clone(), lease_b, ttl);

        let e_a = Election::new(s.clone(), "ctl");
        let e_b = Election::new(s.clone(), "ctl");
        assert_eq!(e_a.leader().await.unwrap(), None);
        let lead_a = e_a.campaign("a", lease_a).await.unwrap();
        assert_eq!(e_b.leader().await.unwrap().as_deref(), Some("a"));
        assert!(lead_a.is_leader().await.unwrap());

        // A candidate waits for a vacancy without a lease.
        let e_c = Election::new(s.clone(), "ctl");
        let mut vacancy = tokio::spawn(async move { e_c.vacant().await });
        let mut b = tokio::spawn(async move { e_b.campaign("b", lease_b).await });
        // b must wait while a leads.
        assert!(
            tokio::time::timeout(Duration::from_millis(700), &mut b)
                .await
                .is_err(),
            "two leaders at once"
        );
        assert_eq!(e_a.leader().await.unwrap().as_deref(), Some("a"));

        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut vacancy)
                .await
                .is_err(),
            "no vacancy while a leads"
        );

        // a's lease dies: b takes over and a learns it lost.
        s.lease_revoke(lease_a).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), lead_a.lost())
            .await
            .expect("lost() fires for the old leader");
        let lead_b = tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .expect("b becomes leader")
            .unwrap()
            .unwrap();
        assert_eq!(lead_b.value(), "b");
        assert_eq!(e_a.leader().await.unwrap().as_deref(), Some("b"));
        assert!(!lead_a.is_leader().await.unwrap());
        // The old leader's resign must not remove the new leader.
        assert!(!lead_a.resign().await.unwrap());
        assert_eq!(e_a.leader().await.unwrap().as_deref(), Some("b"));
        // Re-campaigning with the same value and lease returns the same
        // leadership.
        let again = Election::new(s.clone(), "ctl")
            .campaign("b", lease_b)
            .await
            .unwrap();
        assert_eq!(again.revision(), lead_b.revision());
        // One attempt: none while another leads; the same one for its own.
        let once = Election::new(s.clone(), "ctl");
        assert!(once.try_campaign("z", lease_b).await.unwrap().is_none());
        let own = once
            .try_campaign("b", lease_b)
            .await
            .unwrap()
            .expect("b's own");
        assert_eq!(own.revision(), lead_b.revision());
        // b may have taken over before the waiting candidate looked again:
        // it waits on while anyone leads, and sees the key once free.
        assert!(lead_b.resign().await.unwrap());
        tokio::time::timeout(Duration::from_secs(5), vacancy)
            .await
            .expect("the vacancy is seen")
            .unwrap()
            .unwrap();
        assert_eq!(e_a.leader().await.unwrap(), None);
        s.lease_revoke(lease_b).await.unwrap();
    }

    pub async fn election_lease_expiry(s: Arc<dyn Store>) {
        // The leader stops refreshing its lease (crash): after the TTL the
        // other candidate takes over.
        let ttl = Duration::from_secs(1);
        let lease_a = s.lease_grant(ttl).await.unwrap();
        let lease_b = s.lease_grant(Duration::from_secs(5)).await.unwrap();
        let _keep_b = spawn_keep_alive(s.clone(), lease_b, Duration::from_secs(5));
        let lead_a = Election::new(s.clone(), "exp")
            .campaign("a", lease_a)
            .await
            .unwrap();
        let e_b = Election::new(s.clone(), "exp");
        let lead_b = tokio::time::timeout(Duration::from_secs(6), e_b.campaign("b", lease_b))
            .await
            .expect("b takes over after a's lease expires")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), lead_a.lost())
            .await
            .expect("lost() fires");
        assert_eq!(e_b.leader().await.unwrap().as_deref(), Some("b"));
        assert!(lead_b.resign().await.unwrap());
    }
    /// A list longer than a page (the etcd store of these tests reads 5
    /// keys a page) comes back whole, sorted, at one revision, and without
    /// the keys of a neighbouring prefix.
    pub async fn list_pages(s: Arc<dyn Store>) {
        let mut want = Vec::new();
        for i in 0..23 {
            let k = format!("pg/{i:02}");
            s.put(&k, format!("v{i}")).await.unwrap();
            want.push(k);
        }
        s.put("pg0", "outside").await.unwrap();
        s.put("ph/x", "outside").await.unwrap();
        let rev = s.revision().await.unwrap();
        let (kvs, at) = s.list("pg/").await.unwrap();
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, want.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(kvs[22].value, b"v22");
        assert_eq!(at, rev, "every page read at one revision");
        // A multiple of the page size, and one page exactly.
        let (kvs, _) = s.list("pg/1").await.unwrap();
        assert_eq!(kvs.len(), 10);
        let (kvs, _) = s.list("pg/0").await.unwrap();
        assert_eq!(kvs.len(), 10);
        let (kvs, _) = s.list("pg/2").await.unwrap();
        assert_eq!(kvs.len(), 3);
        let (kvs, _) = s.list("nothing/").await.unwrap();
        assert!(kvs.is_empty());
    }

    /// Compaction forgets history before the revision, never a key's
    /// current value; compacting again lower is a no-op, beyond the store's
    /// revision an error.
    pub async fn compaction(s: Arc<dyn Store>) {
        let r1 = s.put("cp/k", "one").await.unwrap();
        let r2 = s.put("cp/k", "two").await.unwrap();
        let r3 = s.put("cp/j", "three").await.unwrap();
        // Before: the whole history can be watched.
        let mut w = s.watch("cp/", r1).await.unwrap();
        assert_eq!(collect(&mut w, 3).await.len(), 3);
        drop(w);

        s.compact(r2).await.unwrap();
        let from_r1 = match s.watch("cp/", r1).await {
            Err(e) => Some(e),
            Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
                Ok(Some(Err(e))) => Some(e),
                other => panic!("a watch from a compacted revision: {other:?}"),
            },
        };
        assert!(
            matches!(from_r1, Some(StoreError::Compacted { .. })),
            "{from_r1:?}"
        );
        // From the compaction's revision on, everything is still there.
        let mut w = s.watch("cp/", r2).await.unwrap();
        let evs = collect(&mut w, 2).await;
        assert_eq!(
            evs.iter().map(|e| e.revision()).collect::<Vec<_>>(),
            [r2, r3]
        );
        drop(w);
        assert_eq!(s.get("cp/k").await.unwrap().unwrap().value, b"two");
        assert_eq!(s.list("cp/").await.unwrap().0.len(), 2);

        s.compact(r1).await.unwrap();
        s.compact(r2).await.unwrap();
        let now = s.revision().await.unwrap();
        assert!(matches!(
            s.compact(now + 1000).await,
            Err(StoreError::Invalid(_))
        ));
        // Writes go on after a compaction.
        assert!(s.put("cp/k", "four").await.unwrap() > r3);
    }
}

// ---------------------------------------------------------------- helpers

async fn collect(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(ev))) => out.push(ev),
            Ok(Some(Err(e))) => panic!("watch error after {out:?}: {e}"),
            Ok(None) => panic!("watch ended after {out:?}"),
            Err(_) => panic!("timed out waiting for {n} events, got {out:?}"),
        }
    }
    out
}

/// The next `n` revisions of a watch, each as its keys and revisions.
async fn revisions(w: &mut WatchStream, n: usize) -> Vec<Vec<(String, i64)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let b = tokio::time::timeout(Duration::from_secs(10), w.next_revision())
            .await
            .expect("a revision in time")
            .expect("the watch goes on")
            .expect("no error");
        out.push(
            b.into_iter()
                .map(|e| (e.kv.key, e.kv.mod_revision))
                .collect(),
        );
    }
    out
}

async fn assert_no_more(w: &mut WatchStream) {
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("unexpected extra watch item: {ev:?}");
    }
}

async fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("state.redb"), "/viking").unwrap();
    (store, dir)
}

async fn etcd(test: &str) -> Arc<dyn Store> {
    let cluster = viking_store::testing::shared_etcd().unwrap_or_else(|e| panic!("{e}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("/viking-test/{test}-{}-{nanos}", std::process::id());
    Arc::new(
        EtcdStore::connect(&cluster.endpoints(), &prefix)
            .await
            .unwrap()
            // Small pages, so every list of more than five keys crosses pages.
            .with_page_size(5),
    )
}

/// Run every shared case against both backends.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::embedded().await;
                    super::cases::$case(store).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = super::etcd(stringify!($case)).await;
                    super::cases::$case(store).await;
                }
            )*
        }
    };
}

contract!(
    kv_basics,
    get_many_in_order,
    create_if_absent,
    cas_on_revision,
    txn_atomicity,
    lease_keep_alive_keeps_keys,
    lease_expiry_removes_keys,
    lease_revoke_removes_keys,
    watch_in_order,
    watch_delivers_a_transaction_whole,
    counter,
    race_create_one_winner,
    race_incr_distinct,
    election,
    election_lease_expiry,
    list_pages,
);

/// A list whose records add up to more than gRPC's default message limit
/// (4 MiB) comes back whole: pages, and message limits that fit a page of
/// the largest records (a job document may be 256 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lists_records_beyond_the_default_message_limit() {
    let cluster = viking_store::testing::shared_etcd().unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(&cluster.endpoints(), "/viking-test/big-list")
        .await
        .unwrap();
    let value = "x".repeat(300 * 1024);
    for i in 0..24 {
        store
            .put(&format!("big/{i:02}"), value.clone())
            .await
            .unwrap();
    }
    let (kvs, _) = store.list("big/").await.unwrap();
    assert_eq!(kvs.len(), 24);
    assert!(kvs.iter().all(|kv| kv.value.len() == value.len()));
    for kv in kvs {
        store.delete(&kv.key).await.unwrap();
    }
}

// Compaction is store-wide: the etcd case gets an etcd of its own, so the
// shared one's history stays whole for the other tests' watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_compaction() {
    let (store, _dir) = embedded().await;
    cases::compaction(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compaction() {
    let cluster = viking_store::testing::EtcdCluster::start(1).unwrap_or_else(|e| panic!("{e}"));
    let store = EtcdStore::connect(&cluster.endpoints(), "/viking-test/compaction")
        .await
        .unwrap();
    cases::compaction(Arc::new(store)).await;
}

// ------------------------------------------------------- embedded-only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("state.redb");
    let (rev, lease) = {
        let s = EmbeddedStore::open(&path, "/viking").unwrap();
        s.put("p/a", "1").await.unwrap();
        s.create("p/b", "2", None).await.unwrap();
        let lease = s.lease_grant(Duration::from_secs(1)).await.unwrap();
        s.put_with_lease("p/leased", "x", lease).await.unwrap();
        assert!(s.delete("p/a").await.unwrap());
        (s.revision().await.unwrap(), lease)
    };
    let s = EmbeddedStore::open(&path, "/viking").unwrap();
    assert_eq!(s.revision().await.unwrap(), rev, "revision persisted");
    assert_eq!(s.get("p/a").await.unwrap(), None);
    assert_eq!(s.get("p/b").await.unwrap().unwrap().value, b"2");
    let leased = s.get("p/leased").await.unwrap().unwrap();
    assert_eq!(leased.lease, Some(lease));
    // The lease survived the restart with a fresh deadline...
    s.lease_keep_alive(lease).await.unwrap();
    // ...and still expires when no longer refreshed.
    let mut w = s.watch("p/", 0).await.unwrap();
    let ev = collect(&mut w, 1).await;
    assert_eq!(
        (ev[0].kind.clone(), ev[0].kv.key.as_str()),
        (EventKind::Delete, "p/leased")
    );
    assert_eq!(s.get("p/leased").await.unwrap(), None);
    // History from before this open is gone.
    match s.watch("p/", 1).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, 1);
            assert_eq!(oldest, rev + 1);
        }
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
    // New writes continue the revision sequence.
    assert!(s.put("p/c", "3").await.unwrap() > rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    drop(EmbeddedStore::open(&path, "/t").unwrap());
    assert_eq!(mode(&path), 0o600, "a new store file");
    // A file left world-readable by an earlier version is made private.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(EmbeddedStore::open(&path, "/t").unwrap());
    assert_eq!(mode(&path), 0o600, "an existing store file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let first = EmbeddedStore::open(&path, "/viking").unwrap();
    match EmbeddedStore::open(&path, "/viking") {
        Err(StoreError::Locked(msg)) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}")
        }
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    // Closing the first releases the lock.
    drop(first);
    let again = EmbeddedStore::open(&path, "/viking").unwrap();
    again.put("k", "v").await.unwrap();
}

// ------------------------------------------------------------ etcd-only

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_survives_minority_failure() {
    let mut cluster =
        viking_store::testing::EtcdCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let s: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(&cluster.endpoints(), "/viking")
            .await
            .unwrap(),
    );
    let start = s.put("m/before", "1").await.unwrap();
    // Several watches, so some are likely connected to the member we kill.
    let mut watches = Vec::new();
    for _ in 0..6 {
        watches.push(s.watch("m/", start).await.unwrap());
    }
    let lease = s.lease_grant(Duration::from_secs(5)).await.unwrap();

    cluster.kill(0);
    // If the killed member led the cluster, writes in flight during the
    // election fail with an ambiguous error (etcd's own clients do the
    // same); wait until a write outside the watched prefix goes through,
    // then everything must work without errors.
    eventually_async(
        "a write after the kill",
        Duration::from_secs(15),
        POLL,
        || {
            let s = s.clone();
            async move { s.put("probe/after-kill", "x").await }
        },
    )
    .await;

    let mut revs = vec![start];
    for i in 0..10 {
        revs.push(s.put(&format!("m/k{i}"), "v").await.unwrap());
    }
    assert_eq!(s.get("m/k3").await.unwrap().unwrap().value, b"v");
    assert_eq!(s.list("m/").await.unwrap().0.len(), 11);
    let r = s
        .txn(
            vec![Compare::Exists("m/k0".into())],
            vec![Op::Delete { key: "m/k0".into() }],
            vec![],
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    revs.push(r.revision);
    assert!(s.create("m/new", "x", Some(lease)).await.unwrap());
    revs.push(s.get("m/new").await.unwrap().unwrap().mod_revision);
    s.lease_keep_alive(lease).await.unwrap();

    for w in &mut watches {
        let evs = collect(w, revs.len()).await;
        let got: Vec<i64> = evs.iter().map(|e| e.revision()).collect();
        assert_eq!(got, revs, "every change exactly once, in order");
    }
    // A fresh client given every endpoint (one dead) works too.
    let s2 = EtcdStore::connect(&cluster.endpoints(), "/viking")
        .await
        .unwrap();
    for _ in 0..10 {
        assert!(s2.get("m/new").await.unwrap().is_some());
    }
    s.lease_revoke(lease).await.unwrap();
}
