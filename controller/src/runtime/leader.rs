//! Leader election: only the holder of a `coordination.k8s.io/v1` Lease runs the controllers.
//!
//! [`LeaderElector`] is a small elector with the semantics of client-go's `leaderelection` package
//! (lease duration 15 s, renew deadline 10 s, retry period 2 s). Every write is a
//! read-modify-write guarded by the Lease's `resourceVersion`, so of two candidates writing the
//! same observed Lease, exactly one wins; a Lease held by another identity counts as expired only
//! once its record has not changed for its `leaseDurationSeconds` as measured on this process's
//! monotonic clock (no comparison of clocks across machines).
//!
//! It is written here rather than taken from a crate because none fits kube 5 and these timings:
//! `kube-leader-election` 0.44 depends on kube 4 (a second kube in the tree) and `kubert` 0.25 on
//! kube 1.1; `kube-lease-manager` 0.13 does use kube 5, but (1) a standby only looks at the Lease
//! again when the holder's last renewal expires, so a released Lease is taken over up to a lease
//! duration later instead of within the retry period, (2) a leader whose renewals fail keeps
//! reporting leadership while it backs off for up to 30 s, with no renew deadline, so it can
//! overlap with its successor, and (3) renewals and take-overs of expired Leases are unguarded
//! strategic-merge patches.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Where the Lease is, who we are, and the timings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a holder's record stays valid after it was last seen to change; written to the
    /// Lease as `leaseDurationSeconds` (whole seconds, at least 1).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership. Less than
    /// `lease_duration`, so that it stops before a standby may take over.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Lease duration 15 s, renew deadline 10 s, retry period 2 s (client-go's defaults).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What one acquire-or-renew attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (acquired or renewed it).
    Leading,
    /// Another identity holds a valid Lease.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write; try again.
    Conflict,
}

