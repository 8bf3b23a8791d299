//! A pool's status from its observed machines, pure: counts, the machines, the version and the
//! Ready, Progressing and Degraded conditions. Conditions keep their transition times, so an
//! unchanged pool yields an identical status and no write.

use super::machine::Observed;
use crate::api::{MachinePhase, NodePool, NodePoolStatus};
use crate::conditions::{self, DEGRADED, READY};
use crate::stop::Stop;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Machines are being created, rolled or removed.
pub const PROGRESSING: &str = "Progressing";
/// The reason of Ready (False) and Degraded (True) while some of the pool's nodes are not Ready.
pub const NODES_NOT_READY: &str = "NodesNotReady";

/// What the status is computed from.
pub struct Inputs<'a> {
    pub pool: &'a NodePool,
    /// The machines, or None when the reconcile stopped before it could see them.
    pub machines: Option<&'a [Observed]>,
    /// The hash of the current template and version.
    pub template_hash: Option<&'a str>,
    /// The label selector of the pool's VMs.
    pub selector: String,
    /// How the reconcile ended.
    pub outcome: &'a Result<(), Stop>,
    pub now: Time,
}

/// The oldest kubelet version among the machines (so an upgrade shows until it is complete).
fn oldest_version(machines: &[Observed]) -> Option<String> {
    machines
        .iter()
        .filter(|o| o.machine.phase != MachinePhase::Deleting && !o.status.version.is_empty())
        .map(|o| o.status.version.clone())
        .min_by(|a, b| version_key(a).cmp(&version_key(b)))
}

fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split(['.', '-', '+'])
        .map_while(|p| p.parse().ok())
        .collect()
}

pub fn status(i: &Inputs) -> NodePoolStatus {
    let previous = i.pool.status.clone().unwrap_or_default();
    let mut st = NodePoolStatus {
        observed_generation: i.pool.metadata.generation,
        selector: Some(i.selector.clone()),
        conditions: previous.conditions.clone(),
        ..previous.clone()
    };
    let generation = i.pool.metadata.generation;
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions::set(
            &mut st.conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            &i.now,
        )
    };
    let want = i.pool.spec.replicas.max(0);
    if let (Some(machines), Some(hash)) = (i.machines, i.template_hash) {
        let live: Vec<&Observed> = machines
            .iter()
            .filter(|o| o.machine.phase != MachinePhase::Deleting)
            .collect();
        let count = |f: &dyn Fn(&Observed) -> bool| live.iter().filter(|o| f(o)).count() as i32;
        let ready = count(&|o| o.machine.phase == MachinePhase::Ready);
        let updated = count(&|o| o.machine.template_hash == hash);
        let available =
            count(&|o| o.machine.phase == MachinePhase::Ready && o.machine.template_hash == hash);
        let deleting = machines.len() as i32 - live.len() as i32;
        let not_ready: Vec<&str> = live
            .iter()
            .filter(|o| o.machine.phase == MachinePhase::NotReady)
            .map(|o| o.machine.name.as_str())
            .collect();
        set(
            READY,
            available >= want,
            if available >= want {
                "NodesReady"
            } else {
                "NodesNotReady"
            },
            format!("{available}/{want} nodes Ready and up to date"),
        );
        let progressing = live.len() as i32 != want || updated != live.len() as i32 || deleting > 0;
        let message = format!(
            "{} machines, {updated} up to date, {deleting} being removed; {want} wanted",
            live.len()
        );
        let reason = if updated != live.len() as i32 {
            "RollingUpdate"
        } else if deleting > 0 || live.len() as i32 > want {
            "ScalingDown"
        } else if (live.len() as i32) < want {
            "ScalingUp"
        } else if ready < want {
            "Joining"
        } else {
            "Stable"
        };
        set(PROGRESSING, progressing || ready < want, reason, message);
        if not_ready.is_empty() {
            set(DEGRADED, false, "AsExpected", "no node is NotReady".into());
        } else {
            let message = format!("NotReady: {}", not_ready.join(", "));
            set(DEGRADED, true, NODES_NOT_READY, message);
        }
        st.replicas = live.len() as i32;
        st.ready_replicas = ready;
        st.updated_replicas = updated;
        st.available_replicas = available;
        st.version = oldest_version(machines).or(previous.version);
        st.machines = machines.iter().map(|o| o.status.clone()).collect();
    }
    match i.outcome {
        Ok(()) => {}
        Err(Stop::Blocked(b)) => {
            set(READY, false, b.reason, b.message.clone());
            set(DEGRADED, true, b.reason, b.message.clone());
        }
        Err(stop @ Stop::Failed(_)) => {
            set(DEGRADED, true, stop.category(), stop.to_string());
        }
    }
    st
}

