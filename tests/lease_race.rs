//! Two hosts racing for one run's lease in a real S3 server: exactly one wins, every time,
//! whether the lease is new or taken over from a dead holder. And a store that cannot
//! condition a write (as Backblaze B2) gets the documented, weaker, read-back behaviour.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::s3::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY, create_bucket};
use lazarus::engine::fence::FenceError;
use lazarus::lease::LeaseBackend;
use lazarus::mirror::StoreLeases;
use lazarus::mirror::lease::{LeaseBody, LeaseScope};
use lazarus::storage::s3::{S3Settings, S3Store};
use lazarus::storage::{Body, ObjectStore, StoreSet};

const BUCKET: &str = "leases";

fn store(endpoint: &str) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::new(S3Settings {
        name: "r2".into(),
        endpoint: Some(endpoint.to_string()),
        region: "us-east-1".into(),
        bucket: BUCKET.into(),
        prefix: String::new(),
        path_style: true,
        credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        timeout: Duration::from_secs(10),
    }))
}

fn taker(endpoint: &str, holder: &str) -> Arc<StoreLeases> {
    Arc::new(StoreLeases::new(
        StoreSet::new(vec![store(endpoint)]),
        holder,
        Duration::from_secs(30),
        LeaseScope::Run,
    ))
}

/// A lease its holder stopped renewing long ago.
fn dead_lease(run: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&LeaseBody {
            holder: "dead-host".into(),
            run: run.into(),
            target: "shop".into(),
            renewed_at_us: 1_000_000,
            duration_ms: 30_000,
            transitions: 4,
            released: false,
        })
        .unwrap(),
    )
}

/// Races two takers for a new lease and for a dead holder's, `rounds` times each; every
/// race must have exactly one winner, and the loser must be told who holds it.
fn race(endpoint: &str, rounds: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = (taker(endpoint, "host-a"), taker(endpoint, "host-b"));
    let raw = store(endpoint);
    rt.block_on(async {
        for round in 0..rounds {
            for takeover in [false, true] {
                let run = format!("race-{round}-{takeover}");
                if takeover {
                    raw.put(&format!("runs/{run}/lease"), Body::Bytes(dead_lease(&run)))
                        .await
                        .unwrap();
                }
                let go = Arc::new(tokio::sync::Barrier::new(2));
                let take = |leases: Arc<StoreLeases>| {
                    let (run, go) = (run.clone(), go.clone());
                    tokio::spawn(async move {
                        go.wait().await;
                        leases.take("shop", &run, None).await
                    })
                };
                let (ra, rb) = (take(a.clone()), take(b.clone()));
                let results = [ra.await.unwrap(), rb.await.unwrap()];
                let winners = results.iter().filter(|r| r.is_ok()).count();
                if winners != 1 {
                    let stored = raw.read_versioned(&format!("runs/{run}/lease")).await;
                    panic!("round {round} (takeover {takeover}): {results:?}; stored {stored:?}");
                }
                let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
                assert!(
                    matches!(lost, FenceError::Held(m) if m.contains("is driven by host-")),
                    "{lost:?}"
                );
                let stored = raw
                    .read_versioned(&format!("runs/{run}/lease"))
                    .await
                    .unwrap()
                    .unwrap();
                let lease: LeaseBody = serde_json::from_slice(&stored.bytes).unwrap();
                let winner = if results[0].is_ok() {
                    "host-a"
                } else {
                    "host-b"
                };
                assert_eq!(lease.holder, winner);
                assert_eq!(lease.transitions, if takeover { 5 } else { 0 });
            }
        }
    });
}

#[test]
fn two_takers_racing_for_one_lease_in_moto_never_both_win() {
    let moto = Moto::start_serialized();
    create_bucket(&moto.endpoint(), BUCKET);
    race(&moto.endpoint(), 100);
}

#[test]
fn two_takers_racing_for_one_lease_in_s3s_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3sFs::start_serialized(&dir.path().join("s3"));
    create_bucket(&s3.endpoint(), BUCKET);
    race(&s3.endpoint(), 100);
}

#[test]
fn a_store_without_conditional_writes_is_used_by_reading_the_lease_back() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3sFs::start_unconditional(&dir.path().join("s3"));
    create_bucket(&s3.endpoint(), BUCKET);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, b) = (
            taker(&s3.endpoint(), "host-a"),
            taker(&s3.endpoint(), "host-b"),
        );
        a.take("shop", "weak", None)
            .await
            .expect("host A takes the lease");
        let refused = b.take("shop", "weak", None).await.unwrap_err();
        assert!(
            matches!(&refused, FenceError::Held(m) if m.contains("driven by host-a")),
            "{refused:?}"
        );
        a.renew("shop", "weak")
            .await
            .ok()
            .expect("host A renews it");
        a.release("shop", "weak").await.expect("host A lets it go");
        b.take("shop", "weak", None)
            .await
            .expect("host B takes a lease let go");
    });
}
