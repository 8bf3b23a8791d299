//! The TenantControlPlane's status, kept while a reconcile runs and finished from its outcome
//! (pure). Written once, and only when it changed.

use crate::api::{TenantControlPlane, TenantControlPlaneStatus};
use crate::conditions::{
    self, CERTIFICATES_READY, CONTROL_PLANE_AVAILABLE, DATASTORE_READY, DEGRADED, READY,
    TENANT_API_READY, TENANT_BOOTSTRAPPED,
};
use crate::stop::{Blocked, Stop};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

/// The status being built during one reconcile.
pub struct Tracker {
    pub status: TenantControlPlaneStatus,
    generation: Option<i64>,
    now: Time,
}

impl Tracker {
    pub fn new(tcp: &TenantControlPlane, now: Time) -> Self {
        Self {
            status: tcp.status.clone().unwrap_or_default(),
            generation: tcp.meta().generation,
            now,
        }
    }

    pub fn set(&mut self, condition: &str, ok: bool, reason: &str, message: impl Into<String>) {
        conditions::set(
            &mut self.status.conditions,
            condition,
            ok,
            reason,
            message,
            self.generation,
            &self.now,
        );
    }

    /// Records a blocked step in its condition. Returns whether that is news (the condition was
    /// not already False for this reason), so that only news becomes an Event.
    pub fn block(&mut self, blocked: &Blocked) -> bool {
        let news = !self.status.conditions.iter().any(|c| {
            c.type_ == blocked.condition && c.status == "False" && c.reason == blocked.reason
        });
        self.set(
            blocked.condition,
            false,
            blocked.reason,
            blocked.message.clone(),
        );
        news
    }

    pub fn is_ready(&self) -> bool {
        conditions::is_true(&self.status.conditions, READY)
    }

