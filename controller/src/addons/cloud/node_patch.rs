//! What a tenant Node of a KubeVirt VM looks like once initialised, and the smallest change that
//! makes it so. Pure: the reads and writes are in [`super::nodes`].

use super::instance_type;
use crate::apply::TENANT_LABEL;
use crate::nodepool::kubevirt::VirtualMachineInstance;
use k8s_openapi::api::core::v1::{Node, NodeAddress, Taint};
use kube::ResourceExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The kubelet of `--cloud-provider=external` registers its Node with this taint; removing it
/// says the cloud controller has initialised the Node, and pods without a toleration may come.
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// providerID of a worker VM's Node: `kubevirt://<vm>`.
pub const PROVIDER_PREFIX: &str = "kubevirt://";

/// The VM behind a Node, from its providerID.
pub fn vm_name(node: &Node) -> Option<&str> {
    let id = node.spec.as_ref()?.provider_id.as_deref()?;
    id.strip_prefix(PROVIDER_PREFIX).filter(|n| !n.is_empty())
}

/// Whether the VMI is one of `tenant`'s machines: a tenant names the VM in its own Node's
/// providerID, and must not learn about another tenant's VM that way.
pub fn belongs_to(vmi: &VirtualMachineInstance, tenant: &str) -> bool {
    vmi.labels().get(TENANT_LABEL).map(String::as_str) == Some(tenant)
}

/// Whether the Node still waits for the cloud controller.
pub fn is_uninitialised(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNINITIALIZED_TAINT))
}

/// An initialised Node's addresses and the labels the cloud controller sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub addresses: Vec<NodeAddress>,
    pub labels: BTreeMap<String, String>,
}

/// The initialised shape of Node `node` of VMI `vmi`, which runs on management Node `host`
/// (when it could be read). `None` while the VMI has no address yet.
///
/// The VMs use masquerade networking, so each guest's own address is the same everywhere; the
/// address the rest of the world reaches a VM at is its launcher pod's, which the VMI reports.
pub fn wanted(node: &str, vmi: &VirtualMachineInstance, host: Option<&Node>) -> Option<Wanted> {
    let ip = vmi
        .status
        .as_ref()?
        .interfaces
        .iter()
        .find_map(|i| i.ip_address.clone().filter(|ip| !ip.is_empty()))?;
    let address = |type_: &str, address: String| NodeAddress {
        type_: type_.into(),
        address,
    };
    let mut labels = BTreeMap::new();
    if let Some(t) = instance_type::of_vmi(vmi) {
        labels.insert(INSTANCE_TYPE_LABEL.to_string(), t);
    }
    let host_labels = host.map(|h| h.labels().clone()).unwrap_or_default();
    for key in [ZONE_LABEL, REGION_LABEL] {
        if let Some(v) = host_labels.get(key) {
            labels.insert(key.to_string(), v.clone());
        }
    }
    Some(Wanted {
        addresses: vec![
            address("InternalIP", ip),
            address("Hostname", node.to_string()),
        ],
        labels,
    })
}

