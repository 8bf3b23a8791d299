//! A NodePool as rows (pure): the pool by its Ready condition and counts, its machines by their
//! phase, alike machines grouped as pods and nodes are.

use super::row::{Item, Ready, Row, Severity, Tree, grouped};
use crate::api::{MachinePhase, MachineStatus, NodePool, NodePoolStatus};
use crate::conditions::{DEGRADED, READY};
use crate::nodepool::status::NODES_NOT_READY;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

/// The pool's row with its machines under it.
pub fn pool(p: &NodePool, expand: bool) -> Tree {
    let mut row = Row::from_condition(format!("NodePool/{}", p.name_any()), condition(p, READY));
    let Some(status) = &p.status else {
        row.message = format!(
            "{} wanted: Orrery has not reported on it yet; is the operator running?",
            p.spec.replicas
        );
        return Tree::leaf(row);
    };
    row.message = pool_message(p, status);
    let sick = status
        .machines
        .iter()
        .any(|m| m.phase == MachinePhase::NotReady);
    if failing(p).is_some() {
        row.severity = Some(Severity::Error);
    } else if row.reason == NODES_NOT_READY && !sick {
        // Nodes on their way, none gone bad: expected, as Orrery's "Waiting" reasons are.
        row.severity = Some(Severity::Info);
    }
    let machines = status.machines.iter().map(machine).collect();
    Tree::with(row, grouped(machines, "Machines", expand))
}

/// "2/3 ready, 3 up to date, v1.34.4", then what holds the pool up when it is not a node.
fn pool_message(p: &NodePool, status: &NodePoolStatus) -> String {
    let mut message = format!(
        "{}/{} ready, {} up to date",
        status.ready_replicas, p.spec.replicas, status.updated_replicas
    );
    if let Some(version) = &status.version {
        message.push_str(&format!(", {version}"));
    }
    if let Some(c) = held_up(p) {
        message.push_str(&format!(": {}", c.message));
    }
    if let Some(c) = failing(p) {
        message.push_str(&format!("; {}", c.message));
    }
    if status.observed_generation < p.metadata.generation {
        message.push_str("; Orrery has not taken up the latest change yet");
    }
    message
}

/// Ready when something other than its nodes holds the pool up (the tenant, KubeVirt, the
/// namespace's Pod Security).
pub fn held_up(p: &NodePool) -> Option<&Condition> {
    condition(p, READY).filter(|c| c.status != "True" && c.reason != NODES_NOT_READY)
}

/// Degraded for a failing reconcile: neither a sick node (its machine row shows that) nor what
/// holds the pool up (Orrery sets Ready with the same reason then).
pub fn failing(p: &NodePool) -> Option<&Condition> {
    let ready_reason = condition(p, READY).map(|c| c.reason.as_str());
    condition(p, DEGRADED).filter(|c| {
        c.status == "True" && c.reason != NODES_NOT_READY && Some(c.reason.as_str()) != ready_reason
    })
}

fn condition<'a>(p: &'a NodePool, type_: &str) -> Option<&'a Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// A machine by its phase: `Machine/<vm> → Node/<node>` once its node registered.
pub fn machine(m: &MachineStatus) -> Item {
    let name = match &m.node {
        Some(node) => format!("Machine/{} → Node/{node}", m.name),
        None => format!("Machine/{}", m.name),
    };
    // Coming up is expected on the way; a node gone NotReady needs a look.
    let (ready, severity) = match m.phase {
        MachinePhase::Ready => (Ready::True, None),
        MachinePhase::Provisioning | MachinePhase::Joining => {
            (Ready::Unknown, Some(Severity::Info))
        }
        MachinePhase::NotReady => (Ready::False, Some(Severity::Warning)),
        MachinePhase::Deleting => (Ready::False, Some(Severity::Info)),
    };
    let reason = match m.phase {
        MachinePhase::Ready => "",
        phase => phase_name(phase),
    };
    Item {
        name: m.name.clone(),
        row: Row {
            name,
            ready: Some(ready),
            severity,
            reason: reason.into(),
            since: Some(m.since.clone()),
            message: m.message.clone().unwrap_or_default(),
        },
    }
}

/// Every phase, in the order of a machine's life.
pub const PHASES: [MachinePhase; 5] = [
    MachinePhase::Provisioning,
    MachinePhase::Joining,
    MachinePhase::Ready,
    MachinePhase::NotReady,
    MachinePhase::Deleting,
];

/// A phase as the API spells it.
pub fn phase_name(phase: MachinePhase) -> &'static str {
    match phase {
        MachinePhase::Provisioning => "Provisioning",
        MachinePhase::Joining => "Joining",
        MachinePhase::Ready => "Ready",
        MachinePhase::NotReady => "NotReady",
        MachinePhase::Deleting => "Deleting",
    }
}
