//! Node initialisation: a tenant Node of a worker VM gets the VM's address, instance type, zone
//! and region, then loses the uninitialised taint its kubelet (`--cloud-provider=external`)
//! registered it with. Nodes are never deleted here: the NodePool controller removes the Nodes
//! of VMs that are gone.

use super::node_patch::{self, vm_name};
use super::runner::Tenant;
use crate::nodepool::kubevirt::VirtualMachineInstance;
use crate::{Error, FIELD_MANAGER, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const CONTROLLER: &str = "cloud-node";
/// How soon a Node whose VM has no address yet is looked at again: pods wait for it.
const WAITING: Duration = Duration::from_secs(10);
const FAILED_RETRY: Duration = Duration::from_secs(10);

/// Runs Node initialisation for tenant `t` until `stop`. Only changes of what initialisation
/// reads or writes wake a Node, not the kubelet's heartbeats.
pub async fn run(t: Arc<Tenant>, stop: CancellationToken) {
    let (reader, writer) = reflector::store();
    let nodes = watcher(
        Api::<Node>::all(t.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(initialisation_fields, Default::default());
    Controller::for_stream(nodes, reader)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, t)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "cloud node controller event");
            }
        })
        .await;
}

/// A hash of the parts of a Node that initialisation reads or writes.
fn initialisation_fields(node: &Node) -> Option<u64> {
    let spec = node.spec.as_ref();
    let parts = (
        spec.and_then(|s| s.provider_id.as_ref()),
        node.labels(),
        spec.map(|s| serde_json::to_string(&s.taints).unwrap_or_default()),
        node.status
            .as_ref()
            .map(|s| serde_json::to_string(&s.addresses).unwrap_or_default()),
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    Some(h.finish())
}

async fn reconcile(node: Arc<Node>, t: Arc<Tenant>) -> Result<Action> {
    let _timer = t.metrics.reconcile_started(CONTROLLER);
    let Some(vm) = vm_name(&node) else {
        return Ok(Action::await_change());
    };
    let name = node.name_any();
    let later = if node_patch::is_uninitialised(&node) {
        WAITING
    } else {
        t.resync
    };
    let vmi = Api::<VirtualMachineInstance>::namespaced(t.management.clone(), &t.place.namespace)
        .get_opt(vm)
        .await?
        .filter(|v| node_patch::belongs_to(v, &t.place.tenant));
    let Some(vmi) = vmi else {
        debug!(node = %name, %vm, "no VM of the tenant behind the Node");
        return Ok(Action::requeue(later));
    };
    let host = host_of(&t, &vmi).await;
    let Some(wanted) = node_patch::wanted(&name, &vmi, host.as_ref()) else {
        debug!(node = %name, "the VM has no address yet");
        return Ok(Action::requeue(later));
    };
    apply(&t, &node, &wanted).await?;
    Ok(Action::requeue(t.resync))
}

/// The management Node a VMI runs on, for its zone and region; a Node that cannot be read
/// (gone, or not readable) only means no zone and region.
async fn host_of(t: &Tenant, vmi: &VirtualMachineInstance) -> Option<Node> {
    let name = vmi.status.as_ref()?.node_name.as_deref()?;
    match Api::<Node>::all(t.management.clone()).get_opt(name).await {
        Ok(found) => found,
        Err(e) => {
            warn!(node = name, error = %e, "cannot read the management Node of a VM");
            None
        }
    }
}

/// Writes what differs: the addresses first, then the labels and taints, so the taint goes
/// only once the Node has its address.
async fn apply(t: &Tenant, node: &Node, wanted: &node_patch::Wanted) -> Result<()> {
    let changes = node_patch::changes(node, wanted);
    if changes.is_empty() {
        return Ok(());
    }
    let api = Api::<Node>::all(t.client.clone());
    let name = node.name_any();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut node = node.clone();
    if let Some(patch) = changes.status_patch() {
        node = api
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await?;
    }
    let changes = node_patch::changes(&node, wanted);
    if let Some(patch) = changes.node_patch(node.resource_version().as_deref()) {
        api.patch(&name, &params, &Patch::Merge(&patch)).await?;
    }
    let address = &wanted.addresses[0].address;
    if changes.taints.is_some() {
        info!(tenant = %t.place.tenant, node = %name, %address, "node initialised");
    } else {
        info!(tenant = %t.place.tenant, node = %name, %address, "node updated");
    }
    Ok(())
}

fn error_policy(node: Arc<Node>, error: &Error, t: Arc<Tenant>) -> Action {
    warn!(tenant = %t.place.tenant, node = %node.name_any(), %error, "node initialisation failed");
    t.metrics.reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}