    /// Derives Degraded, Ready and the phase from the conditions and the reconcile's outcome.
    /// Ready never holds while reconciles fail.
    pub fn finish(
        &mut self,
        spec_version: &str,
        outcome: &Result<(), Stop>,
        tenant_access: bool,
        sleeping: bool,
    ) {
        let blocked_ready = match outcome {
            Err(Stop::Failed(e)) => {
                self.set(
                    DEGRADED,
                    true,
                    e.category(),
                    format!("reconcile failed: {e}"),
                );
                Some(("ReconcileFailed", format!("reconcile failed: {e}")))
            }
            Err(Stop::Blocked(b)) if b.condition == READY => {
                self.set(
                    DEGRADED,
                    false,
                    "NoErrors",
                    "the last reconcile had no errors",
                );
                Some((b.reason, b.message.clone()))
            }
            _ => {
                self.set(
                    DEGRADED,
                    false,
                    "NoErrors",
                    "the last reconcile had no errors",
                );
                None
            }
        };
        let mut required = vec![CERTIFICATES_READY, DATASTORE_READY, CONTROL_PLANE_AVAILABLE];
        if tenant_access {
            required.extend([TENANT_API_READY, TENANT_BOOTSTRAPPED]);
        }
        let mut waiting: Vec<&str> = required
            .into_iter()
            .filter(|c| !conditions::is_true(&self.status.conditions, c))
            .collect();
        // Ready once the first rollout has completed; during an upgrade the old version serves,
        // so Ready holds and the phase says Upgrading.
        if self.status.version.is_none() {
            waiting.push("the first rollout");
        }
        let ready = blocked_ready.is_none() && waiting.is_empty();
        match blocked_ready {
            Some((reason, message)) => self.set(READY, false, reason, message),
            None if ready => self.set(
                READY,
                true,
                "Ready",
                "the tenant control plane is available",
            ),
            None => self.set(
                READY,
                false,
                "NotReady",
                format!("waiting for {}", waiting.join(", ")),
            ),
        }
        let upgrading = self
            .status
            .version
            .as_ref()
            .is_some_and(|v| v != spec_version);
        self.status.phase = Some(
            match (ready, upgrading, self.status.version.is_some()) {
                _ if sleeping => "Sleeping",
                (_, true, _) => "Upgrading",
                (true, false, _) => "Ready",
                (false, false, true) => "NotReady",
                (false, false, false) => "Provisioning",
            }
            .into(),
        );
        self.status.observed_generation = self.generation;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn tcp() -> TenantControlPlane {
        let mut t =
            TenantControlPlane::new("t", serde_yaml_ng::from_str("version: v1.34.4").unwrap());
        t.metadata.generation = Some(3);
        t
    }

    fn time() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    fn all_true(t: &mut Tracker) {
        for c in [
            CERTIFICATES_READY,
            DATASTORE_READY,
            CONTROL_PLANE_AVAILABLE,
            TENANT_API_READY,
            TENANT_BOOTSTRAPPED,
        ] {
            t.set(c, true, "Ok", "");
        }
    }

    fn condition(t: &Tracker, type_: &str) -> (String, String) {
        let c = t
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_phase_and_degraded_follow_the_outcome() {
        let failed = || Err(Stop::Failed(Error::DataStore("boom".into())));
        let invalid = || {
            Err(Stop::Blocked(Blocked::until_changed(
                READY,
                "InvalidSpec",
                "spec.x: bad",
            )))
        };
        let blocked = || {
            Err(Stop::Blocked(Blocked::waiting(
                TENANT_API_READY,
                "TenantAPINotReady",
                "no",
            )))
        };
        // (all conditions true, rolled-out version, outcome) → (Ready, reason, Degraded, phase)
        type Outcome = fn() -> Result<(), Stop>;
        type Case = (
            bool,
            Option<&'static str>,
            Outcome,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                true,
                Some("v1.34.4"),
                || Ok(()),
                "True",
                "Ready",
                "False",
                "Ready",
            ),
            (
                true,
                None,
                || Ok(()),
                "False",
                "NotReady",
                "False",
                "Provisioning",
            ),
            (
                false,
                Some("v1.34.4"),
                || Ok(()),
                "False",
                "NotReady",
                "False",
                "NotReady",
            ),
            (
                true,
                Some("v1.33.2"),
                || Ok(()),
                "True",
                "Ready",
                "False",
                "Upgrading",
            ),
            (
                true,
                Some("v1.34.4"),
                failed,
                "False",
                "ReconcileFailed",
                "True",
                "NotReady",
            ),
            (
                true,
                None,
                failed,
                "False",
                "ReconcileFailed",
                "True",
                "Provisioning",
            ),
            (
                true,
                Some("v1.34.4"),
                invalid,
                "False",
                "InvalidSpec",
                "False",
                "NotReady",
            ),
            (
                true,
                Some("v1.34.4"),
                blocked,
                "True",
                "Ready",
                "False",
                "Ready",
            ),
        ];
        for (i, (conds, version, outcome, ready, reason, degraded, phase)) in
            cases.into_iter().enumerate()
        {
            let mut t = Tracker::new(&tcp(), time());
            if conds {
                all_true(&mut t);
            }
            t.status.version = version.map(Into::into);
            let outcome = outcome();
            if let Err(Stop::Blocked(b)) = &outcome
                && b.condition != READY
            {
                // A blocked step that is not required for Ready in this row leaves it as it is.
                t.block(b);
                t.set(b.condition, true, "Ok", "");
            }
            t.finish("v1.34.4", &outcome, true, false);
            assert_eq!(
                condition(&t, READY),
                (ready.into(), reason.into()),
                "case {i}"
            );
            assert_eq!(condition(&t, DEGRADED).0, degraded, "case {i}");
            assert_eq!(t.status.phase.as_deref(), Some(phase), "case {i}");
            assert_eq!(t.status.observed_generation, Some(3), "case {i}");
        }
    }

    #[test]
    fn a_block_is_news_once() {
        let mut t = Tracker::new(&tcp(), time());
        let b = Blocked::waiting(TENANT_API_READY, "TenantAPINotReady", "no answer");
        assert!(t.block(&b));
        assert!(!t.block(&b), "same reason again is no news");
        let other = Blocked::waiting(TENANT_API_READY, "WaitingForControlPlane", "no pod");
        assert!(t.block(&other));
    }

    #[test]
    fn a_sleeping_tenant_is_in_phase_sleeping_and_not_ready() {
        let mut t = Tracker::new(&tcp(), time());
        all_true(&mut t);
        t.status.version = Some("v1.34.4".into());
        let asleep = Blocked::until_changed(READY, crate::conditions::SLEEPING, "asleep");
        let outcome = Err(Stop::Blocked(asleep));
        t.finish("v1.34.4", &outcome, true, true);
        assert_eq!(t.status.phase.as_deref(), Some("Sleeping"));
        assert_eq!(condition(&t, READY), ("False".into(), "Sleeping".into()));
        assert_eq!(condition(&t, DEGRADED).0, "False", "sleep is no fault");
    }
}
