//! Standard `metav1.Condition` bookkeeping.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const CERTIFICATES_READY: &str = "CertificatesReady";
pub const DATASTORE_READY: &str = "DataStoreReady";
pub const CONTROL_PLANE_AVAILABLE: &str = "ControlPlaneAvailable";
pub const TENANT_API_READY: &str = "TenantAPIReady";
pub const TENANT_BOOTSTRAPPED: &str = "TenantBootstrapped";
pub const READY: &str = "Ready";
/// The reason of Ready, ControlPlaneAvailable, TenantAPIReady and AddonsReady while the tenant
/// sleeps (spec.sleep).
pub const SLEEPING: &str = "Sleeping";
/// Every add-on switched on runs (not part of Ready).
pub const ADDONS_READY: &str = "AddonsReady";
/// The control plane runs spec.version on every replica; while False, its reason says where a
/// version change stands (RollingOut, RollStalled).
pub const VERSION_CURRENT: &str = "VersionCurrent";
/// True while reconciles fail; its reason names the kind of failure.
pub const DEGRADED: &str = "Degraded";

/// Sets condition `type_` in `conditions`. `lastTransitionTime` moves only when the status
/// changes, so an unchanged reconcile produces an identical list (and no status write).
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Whether condition `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            READY,
            false,
            "Provisioning",
            "starting",
            Some(1),
            &time("2026-01-01T00:00:00Z"),
        );
        set(
            &mut conds,
            READY,
            false,
            "Provisioning",
            "still starting",
            Some(2),
            &time("2026-01-01T00:01:00Z"),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, time("2026-01-01T00:00:00Z"));
        assert_eq!(conds[0].message, "still starting");
        assert_eq!(conds[0].observed_generation, Some(2));
        set(
            &mut conds,
            READY,
            true,
            "Ready",
            "up",
            Some(2),
            &time("2026-01-01T00:02:00Z"),
        );
        assert_eq!(conds[0].last_transition_time, time("2026-01-01T00:02:00Z"));
        assert!(is_true(&conds, READY));
        assert!(!is_true(&conds, CERTIFICATES_READY));
    }
}
