//! Draining a node inside the tenant, as `kubectl drain` does: cordon it, then evict its pods
//! through the Eviction API so PodDisruptionBudgets are respected. One call is one step; the
//! controller calls again on its next reconcile until the node is empty or the timeout passed.

use crate::Result;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tracing::debug;

/// Where a drain stands after one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No pod that must move is left on the node (or the node is gone).
    Done,
    /// `remaining` pods still run there; `blocked` of them are held by a disruption budget.
    Pending { remaining: usize, blocked: usize },
}

/// Whether a drain must move `pod`: DaemonSet pods and static (mirror) pods stay, finished pods
/// do not matter.
pub fn must_move(pod: &Pod) -> bool {
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    let daemon = pod
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !(mirror || daemon || finished)
}

/// Cordons `node` and asks once for the eviction of each pod that must move.
pub async fn step(tenant: &kube::Client, node: &str) -> Result<Progress> {
    let nodes = Api::<Node>::all(tenant.clone());
    let Some(current) = nodes.get_opt(node).await? else {
        return Ok(Progress::Done);
    };
    let cordoned = current
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !cordoned {
        let patch = json!({"spec": {"unschedulable": true}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    // A node whose kubelet does not report cannot finish its pods' deletion: once evicted,
    // they count as gone there (as `kubectl drain` skips them after a grace period).
    let reporting = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let pods = Api::<Pod>::all(tenant.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let moving: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| must_move(p))
        .filter(|p| reporting || p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut blocked = 0;
    for pod in &moving {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api = Api::<Pod>::namespaced(tenant.clone(), &ns);
        match api.evict(&pod.name_any(), &EvictParams::default()).await {
            Ok(_) => debug!(pod = %pod.name_any(), %node, "evicted"),
            // A PodDisruptionBudget does not allow it now: ask again on the next step.
            Err(kube::Error::Api(e)) if e.code == 429 => blocked += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if moving.is_empty() {
        Ok(Progress::Done)
    } else {
        Ok(Progress::Pending {
            remaining: moving.len(),
            blocked,
        })
    }
}

/// Removes `node` from the tenant; a node already gone is fine.
pub async fn delete_node(tenant: &kube::Client, node: &str) -> Result<()> {
    match Api::<Node>::all(tenant.clone())
        .delete(node, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use std::collections::BTreeMap;

    fn pod(owner: Option<&str>, mirror: bool, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                owner_references: owner.map(|kind| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                annotations: mirror.then(|| {
                    BTreeMap::from([("kubernetes.io/config.mirror".to_string(), "x".to_string())])
                }),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_pods_that_can_move_are_evicted() {
        assert!(must_move(&pod(Some("ReplicaSet"), false, "Running")));
        assert!(must_move(&pod(None, false, "Pending")));
        assert!(!must_move(&pod(Some("DaemonSet"), false, "Running")));
        assert!(!must_move(&pod(None, true, "Running")));
        assert!(!must_move(&pod(Some("Job"), false, "Succeeded")));
        assert!(!must_move(&pod(Some("ReplicaSet"), false, "Failed")));
    }
}
