//! What the external resizer does for a CSI driver, pure: which bound claims of this driver
//! asked for more than their volume holds, and the claim statuses of each step. The steps
//! follow the protocol the tenant's kubelet reads (the claim's `allocatedResourceStatuses`):
//! ControllerResizeInProgress while the disk grows, then NodeResizePending until the kubelet
//! has grown the filesystem at the next mount (a filesystem volume), or done (a raw block one).
//! A request the driver refuses for good is ControllerResizeInfeasible until the claim asks for
//! another size.

use super::claims::quantity_bytes;
use super::proto::csi::VolumeCapability;
use super::runner::publish_inputs;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use serde_json::{Value, json};

const STORAGE: &str = "storage";
pub const CONTROLLER_IN_PROGRESS: &str = "ControllerResizeInProgress";
pub const CONTROLLER_INFEASIBLE: &str = "ControllerResizeInfeasible";
pub const NODE_PENDING: &str = "NodeResizePending";

/// What a bound claim needs of the resizer.
#[derive(Debug, PartialEq)]
pub enum ResizePlan {
    /// Not this driver's, not bound, or holding what it asks for.
    Settled,
    /// Refused before: waits for the claim to ask for another size.
    Infeasible,
    /// The request cannot be read: says why (the API server checks it, so this is rare).
    Refuse(String),
    /// Grow the volume.
    Expand(Box<Expand>),
}

#[derive(Debug, PartialEq)]
pub struct Expand {
    pub volume_id: String,
    pub capability: VolumeCapability,
    /// The size the claim asks for, in bytes.
    pub bytes: i64,
    /// The claim's request, as written (the allocated size the claim's status records).
    pub request: String,
    /// Whether the claim's status already records this resize as under way.
    pub started: bool,
}

/// The plan for `claim`, bound to `pv`.
pub fn plan(claim: &PersistentVolumeClaim, pv: &PersistentVolume) -> ResizePlan {
    let bound = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref())
        == pv.metadata.name.as_deref()
        && pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref())
            == claim.uid().as_deref();
    let Some((volume_id, capability)) = publish_inputs(pv).filter(|_| bound) else {
        return ResizePlan::Settled;
    };
    if claim.metadata.deletion_timestamp.is_some() {
        return ResizePlan::Settled;
    }
    let Some(request) = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(STORAGE))
    else {
        return ResizePlan::Settled;
    };
    let bytes = match quantity_bytes(request) {
        Ok(b) => b,
        Err(e) => return ResizePlan::Refuse(format!("spec.resources.requests.storage: {e}")),
    };
    let held = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get(STORAGE))
        .and_then(|q| quantity_bytes(q).ok())
        .unwrap_or(0);
    let status = claim.status.as_ref();
    let resize_status = status
        .and_then(|s| s.allocated_resource_statuses.as_ref())
        .and_then(|s| s.get(STORAGE))
        .map(String::as_str);
    let allocated = status
        .and_then(|s| s.allocated_resources.as_ref())
        .and_then(|r| r.get(STORAGE))
        .and_then(|q| quantity_bytes(q).ok());
    let expand = || {
        ResizePlan::Expand(Box::new(Expand {
            volume_id: volume_id.clone(),
            capability: capability.clone(),
            bytes,
            request: request.0.clone(),
            started: resize_status == Some(CONTROLLER_IN_PROGRESS) && allocated == Some(bytes),
        }))
    };
    match resize_status {
        Some(CONTROLLER_INFEASIBLE) if allocated == Some(bytes) => ResizePlan::Infeasible,
        // A resize cut short (the operator restarted between the disk and the claim's status):
        // growing again is a no-op that finishes it.
        Some(CONTROLLER_IN_PROGRESS) => expand(),
        _ if bytes > held => expand(),
        _ => ResizePlan::Settled,
    }
}

/// The claim's status while its disk grows to `request`.
pub fn in_progress(request: &str) -> Value {
    json!({
        "allocatedResources": {STORAGE: request},
        "allocatedResourceStatuses": {STORAGE: CONTROLLER_IN_PROGRESS},
        "conditions": [condition("Resizing", "")],
    })
}

/// The claim's status while its resize waits, saying why (a disk still attached).
pub fn waiting(why: &str) -> Value {
    json!({"conditions": [condition("Resizing", why)]})
}

