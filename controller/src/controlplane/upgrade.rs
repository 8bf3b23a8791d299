//! Where a version change stands: the `VersionCurrent` condition, read from the control-plane
//! Deployment's roll. The roll replaces one replica at a time and removes an old one only once a
//! new one is ready, so the old version serves until the new one does; a roll that makes no
//! progress stops there, says why, and resumes by itself once the cause is gone.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

/// How far the control-plane Deployment has rolled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roll {
    /// Replicas of the current template.
    pub updated: i32,
    /// Replicas asked for.
    pub want: i32,
    /// The Deployment's own word when its progress deadline passed.
    pub stalled: Option<String>,
}

impl Roll {
    pub fn of(deployment: &Deployment, want: i32) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        let stalled = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
            .map(|c| c.message.unwrap_or_default());
        Self {
            updated: status.updated_replicas.unwrap_or(0),
            want,
            stalled,
        }
    }
}

/// VersionCurrent's (status, reason, message), for `version` asked for and `running`, the
/// version every replica ran at the last completed roll. `why` names what holds new pods back.
pub fn condition(
    version: &str,
    running: Option<&str>,
    roll: &Roll,
    why: Option<&str>,
) -> (bool, &'static str, String) {
    if running == Some(version) {
        return (
            true,
            "AtVersion",
            format!("the control plane runs {version} on every replica"),
        );
    }
    let serving = match running {
        Some(old) => format!("{old} serves meanwhile"),
        None => "nothing serves yet".to_string(),
    };
    if let Some(stalled) = &roll.stalled {
        let why = why.map_or(String::new(), |w| format!(" ({w})"));
        return (
            false,
            "RollStalled",
            format!(
                "the roll to {version} makes no progress: {stalled}{why}; {serving}. It goes on \
                 by itself once the cause is fixed"
            ),
        );
    }
    (
        false,
        "RollingOut",
        format!(
            "rolling out {version}: {}/{} replicas updated; {serving}",
            roll.updated.min(roll.want),
            roll.want
        ),
    )
}

/// What keeps the first of `pods` that is not ready from starting: a container's waiting reason
/// and message (ErrImagePull, CrashLoopBackOff, ...), or an unschedulable pod's message.
pub fn why_pods_wait(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.waiting.clone())
            .filter(|w| w.reason.as_deref() != Some("ContainerCreating"));
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        if let Some(w) = waiting {
            let reason = w.reason.unwrap_or_default();
            return Some(match w.message {
                Some(m) if !m.is_empty() => format!("pod {name}: {reason}: {m}"),
                _ => format!("pod {name}: {reason}"),
            });
        }
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| {
                format!(
                    "pod {name}: not scheduled: {}",
                    c.message.clone().unwrap_or_default()
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roll(updated: i32, stalled: Option<&str>) -> Roll {
        Roll {
            updated,
            want: 2,
            stalled: stalled.map(Into::into),
        }
    }

    #[test]
    fn the_condition_says_where_the_roll_stands() {
        let cases = [
            (
                "at the version",
                Some("v1.37.2"),
                roll(2, None),
                None,
                (
                    true,
                    "AtVersion",
                    "the control plane runs v1.37.2 on every replica",
                ),
            ),
            (
                "first rollout",
                None,
                roll(0, None),
                None,
                (
                    false,
                    "RollingOut",
                    "rolling out v1.37.2: 0/2 replicas updated; nothing serves yet",
                ),
            ),
            (
                "mid-upgrade, the surge counted once",
                Some("v1.36.3"),
                roll(3, None),
                None,
                (
                    false,
                    "RollingOut",
                    "rolling out v1.37.2: 2/2 replicas updated; v1.36.3 serves meanwhile",
                ),
            ),
            (
                "stalled, with the pod's reason",
                Some("v1.36.3"),
                roll(1, Some("ReplicaSet \"t-7f\" has timed out progressing.")),
                Some("pod t-7f-x: ErrImagePull: not found"),
                (
                    false,
                    "RollStalled",
                    "the roll to v1.37.2 makes no progress: ReplicaSet \"t-7f\" has timed out \
                     progressing. (pod t-7f-x: ErrImagePull: not found); v1.36.3 serves \
                     meanwhile. It goes on by itself once the cause is fixed",
                ),
            ),
        ];
        for (what, running, roll, why, (status, reason, message)) in cases {
            assert_eq!(
                condition("v1.37.2", running, &roll, why),
                (status, reason, message.to_string()),
                "{what}"
            );
        }
    }

    #[test]
    fn a_stalled_deployment_is_read_from_its_progressing_condition() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "status": {"updatedReplicas": 1, "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"x\" has timed out progressing."}
            ]}
        }))
        .unwrap();
        assert_eq!(
            Roll::of(&d, 2),
            Roll {
                updated: 1,
                want: 2,
                stalled: Some("ReplicaSet \"x\" has timed out progressing.".into())
            }
        );
        let progressing: Deployment = serde_json::from_value(serde_json::json!({
            "status": {"conditions": [
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
            ]}
        }))
        .unwrap();
        assert_eq!(Roll::of(&progressing, 2).stalled, None);
    }

    #[test]
    fn the_reason_pods_wait_names_the_pod_and_its_container_state() {
        let pod = |name: &str, status: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "status": status
            }))
            .unwrap()
        };
        let creating = pod(
            "a",
            serde_json::json!({"containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        let pulling = pod(
            "b",
            serde_json::json!({"containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}),
        );
        let pending = pod(
            "c",
            serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/3 nodes are available"}]}),
        );
        assert_eq!(why_pods_wait(std::slice::from_ref(&creating)), None);
        assert_eq!(
            why_pods_wait(&[creating.clone(), pulling]).as_deref(),
            Some("pod b: ImagePullBackOff: no such image")
        );
        assert_eq!(
            why_pods_wait(&[creating, pending]).as_deref(),
            Some("pod c: not scheduled: 0/3 nodes are available")
        );
    }
}