/// A leader elector on one `coordination.k8s.io/v1` Lease (see the module docs).
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last Lease record we saw, and when we first saw it.
    observed: Option<(LeaseSpec, Instant)>,
    /// When the last successful acquire-or-renew attempt started.
    last_success: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        assert!(
            config.renew_deadline < config.lease_duration,
            "the renew deadline must be shorter than the lease duration"
        );
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_success: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != spec) {
            self.observed = Some((spec.clone(), now));
        }
    }

    /// Whether the observed record is past its duration on our clock.
    fn observed_expired(&self, now: Instant) -> bool {
        match &self.observed {
            None => true,
            Some((spec, at)) => {
                let secs = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
                now >= *at + Duration::from_secs(secs)
            }
        }
    }

    /// One attempt to acquire the Lease, or to renew it if we hold it. Never overwrites a valid
    /// Lease of another identity; every write is guarded by the `resourceVersion` it read.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let identity = self.config.identity.clone();
        let duration = self.config.lease_duration_seconds();

        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.succeeded(created, started)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };

        let old = lease.spec.clone().unwrap_or_default();
        self.observe(&old, Instant::now());
        let holder = old.holder_identity.clone().unwrap_or_default();
        let ours = holder == identity;
        if !holder.is_empty() && !ours && !self.observed_expired(Instant::now()) {
            self.last_success = None;
            return Ok(Attempt::HeldBy(holder));
        }

        let spec = LeaseSpec {
            holder_identity: Some(identity),
            lease_duration_seconds: Some(duration),
            acquire_time: if ours {
                old.acquire_time.clone().or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: if ours {
                old.lease_transitions
            } else {
                Some(old.lease_transitions.unwrap_or(0).saturating_add(1))
            },
            ..old
        };
        // `replace` sends the resourceVersion we read: the apiserver refuses it if the Lease
        // changed since.
        let updated = Lease {
            spec: Some(spec),
            ..lease
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => Ok(self.succeeded(written, started)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    fn succeeded(&mut self, written: Lease, started: Instant) -> Attempt {
        self.observe(&written.spec.unwrap_or_default(), Instant::now());
        self.last_success = Some(started);
        Attempt::Leading
    }

    /// Waits until this elector holds the Lease, trying every retry period.
    pub async fn acquire(&mut self) {
        info!(
            lease = %self.config.name,
            namespace = %self.config.namespace,
            identity = %self.config.identity,
            "waiting to acquire the leader-election Lease"
        );
        let mut last_holder = None;
        loop {
            match timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "acquired the leader-election Lease");
                    return;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(%holder, "the leader-election Lease is held by another replica");
                        last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => debug!("conflict acquiring the leader-election Lease"),
                Ok(Err(e)) => warn!(error = %e, "cannot acquire the leader-election Lease"),
                Err(_) => warn!("cannot acquire the leader-election Lease: timed out"),
            }
            sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// Keeps renewing the Lease every retry period, and returns why leadership was lost: the
    /// Lease was found held by another identity, or no renewal succeeded within the renew
    /// deadline. Call it only after [`acquire`](Self::acquire) returned.
    pub async fn keep_leading(&mut self) -> String {
        loop {
            sleep(self.config.retry_period).await;
            loop {
                let Some(last) = self.last_success else {
                    return "not holding the Lease".to_owned();
                };
                let deadline = last + self.config.renew_deadline;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return format!(
                        "no renewal succeeded within {:?}",
                        self.config.renew_deadline
                    );
                }
                match timeout(remaining, self.try_acquire_or_renew()).await {
                    Ok(Ok(Attempt::Leading)) => break,
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        return format!("the Lease is held by {holder}");
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        debug!("conflict renewing the leader-election Lease")
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot renew the leader-election Lease"),
                    Err(_) => {
                        return format!(
                            "no renewal succeeded within {:?}",
                            self.config.renew_deadline
                        );
                    }
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                sleep(
                    self.config
                        .retry_period
                        .min(remaining)
                        .min(Duration::from_millis(500)),
                )
                .await;
            }
        }
    }

    /// Gives the Lease up if we hold it, so that a standby takes over within its retry period.
    /// Returns whether it released anything.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        self.last_success = None;
        for _ in 0..3 {
            let Some(lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(false);
            };
            let old = lease.spec.clone().unwrap_or_default();
            if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            let spec = LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..old
            };
            let updated = Lease {
                spec: Some(spec),
                ..lease
            };
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    self.observed = None;
                    info!(lease = %self.config.name, "released the leader-election Lease");
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// `period` plus up to 20 % more, so that standbys do not poll in lockstep.
fn jittered(period: Duration) -> Duration {
    let fraction = (super::random_u64() % 1000) as f64 / 5000.0;
    period.mul_f64(1.0 + fraction)
}

/// Runs [`LeaderElector::keep_leading`] in a task, and releases the Lease when told to.
pub struct LeaseKeeper {
    release: oneshot::Sender<()>,
    lost: oneshot::Receiver<String>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Waits until `elector` holds the Lease, then keeps it renewed. `None` when `shutdown` was
    /// cancelled first.
    pub async fn acquire(mut elector: LeaderElector, shutdown: &CancellationToken) -> Option<Self> {
        tokio::select! {
            () = elector.acquire() => Some(Self::spawn(elector)),
            () = shutdown.cancelled() => {
                // An attempt cut short may still have taken the Lease: give it back if so.
                release_within(&mut elector, Duration::from_secs(5)).await;
                None
            }
        }
    }

    /// Starts renewing the Lease that `elector` holds.
    pub fn spawn(mut elector: LeaderElector) -> Self {
        let (release, released) = oneshot::channel::<()>();
        let (lost_tx, lost) = oneshot::channel::<String>();
        let task = tokio::spawn(async move {
            tokio::select! {
                reason = elector.keep_leading() => {
                    let _ = lost_tx.send(reason);
                }
                _ = released => release_within(&mut elector, Duration::from_secs(5)).await,
            }
        });
        Self {
            release,
            lost,
            task,
        }
    }

    /// Completes when leadership was lost, with the reason. Await it at most once to completion.
    pub async fn lost(&mut self) -> String {
        match (&mut self.lost).await {
            Ok(reason) => reason,
            Err(_) => "the leader-election task ended".to_owned(),
        }
    }

    /// Stops renewing and releases the Lease (if still held).
    pub async fn release(self) {
        let _ = self.release.send(());
        if let Err(e) = self.task.await {
            warn!(error = %e, "the leader-election task failed");
        }
    }
}

/// Releases the Lease if `elector` holds it, giving up after `limit`; failures are only logged,
/// since the Lease then expires on its own.
async fn release_within(elector: &mut LeaderElector, limit: Duration) {
    match timeout(limit, elector.release()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot release the leader-election Lease"),
        Err(_) => warn!("cannot release the leader-election Lease: timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn lease_config_defaults_are_client_go_s() {
        let c = LeaseConfig::new("ns", "name", "me");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.lease_duration_seconds(), 15);
    }
}
