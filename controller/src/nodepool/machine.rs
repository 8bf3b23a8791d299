//! What each machine of a pool is now, from its VirtualMachine, its VirtualMachineInstance and
//! its Node in the tenant. Pure: the planner and the status both start from this.

use super::build::{
    DELETE_ANNOTATION, DRAIN_ANNOTATION, DRAIN_REASON_ANNOTATION, TEMPLATE_HASH_LABEL,
    VERSION_ANNOTATION,
};
use super::kubevirt::{VirtualMachine, VirtualMachineInstance};
use super::plan::Machine;
use crate::api::{MachinePhase, MachineStatus};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// One machine as observed: what the planner needs and what the status shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub machine: Machine,
    pub status: MachineStatus,
    /// The machine's node is in the tenant.
    pub joined: bool,
}

/// The Ready condition of `node`: (is it True, since when).
fn node_ready(node: &Node) -> (bool, Option<Timestamp>) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) => (
            c.status == "True",
            c.last_transition_time.as_ref().map(|t| t.0),
        ),
        None => (false, None),
    }
}

fn created(obj: &impl ResourceExt) -> Timestamp {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// Observes `vm`, given its VMI and its Node when they exist.
pub fn observe(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    node: Option<&Node>,
) -> Observed {
    let annotations = vm.annotations();
    let vm_created = created(vm);
    let version = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .or_else(|| annotations.get(VERSION_ANNOTATION).cloned())
        .unwrap_or_default();
    let drain_started = annotations
        .get(DRAIN_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let vmi_phase = vmi
        .and_then(|i| i.status.as_ref())
        .and_then(|s| s.phase.clone());
    let vm_status = vm.status.as_ref().and_then(|s| s.printable_status.clone());
    let (phase, since, message, not_ready_since) =
        if drain_started.is_some() || vm.meta().deletion_timestamp.is_some() {
            let since = drain_started
                .or_else(|| vm.meta().deletion_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(vm_created);
            let why = annotations
                .get(DRAIN_REASON_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "deleted".into());
            (MachinePhase::Deleting, since, Some(why), None)
        } else if let Some(node) = node {
            match node_ready(node) {
                (true, since) => (MachinePhase::Ready, since.unwrap_or(vm_created), None, None),
                (false, since) => {
                    let since = since.unwrap_or_else(|| created(node));
                    let message = "the node is not Ready".to_string();
                    (MachinePhase::NotReady, since, Some(message), Some(since))
                }
            }
        } else if vmi_phase.as_deref() == Some("Running") {
            let message = "the VM runs; its node has not joined yet".to_string();
            (MachinePhase::Joining, vm_created, Some(message), None)
        } else {
            let message = format!(
                "the VM is {}",
                vm_status.as_deref().unwrap_or("being created")
            );
            (MachinePhase::Provisioning, vm_created, Some(message), None)
        };
    let template_hash = vm
        .labels()
        .get(TEMPLATE_HASH_LABEL)
        .cloned()
        .unwrap_or_default();
    Observed {
        machine: Machine {
            name: vm.name_any(),
            template_hash: template_hash.clone(),
            phase,
            created: vm_created,
            not_ready_since,
            delete_requested: annotations.contains_key(DELETE_ANNOTATION),
        },
        status: MachineStatus {
            name: vm.name_any(),
            node: node.map(|n| n.name_any()),
            phase,
            version,
            template_hash,
            since: Time(since),
            message,
        },
        joined: node.is_some(),
    }
}

/// Observes every VM of a pool, oldest first, matching VMIs and Nodes by name.
pub fn observe_all(
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    nodes: &[Node],
) -> Vec<Observed> {
    let vmis: BTreeMap<String, &VirtualMachineInstance> =
        vmis.iter().map(|i| (i.name_any(), i)).collect();
    let nodes: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    let mut observed: Vec<Observed> = vms
        .iter()
        .map(|vm| {
            let name = vm.name_any();
            observe(vm, vmis.get(&name).copied(), nodes.get(&name).copied())
        })
        .collect();
    observed.sort_by(|a, b| {
        (a.machine.created, &a.machine.name).cmp(&(b.machine.created, &b.machine.name))
    });
    observed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, NodeSystemInfo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn vm(name: &str, annotations: &[(&str, &str)]) -> VirtualMachine {
        let mut vm = VirtualMachine::new(name, Default::default());
        vm.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        vm.metadata.labels = Some(BTreeMap::from([(TEMPLATE_HASH_LABEL.into(), "h1".into())]));
        let mut a: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        a.insert(VERSION_ANNOTATION.into(), "v1.34.4".into());
        vm.metadata.annotations = Some(a);
        vm
    }

    fn vmi(name: &str, phase: &str) -> VirtualMachineInstance {
        let mut i = VirtualMachineInstance::new(name, Default::default());
        i.status = Some(super::super::kubevirt::VirtualMachineInstanceStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        i
    }

    fn node(name: &str, ready: &str, since: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(ts("2026-01-01T00:01:00Z"))),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    last_transition_time: Some(Time(ts(since))),
                    ..Default::default()
                }]),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "v1.34.4".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_vm_vmi_and_node() {
        let o = observe(&vm("a", &[]), None, None);
        assert_eq!(o.machine.phase, MachinePhase::Provisioning);
        assert!(!o.joined);
        let o = observe(&vm("a", &[]), Some(&vmi("a", "Scheduling")), None);
        assert_eq!(o.machine.phase, MachinePhase::Provisioning);
        let o = observe(&vm("a", &[]), Some(&vmi("a", "Running")), None);
        assert_eq!(o.machine.phase, MachinePhase::Joining);

        let ready = node("a", "True", "2026-01-01T00:02:00Z");
        let o = observe(&vm("a", &[]), Some(&vmi("a", "Running")), Some(&ready));
        assert_eq!(o.machine.phase, MachinePhase::Ready);
        assert_eq!(o.status.since, Time(ts("2026-01-01T00:02:00Z")));
        assert_eq!(o.status.node.as_deref(), Some("a"));
        assert_eq!(o.machine.template_hash, "h1");
        assert!(o.joined);

        let sick = node("a", "Unknown", "2026-01-01T00:05:00Z");
        let o = observe(&vm("a", &[]), Some(&vmi("a", "Running")), Some(&sick));
        assert_eq!(o.machine.phase, MachinePhase::NotReady);
        assert_eq!(o.machine.not_ready_since, Some(ts("2026-01-01T00:05:00Z")));
    }

    #[test]
    fn draining_and_requested_machines() {
        let draining = vm(
            "a",
            &[
                (DRAIN_ANNOTATION, "2026-01-01T00:09:00Z"),
                (DRAIN_REASON_ANNOTATION, "scale down"),
            ],
        );
        let ready = node("a", "True", "2026-01-01T00:02:00Z");
        let o = observe(&draining, None, Some(&ready));
        assert_eq!(o.machine.phase, MachinePhase::Deleting);
        assert_eq!(o.status.since, Time(ts("2026-01-01T00:09:00Z")));
        assert_eq!(o.status.message.as_deref(), Some("scale down"));

        let requested = vm("b", &[(DELETE_ANNOTATION, "")]);
        assert!(observe(&requested, None, None).machine.delete_requested);
        assert!(!observe(&vm("c", &[]), None, None).machine.delete_requested);
    }

    #[test]
    fn all_machines_are_matched_by_name_oldest_first() {
        let mut young = vm("young", &[]);
        young.metadata.creation_timestamp = Some(Time(ts("2026-01-02T00:00:00Z")));
        let old = vm("old", &[]);
        let all = observe_all(
            &[young, old],
            &[vmi("old", "Running")],
            &[node("young", "True", "2026-01-02T00:03:00Z")],
        );
        let names: Vec<_> = all.iter().map(|o| o.machine.name.as_str()).collect();
        assert_eq!(names, ["old", "young"]);
        assert_eq!(all[0].machine.phase, MachinePhase::Joining);
        assert_eq!(all[1].machine.phase, MachinePhase::Ready);
    }
}