/// The merge patch that writes `st`. An empty machine list is left out when serialized, yet the
/// patch must still clear the old one.
pub fn merge_patch(st: &NodePoolStatus) -> serde_json::Value {
    let mut patch = serde_json::json!({ "status": st });
    patch["status"]["machines"] = serde_json::json!(st.machines);
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineStatus;
    use crate::nodepool::plan::Machine;
    use crate::stop::Blocked;
    use k8s_openapi::jiff::Timestamp;

    fn pool(replicas: i32) -> NodePool {
        let yaml =
            format!("controlPlaneRef: {{name: t}}\nreplicas: {replicas}\ntemplate: {{cores: 1}}\n");
        let mut p = NodePool::new("p", serde_yaml_ng::from_str(&yaml).unwrap());
        p.metadata.generation = Some(3);
        p
    }

    fn observed(name: &str, phase: MachinePhase, hash: &str, version: &str) -> Observed {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        Observed {
            machine: Machine {
                name: name.into(),
                template_hash: hash.into(),
                phase,
                created: t,
                not_ready_since: None,
                delete_requested: false,
            },
            status: MachineStatus {
                name: name.into(),
                node: None,
                phase,
                version: version.into(),
                template_hash: hash.into(),
                since: Time(t),
                message: None,
            },
            joined: phase == MachinePhase::Ready,
        }
    }

    fn now() -> Time {
        Time("2026-01-01T01:00:00Z".parse().unwrap())
    }

    fn status_of(
        pool: &NodePool,
        machines: Option<&[Observed]>,
        outcome: &Result<(), Stop>,
        now: Time,
    ) -> NodePoolStatus {
        status(&Inputs {
            pool,
            machines,
            template_hash: machines.map(|_| "h"),
            selector: "s".into(),
            outcome,
            now,
        })
    }

    fn cond<'a>(
        st: &'a NodePoolStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        st.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_converged_pool_is_ready_and_stable() {
        let p = pool(2);
        let machines = [
            observed("a", MachinePhase::Ready, "h", "v1.34.4"),
            observed("b", MachinePhase::Ready, "h", "v1.34.4"),
        ];
        let ok = Ok(());
        let st = status_of(&p, Some(&machines), &ok, now());
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.updated_replicas,
                st.available_replicas
            ),
            (2, 2, 2, 2)
        );
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.version.as_deref(), Some("v1.34.4"));
        assert_eq!(cond(&st, READY).status, "True");
        assert_eq!(cond(&st, PROGRESSING).status, "False");
        assert_eq!(cond(&st, PROGRESSING).reason, "Stable");
        assert_eq!(cond(&st, DEGRADED).status, "False");

        // The same inputs again give the same status: nothing to write.
        let mut again = p.clone();
        again.status = Some(st.clone());
        let later = Time("2026-01-01T02:00:00Z".parse().unwrap());
        let st2 = status_of(&again, Some(&machines), &ok, later);
        assert_eq!(st, st2);
    }

    #[test]
    fn a_rolling_pool_with_a_sick_node_says_so() {
        let p = pool(2);
        let machines = [
            observed("a", MachinePhase::Ready, "old", "v1.33.9"),
            observed("b", MachinePhase::NotReady, "h", "v1.34.4"),
            observed("c", MachinePhase::Deleting, "old", "v1.33.1"),
        ];
        let ok = Ok(());
        let st = status_of(&p, Some(&machines), &ok, now());
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.updated_replicas,
                st.available_replicas
            ),
            (2, 1, 1, 0)
        );
        assert_eq!(
            st.version.as_deref(),
            Some("v1.33.9"),
            "oldest of the live machines"
        );
        assert_eq!(cond(&st, READY).status, "False");
        assert_eq!(cond(&st, PROGRESSING).reason, "RollingUpdate");
        assert_eq!(cond(&st, DEGRADED).status, "True");
        assert_eq!(cond(&st, DEGRADED).message, "NotReady: b");
        assert_eq!(st.machines.len(), 3);
    }

    #[test]
    fn the_patch_clears_machines_that_are_gone() {
        let empty = NodePoolStatus::default();
        assert_eq!(
            merge_patch(&empty)["status"]["machines"],
            serde_json::json!([])
        );
        let one = NodePoolStatus {
            machines: vec![observed("a", MachinePhase::Ready, "h", "v1.34.4").status],
            ..Default::default()
        };
        assert_eq!(merge_patch(&one)["status"]["machines"][0]["name"], "a");
    }

    #[test]
    fn a_blocked_reconcile_names_its_reason() {
        let p = pool(1);
        let blocked = Err(Stop::Blocked(Blocked::waiting(
            READY,
            "WaitingForControlPlane",
            "tenant t is not Ready",
        )));
        let st = status_of(&p, None, &blocked, now());
        assert_eq!(cond(&st, READY).reason, "WaitingForControlPlane");
        assert_eq!(cond(&st, DEGRADED).message, "tenant t is not Ready");
        assert_eq!(st.replicas, 0);
    }
}
