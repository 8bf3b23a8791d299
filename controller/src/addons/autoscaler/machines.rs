//! A node group's machines as the autoscaler sees them (pure): its instances and their state,
//! the VM behind a node, and which VMs a delete-nodes call marks.
//!
//! Machines are the pool's VirtualMachines, read by their metadata: a VM is named like its Node,
//! whose provider ID is `kubevirt://<vm>`. A VM is on its way out once it is deleted or Orrery
//! marked it for removal (asked for, or draining).

use super::proto::instance_status::InstanceState;
use super::proto::{ExternalGrpcNode, Instance, InstanceStatus};
use crate::api::{MachinePhase, MachineStatus};
use crate::nodepool::build::{DELETE_ANNOTATION, DRAIN_ANNOTATION, POOL_LABEL};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeSet;
use tonic::Status;

/// The provider ID scheme of NodePool machines.
pub const PROVIDER_ID_PREFIX: &str = "kubevirt://";

/// The provider ID of the Node of VM `vm`.
pub fn provider_id(vm: &str) -> String {
    format!("{PROVIDER_ID_PREFIX}{vm}")
}

/// The VM behind `node`: from its provider ID, or its name when it has none (a Node's name is
/// its VM's). A provider ID of another scheme names no VM of ours.
pub fn vm_name(node: &ExternalGrpcNode) -> Option<&str> {
    let name = if node.provider_id.is_empty() {
        node.name.as_str()
    } else {
        node.provider_id.strip_prefix(PROVIDER_ID_PREFIX)?
    };
    (!name.is_empty()).then_some(name)
}

/// The pool a VM belongs to.
pub fn pool_of(vm: &ObjectMeta) -> Option<&str> {
    vm.labels.as_ref()?.get(POOL_LABEL).map(String::as_str)
}

/// Whether a VM is deleted or marked for removal.
pub fn is_leaving(vm: &ObjectMeta) -> bool {
    let marked = vm
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DELETE_ANNOTATION) || a.contains_key(DRAIN_ANNOTATION));
    marked || vm.deletion_timestamp.is_some()
}

/// How many of a pool's VMs stay.
pub fn existing(vms: &[&ObjectMeta]) -> usize {
    vms.iter().filter(|vm| !is_leaving(vm)).count()
}

