//! The Lease elector of `orrery controller` against a real apiserver: the test ground.
//!
//! Runs against the ground that `e2e/ground env` names (`ORRERY_GROUND`, default "default"); the
//! tests fail, rather than skip, when it is not up: start it with `e2e/ground up`.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use orrery::runtime::leader::{Attempt, LeaderElector, LeaseConfig};
use orrery_e2e::Ground;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

const NAMESPACE: &str = "default";

/// A client of the ground's apiserver; panics if there is none.
async fn client() -> Client {
    let ground = Ground::get().expect("the test ground is set up");
    let client = ground.client().await.unwrap_or_else(|e| {
        panic!(
            "no client for the ground's kubeconfig {}: {e:#}",
            ground.kubeconfig()
        )
    });
    match timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!("the ground's apiserver is not reachable: {e}"),
        Err(_) => panic!("the ground's apiserver did not answer within 10 s"),
    }
}

/// A Lease name no other test run uses; the Lease is deleted when the guard is dropped.
struct TestLease {
    api: Api<Lease>,
    name: String,
}

impl TestLease {
    fn new(client: &Client, what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            api: Api::namespaced(client.clone(), NAMESPACE),
            name: format!(
                "orrery-test-{what}-{}-{:x}",
                std::process::id(),
                nanos % 0xffff_ffff
            ),
        }
    }

    /// Short timings so that the tests take seconds.
    fn config(&self, identity: &str) -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
            ..LeaseConfig::new(NAMESPACE, &self.name, identity)
        }
    }

    async fn get(&self) -> Lease {
        self.api.get(&self.name).await.expect("the Lease exists")
    }

    async fn holder(&self) -> Option<String> {
        self.get().await.spec.and_then(|s| s.holder_identity)
    }

    async fn transitions(&self) -> i32 {
        self.get()
            .await
            .spec
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0)
    }
}

impl Drop for TestLease {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort, with a client and a runtime of its own: the test's client runs on the
        // test's runtime, which this thread blocks.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let api = Api::<Lease>::namespaced(client().await, NAMESPACE);
                let deleted = timeout(
                    Duration::from_secs(5),
                    api.delete(&name, &DeleteParams::default()),
                )
                .await;
                if !matches!(deleted, Ok(Ok(_))) {
                    eprintln!("could not delete the test Lease {NAMESPACE}/{name}: {deleted:?}");
                }
            });
        })
        .join();
    }
}

async fn acquire_within(elector: &mut LeaderElector, limit: Duration) {
    timeout(limit, elector.acquire()).await.unwrap_or_else(|_| {
        panic!(
            "{} did not acquire the Lease within {limit:?}",
            elector.config().identity
        )
    });
}

#[tokio::test]
async fn only_one_leads_and_the_other_takes_over_on_release() {
    let client = client().await;
    let lease = TestLease::new(&client, "handover");
    let mut a = LeaderElector::new(client.clone(), lease.config("a"));
    let mut b = LeaderElector::new(client.clone(), lease.config("b"));

    acquire_within(&mut a, Duration::from_secs(10)).await;
    assert_eq!(lease.holder().await.as_deref(), Some("a"));
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Attempt::HeldBy("a".into())
    );

    // While `a` renews, `b` keeps trying and never leads, well past the lease duration.
    let mut b_acquires = tokio::spawn(async move {
        b.acquire().await;
        b
    });
    let hold_for = lease.config("a").lease_duration * 2;
    tokio::select! {
        reason = a.keep_leading() => panic!("`a` lost the Lease while renewing it: {reason}"),
        _ = &mut b_acquires => panic!("`b` acquired a Lease that `a` kept renewing"),
        () = sleep(hold_for) => {}
    }
    assert_eq!(lease.holder().await.as_deref(), Some("a"));

    // `a` releases: `b` takes over within about a retry period, not a lease duration.
    assert!(
        a.release().await.unwrap(),
        "`a` held the Lease, so it released it"
    );
    let released = Instant::now();
    let mut b = timeout(Duration::from_secs(3), b_acquires)
        .await
        .expect("`b` took over within 3 s of the release")
        .unwrap();
    let took = released.elapsed();
    assert!(
        took < lease.config("b").lease_duration,
        "took over after {took:?}"
    );
    assert_eq!(lease.holder().await.as_deref(), Some("b"));
    assert_eq!(lease.transitions().await, 1, "one change of holder");

    // Now `a` is the one kept out.
    assert_eq!(
        a.try_acquire_or_renew().await.unwrap(),
        Attempt::HeldBy("b".into())
    );
    assert!(
        !a.release().await.unwrap(),
        "`a` does not hold the Lease, so it releases nothing"
    );
    assert_eq!(lease.holder().await.as_deref(), Some("b"));
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    assert!(b.release().await.unwrap());
    assert_eq!(lease.holder().await, None);
}