/// The claim's status once its disk holds `bytes`: the node grows the filesystem at the next
/// mount, or (`on_node` false, a raw block volume) the claim holds them at once.
pub fn expanded(bytes: i64, on_node: bool) -> Value {
    if on_node {
        json!({
            "allocatedResourceStatuses": {STORAGE: NODE_PENDING},
            "conditions": [condition(
                "FileSystemResizePending",
                "waiting for a pod to mount the volume on a node to finish growing its filesystem",
            )],
        })
    } else {
        json!({
            "capacity": {STORAGE: bytes.to_string()},
            "allocatedResourceStatuses": null,
            "conditions": null,
        })
    }
}

/// The claim's status when the driver refuses to grow it, saying why.
pub fn infeasible(message: &str) -> Value {
    json!({
        "allocatedResourceStatuses": {STORAGE: CONTROLLER_INFEASIBLE},
        "conditions": [condition("ControllerResizeError", message)],
    })
}

fn condition(type_: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": "True",
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(request: &str, held: &str, status: Value) -> (PersistentVolumeClaim, PersistentVolume) {
        let claim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "app", "uid": "u-1"},
            "spec": {"volumeName": "pvc-u-1", "resources": {"requests": {"storage": request}}},
            "status": status,
        }))
        .unwrap();
        let pv = serde_json::from_value(json!({
            "metadata": {"name": "pvc-u-1"},
            "spec": {
                "capacity": {"storage": held},
                "claimRef": {"name": "data", "namespace": "app", "uid": "u-1"},
                "accessModes": ["ReadWriteOnce"],
                "csi": {"driver": "csi.orrery.dev", "volumeHandle": "0123456789abcdef0123", "fsType": "ext4"},
            },
        }))
        .unwrap();
        (claim, pv)
    }

    fn expanding(plan: ResizePlan) -> Expand {
        match plan {
            ResizePlan::Expand(e) => *e,
            other => panic!("expected an expand, got {other:?}"),
        }
    }

    fn expand_bytes(plan: ResizePlan) -> i64 {
        expanding(plan).bytes
    }

    #[test]
    fn a_claim_asking_for_more_than_its_volume_holds_grows() {
        let (claim, pv) = pair("128Mi", "67108864", json!({"phase": "Bound"}));
        assert_eq!(expand_bytes(plan(&claim, &pv)), 128 << 20);
        let (claim, pv) = pair("64Mi", "67108864", json!({"phase": "Bound"}));
        assert_eq!(plan(&claim, &pv), ResizePlan::Settled);
    }

    #[test]
    fn a_resize_cut_short_is_finished() {
        let status = json!({
            "allocatedResources": {"storage": "128Mi"},
            "allocatedResourceStatuses": {"storage": CONTROLLER_IN_PROGRESS},
        });
        let (claim, pv) = pair("128Mi", "134217728", status);
        let e = expanding(plan(&claim, &pv));
        assert_eq!(e.bytes, 128 << 20);
        assert!(e.started, "its status is not written again");
        let (claim, pv) = pair("128Mi", "67108864", json!({"phase": "Bound"}));
        assert!(!expanding(plan(&claim, &pv)).started);
    }

    #[test]
    fn a_refused_size_waits_for_another() {
        let status = json!({
            "allocatedResources": {"storage": "2Ti"},
            "allocatedResourceStatuses": {"storage": CONTROLLER_INFEASIBLE},
        });
        let (claim, pv) = pair("2Ti", "67108864", status.clone());
        assert_eq!(plan(&claim, &pv), ResizePlan::Infeasible);
        let (claim, pv) = pair("128Mi", "67108864", status);
        assert_eq!(expand_bytes(plan(&claim, &pv)), 128 << 20);
    }

    #[test]
    fn other_volumes_and_other_claims_are_left_alone() {
        let (claim, mut pv) = pair("128Mi", "67108864", json!({}));
        pv.spec.as_mut().unwrap().csi.as_mut().unwrap().driver = "other.csi".into();
        assert_eq!(plan(&claim, &pv), ResizePlan::Settled);
        let (mut claim, pv) = pair("128Mi", "67108864", json!({}));
        claim.metadata.uid = Some("u-2".into());
        assert_eq!(
            plan(&claim, &pv),
            ResizePlan::Settled,
            "the volume is another claim's"
        );
    }

    #[test]
    fn a_filesystem_waits_for_the_node_and_a_block_volume_is_done() {
        let fs = expanded(128 << 20, true);
        assert_eq!(fs["allocatedResourceStatuses"]["storage"], NODE_PENDING);
        assert_eq!(fs["conditions"][0]["type"], "FileSystemResizePending");
        assert!(
            fs.get("capacity").is_none(),
            "the kubelet records the capacity"
        );
        let block = expanded(128 << 20, false);
        assert_eq!(block["capacity"]["storage"], "134217728");
        assert_eq!(block["allocatedResourceStatuses"], Value::Null);
    }
}
