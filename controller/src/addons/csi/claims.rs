//! What the external provisioner does for a CSI driver, pure: which tenant claims want a volume
//! of this driver, the CreateVolume request a claim makes, the PersistentVolume that binds it,
//! and what becomes of a released volume.

use super::DRIVER;
use super::proto::csi::volume_capability::access_mode::Mode;
use super::proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use super::proto::csi::{CapacityRange, CreateVolumeRequest, Volume, VolumeCapability};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// The annotations with which the tenant's PersistentVolume controller hands a claim to a
/// provisioner (the beta one on claims of older clusters).
pub const PROVISIONER_ANNOTATIONS: [&str; 2] = [
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
];
/// The node the scheduler picked for a WaitForFirstConsumer claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Marks the volumes this driver made.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Keeps a volume with reclaim policy Delete until its disk is deleted, as the external
/// provisioner does.
pub const PV_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// StorageClass parameter naming the filesystem.
pub const FSTYPE_PARAMETER: &str = "csi.storage.k8s.io/fstype";
/// Prefix of the StorageClass parameters meant for the provisioner, not the driver.
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

/// What a claim needs.
#[derive(Debug, PartialEq)]
pub enum ClaimPlan {
    /// Not this driver's, or already bound.
    Ignore,
    /// This driver's, but not yet: says why.
    Wait(String),
    /// Refused for good (until the claim or its class changes): says why.
    Refuse(String),
    /// Make the volume.
    Provision(Box<CreateVolumeRequest>),
}

/// The CSI name of the volume of `claim` (and its PersistentVolume's name).
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

/// Whether `claim` is handed to this driver.
pub fn is_ours(claim: &PersistentVolumeClaim) -> bool {
    let a = claim.annotations();
    PROVISIONER_ANNOTATIONS
        .iter()
        .any(|k| a.get(*k).is_some_and(|v| v == DRIVER))
}

/// The plan for `claim`, whose StorageClass is `class` (None: not found).
pub fn plan_claim(claim: &PersistentVolumeClaim, class: Option<&StorageClass>) -> ClaimPlan {
    if !is_ours(claim) || claim.meta().deletion_timestamp.is_some() {
        return ClaimPlan::Ignore;
    }
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return ClaimPlan::Ignore;
    }
    let class_name = spec.storage_class_name.clone().unwrap_or_default();
    let Some(class) = class else {
        return ClaimPlan::Wait(format!("StorageClass {class_name:?} is not found"));
    };
    if class.provisioner != DRIVER {
        return ClaimPlan::Ignore;
    }
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && !claim.annotations().contains_key(SELECTED_NODE)
    {
        return ClaimPlan::Wait("waiting for a pod to be scheduled with it".into());
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return ClaimPlan::Refuse(
            "spec.dataSource: volumes from snapshots or other claims are not offered".into(),
        );
    }
    let params = class.parameters.clone().unwrap_or_default();
    let fs_type = params.get(FSTYPE_PARAMETER).cloned().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let access_type = if block {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type,
            mount_flags: class.mount_options.clone().unwrap_or_default(),
            volume_mount_group: String::new(),
        })
    };
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() {
        return ClaimPlan::Refuse("spec.accessModes is empty".into());
    }
    let mut capabilities = vec![];
    for m in &modes {
        let mode = match m.as_str() {
            "ReadWriteOnce" => Mode::SingleNodeWriter,
            "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
            "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
            "ReadWriteMany" => Mode::MultiNodeMultiWriter,
            other => return ClaimPlan::Refuse(format!("spec.accessModes: {other:?} is unknown")),
        };
        capabilities.push(VolumeCapability {
            access_type: Some(access_type.clone()),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        });
    }
    let resources = spec.resources.unwrap_or_default();
    let bytes = |q: Option<&Quantity>| q.map(quantity_bytes).transpose();
    let (required, limit) = match (
        bytes(resources.requests.as_ref().and_then(|r| r.get("storage"))),
        bytes(resources.limits.as_ref().and_then(|r| r.get("storage"))),
    ) {
        (Ok(r), Ok(l)) => (r.unwrap_or(0), l.unwrap_or(0)),
        (Err(e), _) => return ClaimPlan::Refuse(format!("spec.resources.requests.storage: {e}")),
        (_, Err(e)) => return ClaimPlan::Refuse(format!("spec.resources.limits.storage: {e}")),
    };
    ClaimPlan::Provision(Box::new(CreateVolumeRequest {
        name: volume_name(claim),
        capacity_range: Some(CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        volume_capabilities: capabilities,
        parameters: params
            .into_iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .collect(),
        ..Default::default()
    }))
}