/// The writes that bring a Node to its wanted shape; empty when it is there already.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// The whole new address list (a list is replaced, not merged).
    pub addresses: Option<Vec<NodeAddress>>,
    /// Labels to set (the others stay).
    pub labels: BTreeMap<String, String>,
    /// The whole new taint list, without the uninitialised taint.
    pub taints: Option<Vec<Taint>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_none() && self.labels.is_empty() && self.taints.is_none()
    }

    /// The merge patch of `nodes/status`, if the addresses change.
    pub fn status_patch(&self) -> Option<Value> {
        let addresses = self.addresses.as_ref()?;
        Some(json!({"status": {"addresses": addresses}}))
    }

    /// The merge patch of the Node's labels and taints, if they change. A taint list is replaced
    /// whole, so it carries the resourceVersion it was computed from: a taint another controller
    /// added meanwhile makes the write fail (409) instead of vanishing.
    pub fn node_patch(&self, resource_version: Option<&str>) -> Option<Value> {
        if self.labels.is_empty() && self.taints.is_none() {
            return None;
        }
        let mut patch = json!({"metadata": {}});
        if !self.labels.is_empty() {
            patch["metadata"]["labels"] = json!(self.labels);
        }
        if let Some(taints) = &self.taints {
            patch["spec"] = json!({"taints": taints});
            if let Some(rv) = resource_version {
                patch["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        Some(patch)
    }
}

/// What must change on `node` to reach `wanted`.
pub fn changes(node: &Node, wanted: &Wanted) -> Changes {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let labels = node.labels();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let uninitialized = |t: &Taint| t.key == UNINITIALIZED_TAINT;
    Changes {
        addresses: (addresses != wanted.addresses).then(|| wanted.addresses.clone()),
        labels: wanted
            .labels
            .iter()
            .filter(|(k, v)| labels.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        taints: is_uninitialised(node).then(|| {
            taints
                .iter()
                .filter(|t| !uninitialized(t))
                .cloned()
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodepool::kubevirt::{Interface, VirtualMachineInstanceStatus};
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    fn vmi(ip: Option<&str>, tenant: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("w-1", Default::default());
        v.metadata.labels = Some(BTreeMap::from([(TENANT_LABEL.into(), tenant.into())]));
        v.spec.fields.insert(
            "domain".into(),
            json!({"cpu": {"cores": 1}, "memory": {"guest": "1536Mi"}}),
        );
        v.status = Some(VirtualMachineInstanceStatus {
            interfaces: vec![Interface {
                name: Some("default".into()),
                ip_address: ip.map(Into::into),
            }],
            node_name: Some("infra-1".into()),
            ..Default::default()
        });
        v
    }

    fn host(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("infra-1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }
    }

    fn node(addresses: &[(&str, &str)], labels: &[(&str, &str)], taints: &[&str]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some("w-1".into()),
                resource_version: Some("7".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some("kubevirt://w-1".into()),
                taints: Some(taints.iter().map(|k| taint(k)).collect()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    const INITIALISED: &[(&str, &str)] = &[("InternalIP", "10.244.1.7"), ("Hostname", "w-1")];
    const LABELS: &[(&str, &str)] = &[
        (INSTANCE_TYPE_LABEL, "1c-1536Mi"),
        (ZONE_LABEL, "z1"),
        (REGION_LABEL, "r1"),
    ];

    #[test]
    fn the_node_gets_the_vms_address_shape_and_place_and_loses_the_taint() {
        let host = host(&[(ZONE_LABEL, "z1"), (REGION_LABEL, "r1"), ("other", "x")]);
        let want = wanted("w-1", &vmi(Some("10.244.1.7"), "t"), Some(&host)).unwrap();
        let fresh = node(
            &[("Hostname", "w-1")],
            &[("orrery.dev/nodepool", "p")],
            &["dedicated", UNINITIALIZED_TAINT],
        );
        let initialised = node(INITIALISED, LABELS, &["dedicated"]);
        let moved = node(
            &[("InternalIP", "10.244.9.9"), ("Hostname", "w-1")],
            LABELS,
            &[],
        );
        for (what, n, addresses, labels, taints) in [
            ("a fresh node", &fresh, true, 3, Some(vec!["dedicated"])),
            ("an initialised node", &initialised, false, 0, None),
            ("a node whose address moved", &moved, true, 0, None),
        ] {
            let c = changes(n, &want);
            assert_eq!(c.addresses.is_some(), addresses, "{what}");
            assert_eq!(c.labels.len(), labels, "{what}: {:?}", c.labels);
            let keys = c
                .taints
                .as_ref()
                .map(|t| t.iter().map(|t| t.key.as_str()).collect::<Vec<_>>());
            assert_eq!(keys, taints, "{what}");
            assert_eq!(c.is_empty(), !addresses && labels == 0 && taints.is_none());
            assert_eq!(is_uninitialised(n), taints.is_some(), "{what}");
        }
        let c = changes(&fresh, &want);
        assert_eq!(
            c.status_patch().unwrap(),
            json!({"status": {"addresses": [
                {"type": "InternalIP", "address": "10.244.1.7"},
                {"type": "Hostname", "address": "w-1"},
            ]}})
        );
        let patch = c.node_patch(Some("7")).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        assert_eq!(
            patch["metadata"]["labels"][INSTANCE_TYPE_LABEL],
            "1c-1536Mi"
        );
        assert_eq!(patch["metadata"]["labels"][ZONE_LABEL], "z1");
        assert_eq!(patch["spec"]["taints"][0]["key"], "dedicated");
        assert!(patch["metadata"]["labels"].get("other").is_none());
        assert_eq!(changes(&initialised, &want).node_patch(Some("7")), None);
        assert_eq!(changes(&initialised, &want).status_patch(), None);
    }

    #[test]
    fn labels_alone_need_no_resource_version() {
        let want = wanted("w-1", &vmi(Some("10.244.1.7"), "t"), None).unwrap();
        let n = node(INITIALISED, &[], &[]);
        let patch = changes(&n, &want).node_patch(Some("7")).unwrap();
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {INSTANCE_TYPE_LABEL: "1c-1536Mi"}}})
        );
    }

    #[test]
    fn zone_and_region_come_only_from_a_host_that_has_them() {
        let v = vmi(Some("10.244.1.7"), "t");
        for (host, zone) in [
            (None, None),
            (Some(host(&[])), None),
            (Some(host(&[(ZONE_LABEL, "z2")])), Some("z2")),
        ] {
            let w = wanted("w-1", &v, host.as_ref()).unwrap();
            assert_eq!(w.labels.get(ZONE_LABEL).map(String::as_str), zone);
            assert!(!w.labels.contains_key(REGION_LABEL));
            assert_eq!(w.labels[INSTANCE_TYPE_LABEL], "1c-1536Mi");
        }
    }

    #[test]
    fn nothing_is_wanted_before_the_vm_has_an_address() {
        assert_eq!(wanted("w-1", &vmi(None, "t"), None), None);
        assert_eq!(wanted("w-1", &vmi(Some(""), "t"), None), None);
        let mut no_status = vmi(None, "t");
        no_status.status = None;
        assert_eq!(wanted("w-1", &no_status, None), None);
    }

    #[test]
    fn a_node_names_its_vm_and_only_the_tenants_own_vms_count() {
        let mut n = node(&[], &[], &[]);
        assert_eq!(vm_name(&n), Some("w-1"));
        n.spec.as_mut().unwrap().provider_id = Some("aws:///eu-west-1a/i-123".into());
        assert_eq!(vm_name(&n), None);
        n.spec.as_mut().unwrap().provider_id = Some("kubevirt://".into());
        assert_eq!(vm_name(&n), None);
        n.spec = None;
        assert_eq!(vm_name(&n), None);
        assert!(belongs_to(&vmi(None, "t"), "t"));
        assert!(!belongs_to(&vmi(None, "other"), "t"));
    }
}
