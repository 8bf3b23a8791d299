//! The CSI driver's part inside the tenant: the CSIDriver object, the default StorageClass
//! `orrery`, and the node plugin `orrery-csi-node` on every worker. The node plugin holds no
//! credentials at all (its node id is the Node's name, from the downward API); the driver's
//! controller side runs in Orrery ([`crate::addons::csi`]).

use super::pod::{k8s_app, selector, template, tolerate_everything};
use super::{KUBE_SYSTEM, TenantObjects, meta};
use crate::addons::csi::DRIVER;
use crate::addons::csi::claims::FSTYPE_PARAMETER;
use crate::podspec::field_env;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, SecurityContext};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec, StorageClass};
use std::collections::BTreeMap;

/// The tenant's default StorageClass.
pub const STORAGE_CLASS: &str = "orrery";
const NODE_PLUGIN: &str = "orrery-csi-node";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Where the node plugin finds the node's mkfs, blkid and resize2fs.
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn objects(o: &mut TenantObjects, image: &str) {
    o.csi_drivers.push(CSIDriver {
        metadata: meta(DRIVER, None),
        spec: CSIDriverSpec {
            // The tenant's attach-detach controller asks for each attach (VolumeAttachment),
            // which Orrery carries out as a hot-plug.
            attach_required: Some(true),
            pod_info_on_mount: Some(false),
            fs_group_policy: Some("File".into()),
            volume_lifecycle_modes: Some(vec!["Persistent".into()]),
            ..Default::default()
        },
    });
    let mut class_meta = meta(STORAGE_CLASS, None);
    class_meta.annotations = Some(BTreeMap::from([(
        DEFAULT_CLASS_ANNOTATION.to_string(),
        "true".to_string(),
    )]));
    o.storage_classes.push(StorageClass {
        metadata: class_meta,
        provisioner: DRIVER.into(),
        reclaim_policy: Some("Delete".into()),
        // The disk is made once the pod's node is known, like a cloud's zonal disks.
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        // The driver's controller side grows a claim's disk while no pod uses it; the node
        // grows the filesystem at the next mount.
        allow_volume_expansion: Some(true),
        parameters: Some(BTreeMap::from([(
            FSTYPE_PARAMETER.to_string(),
            "ext4".to_string(),
        )])),
        ..Default::default()
    });
    o.daemon_sets.push(daemon_set(image));
}

fn daemon_set(image: &str) -> DaemonSet {
    let labels = k8s_app(NODE_PLUGIN);
    DaemonSet {
        metadata: meta(NODE_PLUGIN, Some(KUBE_SYSTEM)),
        spec: Some(DaemonSetSpec {
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    // It works in the node's mount namespace (PID 1's): mounts, devices, the
                    // kubelet's sockets and the node's mkfs are all the node's own.
                    host_pid: Some(true),
                    automount_service_account_token: Some(false),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(tolerate_everything()),
                    node_selector: Some(BTreeMap::from([(
                        "kubernetes.io/os".to_string(),
                        "linux".to_string(),
                    )])),
                    containers: vec![Container {
                        name: "node".into(),
                        image: Some(image.into()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        command: Some(vec![
                            "orrery-csi-node".into(),
                            "--host-mount-namespace".into(),
                        ]),
                        env: Some(vec![
                            field_env("NODE_NAME", "spec.nodeName"),
                            // The node's filesystem tools live in sbin directories, which an
                            // image's PATH may leave out.
                            EnvVar {
                                name: "PATH".into(),
                                value: Some(NODE_PATH.into()),
                                ..Default::default()
                            },
                        ]),
                        // It formats and mounts the node's disks: a privileged node agent.
                        security_context: Some(SecurityContext {
                            privileged: Some(true),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_comes_with_a_default_class_and_a_credential_less_node_plugin() {
        let mut o = TenantObjects::default();
        objects(&mut o, "orrery.dev/csi-node:0.1.0");
        let driver = &o.csi_drivers[0];
        assert_eq!(driver.metadata.name.as_deref(), Some(DRIVER));
        assert_eq!(driver.spec.attach_required, Some(true));
        let class = &o.storage_classes[0];
        assert_eq!(class.provisioner, DRIVER);
        assert_eq!(
            class.metadata.annotations.as_ref().unwrap()[DEFAULT_CLASS_ANNOTATION],
            "true"
        );
        let pod = o.daemon_sets[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name, None);
        assert_eq!(
            pod.volumes, None,
            "it needs no volume: it works in the node's namespace"
        );
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("orrery.dev/csi-node:0.1.0")
        );
    }
}
