//! How a Kubernetes object reads as a row (pure): a Pod or a Node by its Ready condition and
//! what holds it up, a Deployment or a DaemonSet by its ready replicas.

use super::row::{Item, Ready, Row, Severity, severity};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

/// A control-plane pod: Ready, terminating, or held up by a container (its reason and message);
/// restarts are counted in the message.
pub fn pod(p: &Pod) -> Item {
    let name = p.name_any();
    let status = p.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let mut row = Row {
        since: ready.and_then(|c| c.last_transition_time.clone()),
        ..Row::named(format!("Pod/{name}"))
    };
    let restarts: i32 = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    if p.metadata.deletion_timestamp.is_some() {
        row.ready = Some(Ready::False);
        row.severity = Some(Severity::Info);
        row.reason = "Terminating".into();
    } else if ready.is_some_and(|c| c.status == "True") {
        row.ready = Some(Ready::True);
    } else {
        // A container that runs but is not ready yet says so only in the pod's condition.
        let (reason, message) = container_trouble(p).unwrap_or_else(|| {
            let reason = ready.and_then(|c| c.reason.clone());
            let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
            let message = ready.and_then(|c| c.message.clone()).unwrap_or_default();
            (reason.unwrap_or(phase), message)
        });
        let expected = ["ContainerCreating", "PodInitializing", "Pending"];
        row.ready = Some(Ready::False);
        row.severity = Some(if expected.contains(&reason.as_str()) {
            Severity::Info
        } else {
            Severity::Warning
        });
        row.reason = reason;
        row.message = message;
    }
    if restarts > 0 {
        let note = format!("restarted {restarts} times");
        row.message = [row.message.as_str(), &note]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("; ");
    }
    Item { name, row }
}

/// The first container that waits or has stopped: its reason and "container: message".
fn container_trouble(p: &Pod) -> Option<(String, String)> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let state = c.state.as_ref()?;
        let (reason, message) = if let Some(w) = &state.waiting {
            (w.reason.clone()?, w.message.clone())
        } else if let Some(t) = &state.terminated {
            (
                t.reason.clone().unwrap_or_else(|| "Terminated".into()),
                t.message.clone(),
            )
        } else {
            return None;
        };
        let message = match message {
            Some(m) => format!("{}: {m}", c.name),
            None => c.name.clone(),
        };
        Some((reason, message))
    })
}

/// An add-on Deployment; `no_nodes` makes a shortfall expected rather than a fault.
pub fn deployment(d: &Deployment, no_nodes: bool) -> Row {
    let status = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Available");
    let mut row = Row {
        since: available.and_then(|c| c.last_transition_time.clone()),
        message: format!("{ready}/{want} replicas ready"),
        ..Row::default()
    };
    if ready >= want {
        row.ready = Some(Ready::True);
    } else if no_nodes {
        row.ready = Some(Ready::False);
        row.severity = Some(Severity::Info);
        row.reason = "NoNodes".into();
        row.message.push_str(": the tenant has no nodes yet");
    } else {
        row.ready = Some(Ready::False);
        row.severity = Some(Severity::Warning);
        row.reason = available
            .and_then(|c| c.reason.clone())
            .unwrap_or_else(|| "Unavailable".into());
    }
    row
}

/// An add-on DaemonSet: ready on every node it should run on.
pub fn daemon_set(d: &DaemonSet, no_nodes: bool) -> Row {
    let status = d.status.clone().unwrap_or_default();
    let (ready, want) = (status.number_ready, status.desired_number_scheduled);
    let mut row = Row {
        ready: Some(if ready >= want {
            Ready::True
        } else {
            Ready::False
        }),
        since: d.metadata.creation_timestamp.clone(),
        message: format!("{ready}/{want} nodes ready"),
        ..Row::default()
    };
    if no_nodes {
        row.message.push_str(": the tenant has no nodes yet");
    }
    if ready < want {
        row.severity = Some(Severity::Warning);
        row.reason = "NotAllReady".into();
    }
    row
}

/// A tenant node by its Ready condition.
pub fn node(n: &Node) -> Item {
    let name = n.name_any();
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let mut row = Row::named(format!("Node/{name}"));
    if let Some(c) = ready {
        let state = Ready::of(&c.status);
        row.ready = Some(state);
        row.since = c.last_transition_time.clone();
        if state != Ready::True {
            row.severity = severity(state, "");
            row.reason = c.reason.clone().unwrap_or_default();
            row.message = c.message.clone().unwrap_or_default();
        }
    }
    Item { name, row }
}
