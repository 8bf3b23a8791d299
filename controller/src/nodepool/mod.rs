//! NodePool: KubeVirt worker VMs that join a tenant cluster. One reconcile is a pipeline:
//! dereference (the tenant, its version, endpoint and CA; the pool's VMs, VMIs and Nodes) →
//! [`machine`] (pure observation) → [`plan`] (pure: which machines to create and remove next) →
//! act (create machines, drain and remove others, clear used bootstrap tokens) → [`status`].
//!
//! Machines are cattle: a VM is created once and never changed; a change of the template or
//! version rolls new VMs in. A reconcile of a converged pool writes nothing. Deleting a pool
//! removes its Nodes and tokens in the tenant (the finalizer: the garbage collector cannot reach
//! into a tenant) and its VMs, Secrets and claims through owner references; a pool is owned by its
//! TenantControlPlane, so deleting the tenant deletes its pools.

pub mod build;
mod drain;
pub mod kubevirt;
pub mod machine;
pub mod plan;
pub mod status;

use crate::api::{NodePool, TenantControlPlane, parse_duration};
use crate::apply::owner_reference;
use crate::conditions::{self, READY, TENANT_BOOTSTRAPPED};
use crate::context::Context;
use crate::stop::{Blocked, Stop};
use crate::{Error, FIELD_MANAGER, Result};
use build::{
    BootstrapToken, DRAIN_ANNOTATION, DRAIN_REASON_ANNOTATION, MACHINE_LABEL, MachineInputs,
    POOL_LABEL,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use kubevirt::{VirtualMachine, VirtualMachineInstance};
use machine::Observed;
use plan::{Reason, limits};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

const CONTROLLER: &str = "nodepool";
/// Removes the pool's Nodes and bootstrap tokens from its tenant before the pool goes.
pub const CLEANUP_FINALIZER: &str = "orrery.dev/nodepool-cleanup";
/// How often a pool with machines on their way is looked at again: the tenant's Nodes are not
/// watched (one watch per tenant would not scale), so joining and draining are polled.
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// How often a converged pool is looked at again, to notice a Node that went NotReady.
const IDLE_RETRY: Duration = Duration::from_secs(60);
const FAILED_RETRY: Duration = Duration::from_secs(5);
/// The namespace label that sets the Pod Security level admission enforces.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

#[instrument(skip_all, fields(pool = %pool.name_any(), namespace = pool.namespace().unwrap_or_default()))]
async fn reconcile(pool: Arc<NodePool>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pool.namespace().unwrap_or_default();
    let api = Api::<NodePool>::namespaced(ctx.client.clone(), &ns);
    // Cleanups count as reconciles too (their failures are counted as errors).
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let result = finalizer(&api, CLEANUP_FINALIZER, pool, |event| async {
        match event {
            FinalizerEvent::Apply(pool) => reconcile_pool(pool, ctx.clone()).await,
            FinalizerEvent::Cleanup(pool) => cleanup(pool, ctx.clone()).await,
        }
    })
    .await;
    crate::error::finalized(result, Action::await_change())
}

/// What a reconcile saw and did, for the status, Events and the next requeue.
#[derive(Default)]
struct Outcome {
    machines: Option<Vec<Observed>>,
    template_hash: Option<String>,
    /// Something is on its way (machines joining, draining, created or removed).
    busy: bool,
    /// When a machine would pass a timeout.
    next_deadline: Option<Timestamp>,
}

async fn reconcile_pool(pool: Arc<NodePool>, ctx: Arc<Context>) -> Result<Action> {
    let mut seen = Outcome::default();
    let result = converge(&pool, &ctx, &mut seen).await;
    let now = Time(Timestamp::now());
    let st = status::status(&status::Inputs {
        pool: &pool,
        machines: seen.machines.as_deref(),
        template_hash: seen.template_hash.as_deref(),
        selector: build::selector(&pool),
        outcome: &result,
        now,
    });
    let was_blocked = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .map(|c| c.reason.clone());
    if pool.status.as_ref() != Some(&st) {
        let patch = status::merge_patch(&st);
        Api::<NodePool>::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default())
            .patch_status(
                &pool.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    match result {
        Ok(()) => {
            let wait = if seen.busy { BUSY_RETRY } else { IDLE_RETRY };
            let wait = seen
                .next_deadline
                .and_then(|t| Duration::try_from(t.duration_since(Timestamp::now())).ok())
                .map_or(wait, |d| d.min(wait));
            Ok(Action::requeue(wait.max(Duration::from_secs(1))))
        }
        Err(Stop::Blocked(b)) => {
            if was_blocked.as_deref() != Some(b.reason) {
                info!(reason = b.reason, message = %b.message, "blocked");
                ctx.event(
                    &*pool,
                    EventType::Warning,
                    b.reason,
                    "Reconcile",
                    b.message.clone(),
                )
                .await;
            }
            Ok(Action::requeue(b.retry.unwrap_or(IDLE_RETRY)))
        }
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// The tenant as a pool needs it: its version, endpoint, CA hash and an admin client.
struct Tenant {
    tcp: Arc<TenantControlPlane>,
    version: String,
    endpoint: String,
    ca_cert_hash: String,
    client: kube::Client,
}

fn waiting_for_tenant(message: String) -> Stop {
    Blocked::waiting(READY, "WaitingForControlPlane", message).into()
}

/// Finds the pool's tenant and checks that nodes can join it.
async fn dereference_tenant(pool: &NodePool, ctx: &Context) -> Result<Tenant, Stop> {
    let ns = pool.namespace().unwrap_or_default();
    let name = &pool.spec.control_plane_ref.name;
    ctx.stores.tenants_listed().await?;
    let tcp = ctx
        .stores
        .tenants
        .get(&ObjectRef::new(name).within(&ns))
        .ok_or_else(|| {
            waiting_for_tenant(format!(
                "TenantControlPlane {name} (spec.controlPlaneRef) does not exist in {ns}"
            ))
        })?;
    let status = tcp.status.clone().unwrap_or_default();
    let (Some(version), Some(endpoint), Some(secret_ref)) = (
        status.version.clone(),
        status.endpoint.clone(),
        status.kubeconfig_secret_ref.clone(),
    ) else {
        return Err(waiting_for_tenant(format!(
            "TenantControlPlane {name} is not running yet"
        )));
    };
    if tcp.spec.sleep {
        return Err(Blocked::until_changed(
            READY,
            "TenantAsleep",
            format!(
                "TenantControlPlane {name} sleeps (spec.sleep): its machines are kept as they are \
                 until it wakes"
            ),
        )
        .into());
    }
    if !conditions::is_true(&status.conditions, TENANT_BOOTSTRAPPED) {
        return Err(waiting_for_tenant(format!(
            "TenantControlPlane {name} is not bootstrapped for joining nodes yet"
        )));
    }
    if let Some(message) = build::endpoint_clash(&endpoint, &tcp.spec.network.service_cidr) {
        let message = format!("TenantControlPlane {name}: {message}");
        return Err(Blocked::until_changed(READY, "ServiceCIDROverlap", message).into());
    }
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&secret_ref.name)
        .await?
        .ok_or_else(|| waiting_for_tenant(format!("Secret {} is missing", secret_ref.name)))?;
    let kubeconfig = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let ca_pem = kube::config::Kubeconfig::from_yaml(&kubeconfig)
        .ok()
        .and_then(|k| k.clusters.into_iter().next())
        .and_then(|c| c.cluster)
        .and_then(|c| c.certificate_authority_data)
        .and_then(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Tenant {
        version,
        endpoint,
        ca_cert_hash: build::ca_cert_hash(&ca_pem)?,
        client: crate::tenant::apply::client(&kubeconfig).await?,
        tcp,
    })
}

/// Makes the tenant an owner of the pool, so deleting the tenant deletes its pools.
async fn ensure_owned_by_tenant(
    pool: &NodePool,
    tcp: &TenantControlPlane,
    ctx: &Context,
) -> Result<()> {
    let uid = tcp.uid().unwrap_or_default();
    if pool.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    let owner = OwnerReference {
        controller: None,
        block_owner_deletion: None,
        ..owner_reference(tcp)
    };
    let patch = json!({
        "apiVersion": "orrery.dev/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": pool.name_any(), "ownerReferences": [owner]},
    });
    Api::<NodePool>::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default())
        .patch(
            &pool.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// The pool's VMs and their VMIs; a missing KubeVirt is a reason to wait, named.
async fn list_vms(
    pool: &NodePool,
    ctx: &Context,
) -> Result<(Vec<VirtualMachine>, Vec<VirtualMachineInstance>), Stop> {
    let ns = pool.namespace().unwrap_or_default();
    let by_pool = ListParams::default().labels(&build::selector(pool));
    let missing = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    let vms = match Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns)
        .list(&by_pool)
        .await
    {
        Ok(list) => list.items,
        Err(e) if missing(&e) => {
            return Err(Blocked::waiting(
                READY,
                "KubeVirtMissing",
                "the management cluster has no KubeVirt (kubevirt.io/v1 VirtualMachine)",
            )
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    let vmis = Api::<VirtualMachineInstance>::namespaced(ctx.client.clone(), &ns)
        .list(&by_pool)
        .await?
        .items;
    Ok((vms, vmis))
}

/// KubeVirt's launcher pods need a namespace that admits privileged pods: say so, naming the
/// label, rather than leave VMs that never start.
async fn check_pod_security(pool: &NodePool, ctx: &Context) -> Result<(), Stop> {
    let ns = pool.namespace().unwrap_or_default();
    let Some(namespace) = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&ns)
        .await?
    else {
        return Ok(());
    };
    let level = namespace
        .labels()
        .get(POD_SECURITY_ENFORCE)
        .cloned()
        .unwrap_or_default();
    if level == "restricted" || level == "baseline" {
        let message = format!(
            "namespace {ns} enforces Pod Security {level:?}, which refuses KubeVirt's VM launcher \
             pods; label it {POD_SECURITY_ENFORCE}=privileged to run NodePools in it"
        );
        return Err(Blocked::waiting(READY, "PodSecurityRefusesVMs", message).into());
    }
    Ok(())
}

/// The pipeline: dereference → observe → plan → act.
async fn converge(pool: &NodePool, ctx: &Context, seen: &mut Outcome) -> Result<(), Stop> {
    if pool.spec.template.root_disk.persistent_volume.is_some() {
        // Copying the image into a claim needs an importer (CDI's DataVolumes) this controller
        // does not drive yet: say so instead of booting something else.
        return Err(Blocked::until_changed(
            READY,
            "Unsupported",
            "spec.template.rootDisk.persistentVolume is not supported yet: leave it out to boot \
             from the containerDisk",
        )
        .into());
    }
    check_pod_security(pool, ctx).await?;
    let tenant = dereference_tenant(pool, ctx).await?;
    ensure_owned_by_tenant(pool, &tenant.tcp, ctx).await?;
    let image = pool
        .spec
        .template
        .root_disk
        .image
        .clone()
        .unwrap_or_else(|| format!("{}:{}", ctx.settings.worker_image, tenant.version));
    let hash = build::template_hash(pool, &tenant.version, &image)?;
    seen.template_hash = Some(hash.clone());
    let (vms, vmis) = list_vms(pool, ctx).await?;
    let nodes = Api::<Node>::all(tenant.client.clone())
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={}", pool.name_any())))
        .await
        .map_err(|e| {
            Blocked::waiting(
                READY,
                "TenantUnreachable",
                format!("cannot list the pool's Nodes in the tenant: {e}"),
            )
        })?
        .items;
    remove_orphan_nodes(&tenant, &nodes, &vms, &vmis).await?;
    let observed = machine::observe_all(&vms, &vmis, &nodes);
    seen.machines = Some(observed.clone());
    clear_tokens(pool, &tenant, &observed).await?;

    let timeouts = Timeouts::of(pool);
    let planned = plan::Pool {
        replicas: pool.spec.replicas.max(0) as u32,
        template_hash: &hash,
        limits: limits(&pool.spec.strategy.rolling_update, pool.spec.replicas),
        node_startup_timeout: timeouts.startup,
        unhealthy_timeout: timeouts.unhealthy,
    };
    let machines: Vec<plan::Machine> = observed.iter().map(|o| o.machine.clone()).collect();
    let now = Timestamp::now();
    let step = plan::plan(&planned, &machines, now);
    seen.next_deadline = plan::next_deadline(&planned, &machines, now);
    seen.busy = !step.is_empty()
        || observed
            .iter()
            .any(|o| o.machine.phase != crate::api::MachinePhase::Ready);

    for (name, reason) in &step.delete {
        start_drain(pool, ctx, name, *reason).await?;
    }
    for o in observed
        .iter()
        .filter(|o| o.machine.phase == crate::api::MachinePhase::Deleting)
    {
        continue_drain(pool, ctx, &tenant, o, &vms, timeouts.drain).await?;
    }
    let inputs = MachineInputs {
        version: &tenant.version,
        image: &image,
        endpoint: &tenant.endpoint,
        ca_cert_hash: &tenant.ca_cert_hash,
        external_cloud_provider: crate::addons::cloud::runs_for(&tenant.tcp, &ctx.settings),
    };
    for _ in 0..step.create {
        create_machine(pool, ctx, &tenant, &hash, &inputs, timeouts.startup).await?;
    }
    Ok(())
}

/// The pool's durations; admission guarantees they parse.
struct Timeouts {
    startup: Duration,
    unhealthy: Duration,
    drain: Duration,
}

impl Timeouts {
    fn of(pool: &NodePool) -> Self {
        let parse =
            |s: &str, default: u64| parse_duration(s).unwrap_or(Duration::from_secs(default));
        Self {
            startup: parse(&pool.spec.node_startup_timeout, 600),
            unhealthy: parse(&pool.spec.unhealthy_timeout, 300),
            drain: parse(&pool.spec.drain_timeout, 300),
        }
    }
}

/// Creates one machine: its bootstrap token in the tenant, its VM, then the VM's user data
/// (owned by the VM; the VM's launcher pod waits for it) and extra disk claims.
async fn create_machine(
    pool: &NodePool,
    ctx: &Context,
    tenant: &Tenant,
    hash: &str,
    inputs: &MachineInputs<'_>,
    token_ttl: Duration,
) -> Result<()> {
    let ns = pool.namespace().unwrap_or_default();
    let tenant_name = tenant.tcp.name_any();
    let name = build::machine_name(&pool.name_any());
    let token = BootstrapToken::generate();
    let expires = Timestamp::now()
        .checked_add(token_ttl)
        .unwrap_or(Timestamp::MAX);
    let token_secret = build::token_secret(pool, &name, &token, expires);
    Api::<Secret>::namespaced(tenant.client.clone(), "kube-system")
        .create(&PostParams::default(), &token_secret)
        .await?;
    let vm = build::virtual_machine(
        pool,
        &tenant_name,
        &name,
        hash,
        inputs,
        owner_reference(pool),
    );
    let vm = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &vm)
        .await?;
    let user_data = build::user_data(pool, &name, &token, inputs)?;
    let secret =
        build::user_data_secret(pool, &tenant_name, &name, user_data, owner_reference(&vm));
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    for claim in build::extra_disk_claims(pool, &tenant_name, &name, &owner_reference(&vm)) {
        Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .create(&PostParams::default(), &claim)
            .await?;
    }
    info!(machine = %name, version = inputs.version, "machine created");
    let note = format!("created machine {name} ({})", inputs.version);
    ctx.event(pool, EventType::Normal, "MachineCreated", "Scale", note)
        .await;
    Ok(())
}

fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::Requested => "removal requested",
        Reason::ScaleDown => "scale down",
        Reason::Rollout => "replaced by the rollout",
        Reason::StartupTimeout => "its node did not become Ready within nodeStartupTimeout",
        Reason::Unhealthy => "its node stayed NotReady past unhealthyTimeout",
    }
}

/// Marks a machine for removal: from now on it is drained and then deleted.
async fn start_drain(pool: &NodePool, ctx: &Context, name: &str, reason: Reason) -> Result<()> {
    let ns = pool.namespace().unwrap_or_default();
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = json!({"metadata": {"annotations": {
        DRAIN_ANNOTATION: now,
        DRAIN_REASON_ANNOTATION: reason_text(reason),
    }}});
    Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let (event, type_) = match reason {
        Reason::StartupTimeout | Reason::Unhealthy => ("MachineReplacing", EventType::Warning),
        _ => ("MachineDraining", EventType::Normal),
    };
    let note = format!("removing machine {name}: {}", reason_text(reason));
    info!(machine = %name, reason = reason_text(reason), "machine draining");
    ctx.event(pool, type_, event, "Scale", note).await;
    Ok(())
}

/// One step of a machine's removal: drain its node (until done or the drain timeout), then
/// delete the Node, its token and the VM.
async fn continue_drain(
    pool: &NodePool,
    ctx: &Context,
    tenant: &Tenant,
    o: &Observed,
    vms: &[VirtualMachine],
    timeout: Duration,
) -> Result<()> {
    let Some(vm) = vms.iter().find(|v| v.name_any() == o.machine.name) else {
        return Ok(());
    };
    if vm.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let name = &o.machine.name;
    let started = o.status.since.0;
    let overdue = Timestamp::now() > started.checked_add(timeout).unwrap_or(Timestamp::MAX);
    if o.joined && !overdue {
        match drain::step(&tenant.client, name).await {
            Ok(drain::Progress::Done) => {}
            Ok(drain::Progress::Pending { remaining, blocked }) => {
                info!(machine = %name, remaining, blocked, "draining");
                return Ok(());
            }
            Err(e) => {
                warn!(machine = %name, error = %e, "drain step failed; retrying");
                return Ok(());
            }
        }
    }
    // The Node goes once the VM has stopped (remove_orphan_nodes): a kubelet still running
    // would register it again.
    delete_tokens(tenant, pool, Some(name)).await?;
    let ns = pool.namespace().unwrap_or_default();
    match Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let how = if overdue && o.joined {
        " after the drain timeout"
    } else {
        ""
    };
    let note = format!("deleted machine {name}{how}");
    info!(machine = %name, overdue, "machine deleted");
    ctx.event(pool, EventType::Normal, "MachineDeleted", "Scale", note)
        .await;
    Ok(())
}

/// Deletes the pool's Nodes whose VM is gone and stopped.
async fn remove_orphan_nodes(
    tenant: &Tenant,
    nodes: &[Node],
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
) -> Result<()> {
    for node in nodes {
        let name = node.name_any();
        let has_vm = vms.iter().any(|v| v.name_any() == name);
        let runs = vmis.iter().any(|v| v.name_any() == name);
        if !has_vm && !runs {
            drain::delete_node(&tenant.client, &name).await?;
            info!(node = %name, "removed the Node of a deleted machine");
        }
    }
    Ok(())
}

/// Deletes the pool's bootstrap tokens in the tenant: all of them (`None`) or `machine`'s.
async fn delete_tokens(tenant: &Tenant, pool: &NodePool, machine: Option<&str>) -> Result<()> {
    let mut selector = format!("{POOL_LABEL}={}", pool.name_any());
    if let Some(m) = machine {
        selector.push_str(&format!(",{MACHINE_LABEL}={m}"));
    }
    let api = Api::<Secret>::namespaced(tenant.client.clone(), "kube-system");
    for s in api
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
    {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes the bootstrap tokens that have done their job (their node joined) or whose machine is
/// gone: a token lives only as long as a join needs it.
async fn clear_tokens(pool: &NodePool, tenant: &Tenant, observed: &[Observed]) -> Result<()> {
    let api = Api::<Secret>::namespaced(tenant.client.clone(), "kube-system");
    let selector = format!("{POOL_LABEL}={}", pool.name_any());
    let tokens = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    for t in tokens {
        let machine = t.labels().get(MACHINE_LABEL).cloned().unwrap_or_default();
        let waiting = observed
            .iter()
            .any(|o| o.machine.name == machine && !o.joined);
        if waiting {
            continue;
        }
        match api.delete(&t.name_any(), &DeleteParams::default()).await {
            Ok(_) => info!(%machine, "bootstrap token removed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Before the pool goes: its VMs are deleted and, once they have stopped, its Nodes and tokens
/// leave the tenant (when the tenant is still there and answers). The VMs' Secrets and claims
/// follow through owner references.
async fn cleanup(pool: Arc<NodePool>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pool.namespace().unwrap_or_default();
    let (vms, vmis) = match list_vms(&pool, &ctx).await {
        Ok(found) => found,
        Err(Stop::Blocked(_)) => return Ok(Action::await_change()),
        Err(Stop::Failed(e)) => return Err(e),
    };
    let api = Api::<VirtualMachine>::namespaced(ctx.client.clone(), &ns);
    for vm in vms.iter().filter(|v| v.meta().deletion_timestamp.is_none()) {
        match api
            .delete(&vm.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let tenant = match dereference_tenant(&pool, &ctx).await {
        Ok(t) if t.tcp.meta().deletion_timestamp.is_none() => t,
        // The tenant is gone or going, and its Nodes and tokens with it.
        _ => return Ok(Action::await_change()),
    };
    if !vmis.is_empty() {
        return Err(Error::Pending(format!(
            "{} VMs of the pool are still stopping",
            vmis.len()
        )));
    }
    let nodes = Api::<Node>::all(tenant.client.clone());
    let selector = format!("{POOL_LABEL}={}", pool.name_any());
    let removed = async {
        for n in nodes
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
        {
            drain::delete_node(&tenant.client, &n.name_any()).await?;
        }
        delete_tokens(&tenant, &pool, None).await
    };
    if let Err(e) = removed.await {
        // An unreachable tenant must not keep the pool forever; say what was left.
        let note = format!("could not remove the pool's Nodes and tokens from the tenant: {e}");
        warn!(error = %e, "cleanup incomplete");
        ctx.event(
            &*pool,
            EventType::Warning,
            "CleanupIncomplete",
            "Delete",
            note,
        )
        .await;
    }
    Ok(Action::await_change())
}

fn error_policy(pool: Arc<NodePool>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %pool.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}

/// Runs the NodePool controller until `shutdown` is cancelled.
pub fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    // The pool's own status writes do not wake it (see `changed_by_user`).
    let (reader, writer) = reflector::store();
    let changed = reflector::reflector(
        writer,
        watcher(
            Api::<NodePool>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .applied_objects()
    .predicate_filter(crate::context::changed_by_user(), Default::default());
    let pools = reader.clone();
    let controller = Controller::for_stream(changed, reader);
    // Without KubeVirt the VM watch backs off, and the pools say why.
    controller
        .owns_stream(crate::context::owned::<VirtualMachine>(&client))
        .watches(
            Api::<TenantControlPlane>::all(client),
            watcher::Config::default(),
            move |tcp| {
                pools
                    .state()
                    .iter()
                    .filter(|p| {
                        p.spec.control_plane_ref.name == tcp.name_any()
                            && p.namespace() == tcp.namespace()
                    })
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .boxed()
}