#[tokio::test]
async fn a_lease_left_unrenewed_is_taken_over_after_its_duration() {
    let client = client().await;
    let lease = TestLease::new(&client, "expiry");
    let config = lease.config("a");
    let mut a = LeaderElector::new(client.clone(), config.clone());
    let mut b = LeaderElector::new(client.clone(), lease.config("b"));

    acquire_within(&mut a, Duration::from_secs(10)).await;
    // `a` stops renewing without releasing (as a crashed process would). `b` first sees the
    // record now, and may take it only once it has not changed for the lease duration.
    drop(a);
    let start = Instant::now();
    acquire_within(&mut b, config.lease_duration + Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(
        took >= config.lease_duration - Duration::from_millis(100),
        "took over after {took:?}, before the lease duration {:?}",
        config.lease_duration
    );
    assert_eq!(lease.holder().await.as_deref(), Some("b"));
    assert_eq!(lease.transitions().await, 1);
}

#[tokio::test]
async fn of_concurrent_candidates_exactly_one_leads() {
    let client = client().await;
    let lease = TestLease::new(&client, "race");
    let mut electors: Vec<LeaderElector> = (0..6)
        .map(|i| LeaderElector::new(client.clone(), lease.config(&format!("candidate-{i}"))))
        .collect();

    // First round: nobody has created the Lease yet; then rounds on a released Lease.
    for round in 0..4 {
        let attempts =
            futures::future::join_all(electors.iter_mut().map(|e| e.try_acquire_or_renew())).await;
        let leaders: Vec<usize> = attempts
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Ok(Attempt::Leading)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            leaders.len(),
            1,
            "round {round}: leaders {leaders:?} of {attempts:?}"
        );
        for (i, attempt) in attempts.iter().enumerate() {
            if i != leaders[0] {
                assert!(
                    matches!(attempt, Ok(Attempt::Conflict) | Ok(Attempt::HeldBy(_))),
                    "round {round}, candidate {i}: {attempt:?}"
                );
            }
        }
        let winner = format!("candidate-{}", leaders[0]);
        assert_eq!(lease.holder().await, Some(winner));
        assert!(electors[leaders[0]].release().await.unwrap());
    }
}

#[tokio::test]
async fn the_leader_steps_down_when_another_holds_the_lease() {
    let client = client().await;
    let lease = TestLease::new(&client, "stepdown");
    let mut a = LeaderElector::new(client.clone(), lease.config("a"));
    acquire_within(&mut a, Duration::from_secs(10)).await;

    // Someone overwrites the Lease (e.g. an operator by hand).
    let mut taken = lease.get().await;
    taken.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    lease
        .api
        .replace(&lease.name, &PostParams::default(), &taken)
        .await
        .unwrap();

    let reason = timeout(Duration::from_secs(3), a.keep_leading())
        .await
        .expect("`a` noticed within a few retry periods");
    assert!(reason.contains("intruder"), "{reason}");
    assert!(
        !a.release().await.unwrap(),
        "`a` must not release a Lease it does not hold"
    );
    assert_eq!(lease.holder().await.as_deref(), Some("intruder"));
}