/// A quantity in bytes (whole bytes; "1Gi", "500M", "1e9").
pub fn quantity_bytes(q: &Quantity) -> Result<i64, String> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        other => return Err(format!("{s:?}: unit {other:?} is not a size")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a quantity"))?;
    let bytes = (n * factor).ceil();
    if !(0.0..9.0e18).contains(&bytes) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as i64)
}

/// The PersistentVolume that binds `claim` to the new `volume`.
pub fn build_pv(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    request: &CreateVolumeRequest,
    volume: &Volume,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let reclaim = class
        .reclaim_policy
        .clone()
        .unwrap_or_else(|| "Delete".into());
    let fs_type = request
        .volume_capabilities
        .first()
        .and_then(|c| match &c.access_type {
            Some(AccessType::Mount(m)) => Some(if m.fs_type.is_empty() {
                super::capability::DEFAULT_FS.to_owned()
            } else {
                m.fs_type.clone()
            }),
            _ => None,
        });
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_owned(),
                DRIVER.to_owned(),
            )])),
            finalizers: (reclaim == "Delete").then(|| vec![PV_FINALIZER.to_owned()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity(volume.capacity_bytes.to_string()),
            )])),
            access_modes: spec.access_modes,
            volume_mode: spec.volume_mode,
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.namespace(),
                name: Some(claim.name_any()),
                uid: claim.uid(),
                resource_version: claim.resource_version(),
                ..Default::default()
            }),
            persistent_volume_reclaim_policy: Some(reclaim),
            storage_class_name: class.metadata.name.clone(),
            mount_options: class.mount_options.clone(),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER.into(),
                volume_handle: volume.volume_id.clone(),
                fs_type,
                volume_attributes: (!volume.volume_context.is_empty())
                    .then(|| volume.volume_context.clone().into_iter().collect()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// What becomes of one of this driver's volumes.
#[derive(Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// In use, or kept (reclaim policy Retain).
    Keep,
    /// Released with reclaim policy Delete: delete the disk with this id, then the volume.
    Delete(String),
    /// Kept by its reclaim policy (changed from Delete): only the finalizer that would delete
    /// its disk goes, so the volume object can be deleted and the disk stays.
    DropFinalizer,
}

