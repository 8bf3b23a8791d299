//! What the external attacher does for a CSI driver, pure: the tenant's attach-detach
//! controller asks for a volume on a node with a VolumeAttachment; the driver attaches it
//! (ControllerPublishVolume), says so in the attachment's status, and detaches it when the
//! attachment is deleted. A finalizer keeps the attachment until the volume is detached.

use super::DRIVER;
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::{Resource, ResourceExt};

/// Records on a VolumeAttachment the id of the volume it attaches, for the detach.
pub const HANDLE_ANNOTATION: &str = "csi.orrery.dev/volume-id";

/// The attacher's finalizer on a VolumeAttachment: `external-attacher/` and the driver's name
/// with every character other than a letter, digit or `-` replaced, as upstream names it.
pub fn finalizer() -> String {
    let name: String = DRIVER
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("external-attacher/{name}")
}

/// What an attachment needs.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachPlan {
    /// Not this driver's, or nothing to do.
    Ignore,
    /// Attach PersistentVolume `volume` to node `node` (first the finalizer, then
    /// ControllerPublish, then the status).
    Attach { volume: String, node: String },
    /// Deleted: detach, then drop the finalizer.
    Detach { volume: String, node: String },
    /// Refused: the attachment names no PersistentVolume (inline volumes are not offered).
    Refuse(String),
}

/// The plan for `va`.
pub fn plan(va: &VolumeAttachment) -> AttachPlan {
    if va.spec.attacher != DRIVER {
        return AttachPlan::Ignore;
    }
    let node = va.spec.node_name.clone();
    let holds = va.finalizers().contains(&finalizer());
    let Some(volume) = va.spec.source.persistent_volume_name.clone() else {
        return if va.meta().deletion_timestamp.is_some() {
            AttachPlan::Ignore
        } else {
            AttachPlan::Refuse(
                "spec.source: only PersistentVolumes attach (inline volumes are not offered)"
                    .into(),
            )
        };
    };
    if va.meta().deletion_timestamp.is_some() {
        return if holds {
            AttachPlan::Detach { volume, node }
        } else {
            AttachPlan::Ignore
        };
    }
    let attached = va.status.as_ref().is_some_and(|s| s.attached);
    if attached && holds {
        AttachPlan::Ignore
    } else {
        AttachPlan::Attach { volume, node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn va(yaml: &str) -> VolumeAttachment {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const VA: &str = r#"
metadata: {name: csi-1}
spec:
  attacher: csi.orrery.dev
  nodeName: worker-1
  source: {persistentVolumeName: pvc-0b5c}
"#;

    #[test]
    fn the_finalizer_is_named_as_upstream_names_it() {
        assert_eq!(finalizer(), "external-attacher/csi-orrery-dev");
    }

    #[test]
    fn an_attachment_is_attached_until_it_is_deleted() {
        let want_attach = AttachPlan::Attach {
            volume: "pvc-0b5c".into(),
            node: "worker-1".into(),
        };
        let mut a = va(VA);
        assert_eq!(plan(&a), want_attach);
        a.metadata.finalizers = Some(vec![finalizer()]);
        assert_eq!(plan(&a), want_attach, "not attached yet");
        a.status = Some(serde_yaml_ng::from_str("attached: true").unwrap());
        assert_eq!(plan(&a), AttachPlan::Ignore);
        a.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            plan(&a),
            AttachPlan::Detach {
                volume: "pvc-0b5c".into(),
                node: "worker-1".into()
            }
        );
        a.metadata.finalizers = None;
        assert_eq!(plan(&a), AttachPlan::Ignore);
    }

    #[test]
    fn other_attachments_are_left_alone_and_inline_ones_refused() {
        let mut other = va(VA);
        other.spec.attacher = "ebs.csi.aws.com".into();
        assert_eq!(plan(&other), AttachPlan::Ignore);
        let mut inline = va(VA);
        inline.spec.source.persistent_volume_name = None;
        assert!(matches!(plan(&inline), AttachPlan::Refuse(_)));
    }
}