/// The instances of a pool with VMs `vms`, their state from the VM and from the machines of
/// the pool's status (a VM the status does not list yet is being created).
pub fn instances(vms: &[&ObjectMeta], machines: &[MachineStatus]) -> Vec<Instance> {
    let mut out: Vec<Instance> = vms
        .iter()
        .map(|vm| {
            let name = vm.name.clone().unwrap_or_default();
            let phase = machines.iter().find(|m| m.name == name).map(|m| m.phase);
            let state = match phase {
                _ if is_leaving(vm) => InstanceState::InstanceDeleting,
                Some(MachinePhase::Ready | MachinePhase::NotReady) => {
                    InstanceState::InstanceRunning
                }
                Some(MachinePhase::Deleting) => InstanceState::InstanceDeleting,
                Some(MachinePhase::Provisioning | MachinePhase::Joining) | None => {
                    InstanceState::InstanceCreating
                }
            };
            Instance {
                id: provider_id(&name),
                status: Some(InstanceStatus {
                    instance_state: state.into(),
                    error_info: None,
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The VMs of group `id` (whose VMs are `vms`) to mark for removal so that exactly `nodes` go.
/// A node of another group, or of no VM, refuses the whole call; one already leaving is not
/// marked again, so a repeated call changes nothing.
pub fn to_remove(
    id: &str,
    nodes: &[ExternalGrpcNode],
    vms: &[&ObjectMeta],
) -> Result<Vec<String>, Status> {
    let mut marked = BTreeSet::new();
    for node in nodes {
        let vm = vm_name(node)
            .and_then(|name| vms.iter().find(|vm| vm.name.as_deref() == Some(name)))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "node {} (provider ID {:?}) does not belong to node group {id}",
                    node.name, node.provider_id
                ))
            })?;
        if !is_leaving(vm) {
            marked.insert(vm.name.clone().unwrap_or_default());
        }
    }
    Ok(marked.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn vm(name: &str, annotations: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(POOL_LABEL.into(), "p".into())])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|a| (a.to_string(), "x".to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn node(name: &str, provider_id: &str) -> ExternalGrpcNode {
        ExternalGrpcNode {
            provider_id: provider_id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn machine(name: &str, phase: MachinePhase) -> MachineStatus {
        MachineStatus {
            name: name.into(),
            node: None,
            phase,
            version: "v1.34.4".into(),
            template_hash: "h".into(),
            since: Time(Default::default()),
            message: None,
        }
    }

    #[test]
    fn a_node_names_its_vm_by_provider_id() {
        for (name, provider_id, expected) in [
            ("w-1", "kubevirt://w-1", Some("w-1")),
            ("renamed", "kubevirt://w-1", Some("w-1")),
            ("w-1", "", Some("w-1")),
            ("w-1", "aws:///eu-west-1a/i-1", None),
            ("w-1", "kubevirt://", None),
            ("", "", None),
        ] {
            assert_eq!(vm_name(&node(name, provider_id)), expected, "{provider_id}");
        }
    }

    #[test]
    fn instances_take_their_state_from_the_vm_and_the_pool_status() {
        let mut deleted = vm("e", &[]);
        deleted.deletion_timestamp = Some(Time(Default::default()));
        let vms = [
            vm("a", &[]),
            vm("b", &[]),
            vm("c", &[]),
            vm("d", &[DELETE_ANNOTATION]),
            deleted,
            vm("f", &[DRAIN_ANNOTATION]),
            vm("g", &[]),
        ];
        let machines = [
            machine("a", MachinePhase::Ready),
            machine("b", MachinePhase::NotReady),
            machine("c", MachinePhase::Joining),
            machine("d", MachinePhase::Ready),
            machine("g", MachinePhase::Deleting),
        ];
        let refs: Vec<&ObjectMeta> = vms.iter().collect();
        let got: Vec<(String, InstanceState)> = instances(&refs, &machines)
            .into_iter()
            .map(|i| (i.id, i.status.unwrap().instance_state()))
            .collect();
        use InstanceState::*;
        let expected = [
            ("a", InstanceRunning),
            ("b", InstanceRunning),
            ("c", InstanceCreating),
            ("d", InstanceDeleting),
            ("e", InstanceDeleting),
            ("f", InstanceDeleting),
            ("g", InstanceDeleting),
        ]
        .map(|(n, s)| (provider_id(n), s));
        assert_eq!(got, expected);
        assert_eq!(existing(&refs), 4, "a, b, c and g stay until marked");
        let unlisted = [vm("new", &[])];
        let unlisted: Vec<&ObjectMeta> = unlisted.iter().collect();
        let state = instances(&unlisted, &[])[0]
            .status
            .as_ref()
            .unwrap()
            .instance_state();
        assert_eq!(state, InstanceCreating, "a VM the status does not list yet");
    }

    #[test]
    fn exactly_the_named_nodes_are_marked_once() {
        let vms = [vm("a", &[]), vm("b", &[]), vm("c", &[DELETE_ANNOTATION])];
        let refs: Vec<&ObjectMeta> = vms.iter().collect();
        let names = |nodes: &[ExternalGrpcNode]| to_remove("ns/p", nodes, &refs);
        assert_eq!(
            names(&[node("b", "kubevirt://b"), node("a", "kubevirt://a")]).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            names(&[node("b", "kubevirt://b"), node("b", "kubevirt://b")]).unwrap(),
            ["b"]
        );
        let empty: Vec<String> = Vec::new();
        assert_eq!(
            names(&[node("c", "kubevirt://c")]).unwrap(),
            empty,
            "c is leaving already"
        );
        for stranger in [
            node("x", "kubevirt://x"),
            node("a", "aws:///i-1"),
            node("", ""),
        ] {
            let refused = names(&[node("a", "kubevirt://a"), stranger]).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(
                refused
                    .message()
                    .contains("does not belong to node group ns/p")
            );
        }
    }
}