/// The plan for PersistentVolume `pv`.
pub fn plan_volume(pv: &PersistentVolume) -> VolumePlan {
    let spec = pv.spec.clone().unwrap_or_default();
    let Some(csi) = spec.csi.filter(|c| c.driver == DRIVER) else {
        return VolumePlan::Keep;
    };
    if pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(DRIVER) {
        return VolumePlan::Keep;
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    // Released: its claim is gone. Deleted while it still has our finalizer: someone deleted
    // the volume object of an unbound claim; the disk goes too.
    let released = phase == Some("Released")
        || (pv.meta().deletion_timestamp.is_some() && phase != Some("Bound"));
    if delete && released {
        VolumePlan::Delete(csi.volume_handle)
    } else if !delete && pv.finalizers().iter().any(|f| f == PV_FINALIZER) {
        VolumePlan::DropFinalizer
    } else {
        VolumePlan::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(yaml: &str) -> PersistentVolumeClaim {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn class(yaml: &str) -> StorageClass {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const CLAIM: &str = r#"
metadata:
  name: data
  namespace: app
  uid: 0b5c
  annotations:
    volume.kubernetes.io/storage-provisioner: csi.orrery.dev
    volume.kubernetes.io/selected-node: worker-1
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: orrery
  resources: {requests: {storage: 1Gi}}
"#;
    const CLASS: &str = r#"
metadata: {name: orrery}
provisioner: csi.orrery.dev
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
parameters: {csi.storage.k8s.io/fstype: xfs}
"#;

    #[test]
    fn a_claim_of_the_driver_asks_for_its_volume() {
        let ClaimPlan::Provision(req) = plan_claim(&claim(CLAIM), Some(&class(CLASS))) else {
            panic!("not provisioned")
        };
        assert_eq!(req.name, "pvc-0b5c");
        assert_eq!(req.capacity_range.unwrap().required_bytes, 1 << 30);
        assert!(req.parameters.is_empty(), "reserved parameters stay out");
        let cap = &req.volume_capabilities[0];
        assert_eq!(cap.access_mode.unwrap().mode(), Mode::SingleNodeWriter);
        let Some(AccessType::Mount(m)) = &cap.access_type else {
            panic!("not a mount")
        };
        assert_eq!(m.fs_type, "xfs");
    }

    #[test]
    fn other_claims_wait_or_are_refused() {
        let c = claim(CLAIM);
        let mut unscheduled = c.clone();
        unscheduled
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(SELECTED_NODE);
        let mut bound = c.clone();
        bound.spec.as_mut().unwrap().volume_name = Some("pvc-0b5c".into());
        let mut other = c.clone();
        other.metadata.annotations = None;
        let mut rwx = c.clone();
        rwx.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        let sc = class(CLASS);
        assert_eq!(plan_claim(&other, Some(&sc)), ClaimPlan::Ignore);
        assert_eq!(plan_claim(&bound, Some(&sc)), ClaimPlan::Ignore);
        assert!(matches!(
            plan_claim(&unscheduled, Some(&sc)),
            ClaimPlan::Wait(_)
        ));
        assert!(matches!(plan_claim(&c, None), ClaimPlan::Wait(_)));
        // The driver refuses what it cannot do when it is asked (CreateVolume).
        assert!(matches!(
            plan_claim(&rwx, Some(&sc)),
            ClaimPlan::Provision(_)
        ));
    }

    #[test]
    fn quantities_are_read_in_bytes() {
        for (q, want) in [
            ("1Gi", Ok(1 << 30)),
            ("500M", Ok(500_000_000)),
            ("1e9", Ok(1_000_000_000)),
            ("1.5Ki", Ok(1536)),
            ("12", Ok(12)),
        ] {
            assert_eq!(quantity_bytes(&Quantity(q.into())), want, "{q}");
        }
        assert!(quantity_bytes(&Quantity("1Xi".into())).is_err());
        assert!(quantity_bytes(&Quantity("lots".into())).is_err());
    }

    #[test]
    fn the_volume_binds_the_claim_and_is_deleted_once_released() {
        let (c, sc) = (claim(CLAIM), class(CLASS));
        let ClaimPlan::Provision(req) = plan_claim(&c, Some(&sc)) else {
            panic!()
        };
        let volume = Volume {
            capacity_bytes: 1 << 30,
            volume_id: "0123456789abcdef0123".into(),
            volume_context: Default::default(),
        };
        let mut pv = build_pv(&c, &sc, &req, &volume);
        assert_eq!(pv.name_any(), "pvc-0b5c");
        assert_eq!(pv.finalizers(), [PV_FINALIZER]);
        let spec = pv.spec.clone().unwrap();
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("0b5c"));
        assert_eq!(spec.csi.as_ref().unwrap().fs_type.as_deref(), Some("xfs"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1073741824");
        assert_eq!(plan_volume(&pv), VolumePlan::Keep, "no status yet");
        pv.status = Some(serde_yaml_ng::from_str("phase: Bound").unwrap());
        assert_eq!(plan_volume(&pv), VolumePlan::Keep);
        pv.status = Some(serde_yaml_ng::from_str("phase: Released").unwrap());
        assert_eq!(
            plan_volume(&pv),
            VolumePlan::Delete("0123456789abcdef0123".into())
        );
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        assert_eq!(
            plan_volume(&pv),
            VolumePlan::DropFinalizer,
            "kept: its disk stays"
        );
        pv.metadata.finalizers = None;
        assert_eq!(plan_volume(&pv), VolumePlan::Keep);
    }
}
