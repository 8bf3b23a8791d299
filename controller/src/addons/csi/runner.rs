//! The controller side of the driver for one tenant: the work of the external provisioner,
//! attacher and resizer, done against the tenant's API from outside the tenant, calling the
//! [`ControllerService`] in process. Three controllers, each over what it reads: claims
//! (PersistentVolumeClaims: provisioned, [`claims`], or grown once bound, [`resize`]), volumes
//! (released PersistentVolumes) and attachments (VolumeAttachments, [`attachments`]).

use super::attachments::{self, AttachPlan};
use super::claims::{self, ClaimPlan, VolumePlan};
use super::controller::ControllerService;
use super::infra::Infra;
use super::proto::csi::controller_server::Controller as _;
use super::proto::csi::volume_capability::access_mode::Mode;
use super::proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use super::proto::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerPublishVolumeRequest,
    ControllerUnpublishVolumeRequest, DeleteVolumeRequest, VolumeCapability,
};
use super::resize::{self, ResizePlan};
use crate::apply::apply;
use crate::metrics::Metrics;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{StorageClass, VolumeAttachment};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

/// The reporting controller of the driver's Events in the tenant.
pub const REPORTER: &str = "orrery-csi-controller";

/// How soon an operation the infrastructure has under way (an attach, a disk being prepared)
/// is asked about again.
const PENDING_RETRY: Duration = Duration::from_secs(3);
const FAILED_RETRY: Duration = Duration::from_secs(15);

/// One tenant's driver, controller side.
pub struct Driver<I> {
    /// A client of the tenant's API.
    pub client: kube::Client,
    pub controller: ControllerService<I>,
    /// Events on the tenant's claims, volumes and attachments, published in the tenant.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How long a settled object waits before it is looked at again.
    pub resync: Duration,
    /// The tenant's name, for logs.
    pub tenant: String,
}

impl<I: Infra> Driver<I> {
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(tenant = %self.tenant, error = %e, reason, "cannot publish an event in the tenant");
        }
    }
}

/// Runs the driver's controllers for one tenant until `stop`.
pub async fn run<I: Infra>(d: Arc<Driver<I>>, stop: CancellationToken) {
    info!(tenant = %d.tenant, "CSI controller started");
    let (classes, writer) = reflector::store();
    let class_feed = watcher(
        Api::<StorageClass>::all(d.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .for_each(|_| async {});
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = class_feed => {}
        _ = async {
            tokio::join!(
                run_claims(d.clone(), classes, stop.clone()),
                run_volumes(d.clone(), stop.clone()),
                run_attachments(d.clone(), stop.clone()),
            )
        } => {}
    }
    info!(tenant = %d.tenant, "CSI controller stopped");
}

fn log_event<T, E: std::fmt::Display>(
    what: &'static str,
) -> impl Fn(Result<T, E>) -> futures::future::Ready<()> {
    move |res| {
        if let Err(e) = res {
            debug!(error = %e, what, "CSI controller event");
        }
        futures::future::ready(())
    }
}

// ---- claims

struct ClaimsCtx<I> {
    d: Arc<Driver<I>>,
    classes: Store<StorageClass>,
}

async fn run_claims<I: Infra>(
    d: Arc<Driver<I>>,
    classes: Store<StorageClass>,
    stop: CancellationToken,
) {
    let api = Api::<PersistentVolumeClaim>::all(d.client.clone());
    let ctx = Arc::new(ClaimsCtx { d, classes });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_claim, retry_claim, ctx)
        .for_each(log_event("claim"))
        .await;
}

async fn reconcile_claim<I: Infra>(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<ClaimsCtx<I>>,
) -> Result<Action> {
    let d = &ctx.d;
    let _timer = d.metrics.reconcile_started("csi-claim");
    if !claims::is_ours(&claim) {
        return Ok(Action::await_change());
    }
    if let Some(pv) = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
    {
        return resize_claim(&claim, pv, d).await;
    }
    let class_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    if ctx.classes.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(PENDING_RETRY));
    }
    let class = ctx.classes.get(&reflector::ObjectRef::new(&class_name));
    let request = match claims::plan_claim(&claim, class.as_deref()) {
        ClaimPlan::Ignore => return Ok(Action::await_change()),
        ClaimPlan::Wait(why) => {
            debug!(claim = %claim.name_any(), why, "claim waits");
            return Ok(Action::requeue(d.resync));
        }
        ClaimPlan::Refuse(why) => {
            d.event(&*claim, EventType::Warning, "ProvisioningFailed", why)
                .await;
            return Ok(Action::await_change());
        }
        ClaimPlan::Provision(request) => request,
    };
    let class = class.expect("a claim is provisioned only with its class");
    let pvs = Api::<PersistentVolume>::all(d.client.clone());
    if pvs.get_opt(&request.name).await?.is_some() {
        return Ok(Action::await_change());
    }
    let name = format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    );
    d.event(
        &*claim,
        EventType::Normal,
        "Provisioning",
        format!("provisioning a volume for claim {name}"),
    )
    .await;
    let volume = match d
        .controller
        .create_volume(Request::new((*request).clone()))
        .await
    {
        Ok(r) => r.into_inner().volume.unwrap_or_default(),
        Err(status) => {
            let retry = retry_after(&status);
            d.event(
                &*claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("creating volume {}: {}", request.name, status.message()),
            )
            .await;
            return Ok(Action::requeue(retry));
        }
    };
    let pv = claims::build_pv(&claim, &class, &request, &volume);
    apply(&pvs, &pv).await?;
    info!(tenant = %d.tenant, claim = %name, volume = %request.name, "volume provisioned");
    d.event(
        &*claim,
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("provisioned volume {}", request.name),
    )
    .await;
    Ok(Action::await_change())
}

/// The resizer's work for `claim`, bound to volume `pv_name`.
async fn resize_claim<I: Infra>(
    claim: &PersistentVolumeClaim,
    pv_name: &str,
    d: &Driver<I>,
) -> Result<Action> {
    let pvs = Api::<PersistentVolume>::all(d.client.clone());
    let Some(pv) = pvs.get_opt(pv_name).await? else {
        return Ok(Action::await_change());
    };
    let expand = match resize::plan(claim, &pv) {
        ResizePlan::Settled | ResizePlan::Infeasible => return Ok(Action::await_change()),
        ResizePlan::Refuse(why) => {
            d.event(claim, EventType::Warning, "VolumeResizeFailed", why)
                .await;
            return Ok(Action::await_change());
        }
        ResizePlan::Expand(e) => e,
    };
    if !expand.started {
        set_claim_status(d, claim, resize::in_progress(&expand.request)).await?;
        d.event(
            claim,
            EventType::Normal,
            "Resizing",
            format!("growing volume {pv_name} to {}", expand.request),
        )
        .await;
    }
    let request = ControllerExpandVolumeRequest {
        volume_id: expand.volume_id.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: expand.bytes,
            limit_bytes: 0,
        }),
        volume_capability: Some(expand.capability.clone()),
        ..Default::default()
    };
    let grown = match d
        .controller
        .controller_expand_volume(Request::new(request))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return resize_failed(claim, pv_name, &expand.request, &status, d).await,
    };
    let capacity = json!({"spec": {"capacity": {"storage": grown.capacity_bytes.to_string()}}});
    pvs.patch(pv_name, &PatchParams::default(), &Patch::Merge(capacity))
        .await?;
    let status = resize::expanded(grown.capacity_bytes, grown.node_expansion_required);
    set_claim_status(d, claim, status).await?;
    info!(tenant = %d.tenant, volume = %pv_name, bytes = grown.capacity_bytes, "volume grown");
    d.event(
        claim,
        EventType::Normal,
        "VolumeResizeSuccessful",
        format!("volume {pv_name} grown to {}", expand.request),
    )
    .await;
    Ok(Action::await_change())
}

/// A refused or unfinished resize of `claim`'s volume `pv_name` to `request`: refused for good,
/// the claim is marked infeasible; otherwise it is tried again (and a disk still attached says
/// so once, in the claim's Resizing condition and an Event).
async fn resize_failed<I: Infra>(
    claim: &PersistentVolumeClaim,
    pv_name: &str,
    request: &str,
    status: &Status,
    d: &Driver<I>,
) -> Result<Action> {
    let why = status.message();
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => {
            set_claim_status(d, claim, resize::infeasible(why)).await?;
            let note =
                format!("volume {pv_name} cannot grow to {request}: {why} (ask for another size)");
            d.event(claim, EventType::Warning, "VolumeResizeFailed", note)
                .await;
            return Ok(Action::await_change());
        }
        Code::FailedPrecondition if resizing_message(claim) != Some(why) => {
            set_claim_status(d, claim, resize::waiting(why)).await?;
            d.event(claim, EventType::Warning, "VolumeResizeFailed", why.into())
                .await;
        }
        _ => debug!(tenant = %d.tenant, volume = %pv_name, why, "resize waits"),
    }
    Ok(Action::requeue(retry_after(status)))
}

/// Merge-patches the status of `claim` with `status`.
async fn set_claim_status<I: Infra>(
    d: &Driver<I>,
    claim: &PersistentVolumeClaim,
    status: serde_json::Value,
) -> Result<()> {
    Api::<PersistentVolumeClaim>::namespaced(
        d.client.clone(),
        &claim.namespace().unwrap_or_default(),
    )
    .patch_status(
        &claim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// The message of the claim's Resizing condition, if it has one.
fn resizing_message(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Resizing")?
        .message
        .as_deref()
}

fn retry_claim<I: Infra>(
    claim: Arc<PersistentVolumeClaim>,
    error: &Error,
    ctx: Arc<ClaimsCtx<I>>,
) -> Action {
    warn!(tenant = %ctx.d.tenant, claim = %claim.name_any(), %error, "CSI claim reconcile failed");
    ctx.d
        .metrics
        .reconcile_failed("csi-claim", error.category());
    Action::requeue(FAILED_RETRY)
}

/// How soon a call that failed with `status` is tried again.
fn retry_after(status: &Status) -> Duration {
    match status.code() {
        Code::Unavailable | Code::Aborted => PENDING_RETRY,
        _ => FAILED_RETRY,
    }
}

// ---- volumes

async fn run_volumes<I: Infra>(d: Arc<Driver<I>>, stop: CancellationToken) {
    let api = Api::<PersistentVolume>::all(d.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_volume, retry_volume, d)
        .for_each(log_event("volume"))
        .await;
}

async fn reconcile_volume<I: Infra>(
    pv: Arc<PersistentVolume>,
    d: Arc<Driver<I>>,
) -> Result<Action> {
    let _timer = d.metrics.reconcile_started("csi-volume");
    let handle = match claims::plan_volume(&pv) {
        VolumePlan::Keep => return Ok(Action::await_change()),
        VolumePlan::DropFinalizer => {
            drop_volume_finalizer(&d, &pv).await?;
            return Ok(Action::await_change());
        }
        VolumePlan::Delete(handle) => handle,
    };
    let request = DeleteVolumeRequest {
        volume_id: handle.clone(),
        ..Default::default()
    };
    if let Err(status) = d.controller.delete_volume(Request::new(request)).await {
        d.event(
            &*pv,
            EventType::Warning,
            "VolumeFailedDelete",
            format!("deleting volume {handle}: {}", status.message()),
        )
        .await;
        return Ok(Action::requeue(retry_after(&status)));
    }
    let api = Api::<PersistentVolume>::all(d.client.clone());
    let name = pv.name_any();
    if !drop_volume_finalizer(&d, &pv).await? {
        return Ok(Action::await_change());
    }
    if pv.meta().deletion_timestamp.is_none() {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(tenant = %d.tenant, volume = %name, "released volume deleted");
    Ok(Action::await_change())
}

/// Removes the provisioner's finalizer from `pv`, if it has it; false when `pv` is gone.
async fn drop_volume_finalizer<I: Infra>(d: &Driver<I>, pv: &PersistentVolume) -> Result<bool> {
    if !pv.finalizers().iter().any(|f| f == claims::PV_FINALIZER) {
        return Ok(true);
    }
    let rest: Vec<&String> = pv
        .finalizers()
        .iter()
        .filter(|f| *f != claims::PV_FINALIZER)
        .collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pv.resource_version()}});
    let api = Api::<PersistentVolume>::all(d.client.clone());
    match api
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn retry_volume<I: Infra>(pv: Arc<PersistentVolume>, error: &Error, d: Arc<Driver<I>>) -> Action {
    warn!(tenant = %d.tenant, volume = %pv.name_any(), %error, "CSI volume reconcile failed");
    d.metrics.reconcile_failed("csi-volume", error.category());
    Action::requeue(FAILED_RETRY)
}

// ---- attachments

async fn run_attachments<I: Infra>(d: Arc<Driver<I>>, stop: CancellationToken) {
    let api = Api::<VolumeAttachment>::all(d.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile_attachment, retry_attachment, d)
        .for_each(log_event("attachment"))
        .await;
}

async fn reconcile_attachment<I: Infra>(
    va: Arc<VolumeAttachment>,
    d: Arc<Driver<I>>,
) -> Result<Action> {
    let _timer = d.metrics.reconcile_started("csi-attachment");
    let api = Api::<VolumeAttachment>::all(d.client.clone());
    match attachments::plan(&va) {
        AttachPlan::Ignore => Ok(Action::await_change()),
        AttachPlan::Refuse(why) => {
            set_error(&api, &va, "attachError", &why).await?;
            Ok(Action::await_change())
        }
        AttachPlan::Attach { volume, node } => attach(&d, &api, &va, volume, node).await,
        AttachPlan::Detach { volume, node } => detach(&d, &api, &va, volume, node).await,
    }
}

/// Attaches PersistentVolume `volume` to `node` for attachment `va` (ControllerPublish).
async fn attach<I: Infra>(
    d: &Driver<I>,
    api: &Api<VolumeAttachment>,
    va: &VolumeAttachment,
    volume: String,
    node: String,
) -> Result<Action> {
    let name = va.name_any();
    let pv = Api::<PersistentVolume>::all(d.client.clone())
        .get_opt(&volume)
        .await?;
    let Some((handle, capability)) = pv.as_ref().and_then(publish_inputs) else {
        let why = format!("PersistentVolume {volume} is not a volume of this driver");
        set_error(api, va, "attachError", &why).await?;
        return Ok(Action::requeue(FAILED_RETRY));
    };
    // The finalizer, and the volume id for the detach (the PersistentVolume may be gone
    // by then), before anything is attached.
    let holds = va.finalizers().contains(&attachments::finalizer());
    let recorded = va.annotations().get(attachments::HANDLE_ANNOTATION) == Some(&handle);
    if !holds || !recorded {
        let mut finalizers = va.finalizers().to_vec();
        if !holds {
            finalizers.push(attachments::finalizer());
        }
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "annotations": {attachments::HANDLE_ANNOTATION: handle},
            "resourceVersion": va.resource_version(),
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let request = ControllerPublishVolumeRequest {
        volume_id: handle,
        node_id: node,
        volume_capability: Some(capability),
        readonly: false,
        ..Default::default()
    };
    match d
        .controller
        .controller_publish_volume(Request::new(request))
        .await
    {
        Ok(r) => {
            let metadata = r.into_inner().publish_context;
            set_status(
                api,
                &name,
                json!({
                    "attached": true,
                    "attachmentMetadata": metadata,
                    "attachError": null,
                }),
            )
            .await?;
            info!(tenant = %d.tenant, attachment = %name, %volume, "volume attached");
            Ok(Action::await_change())
        }
        Err(status) => {
            set_error(api, va, "attachError", status.message()).await?;
            Ok(Action::requeue(retry_after(&status)))
        }
    }
}

/// Detaches PersistentVolume `volume` from `node` for the deleted attachment `va`
/// (ControllerUnpublish), then lets the attachment go.
async fn detach<I: Infra>(
    d: &Driver<I>,
    api: &Api<VolumeAttachment>,
    va: &VolumeAttachment,
    volume: String,
    node: String,
) -> Result<Action> {
    let name = va.name_any();
    let handle = match Api::<PersistentVolume>::all(d.client.clone())
        .get_opt(&volume)
        .await?
        .as_ref()
        .and_then(publish_inputs)
    {
        Some((handle, _)) => Some(handle),
        // The volume object is gone: the id recorded at the attach still names the disk.
        None => va
            .annotations()
            .get(attachments::HANDLE_ANNOTATION)
            .cloned(),
    };
    if let Some(handle) = handle {
        let request = ControllerUnpublishVolumeRequest {
            volume_id: handle,
            node_id: node,
            ..Default::default()
        };
        if let Err(status) = d
            .controller
            .controller_unpublish_volume(Request::new(request))
            .await
        {
            set_error(api, va, "detachError", status.message()).await?;
            return Ok(Action::requeue(retry_after(&status)));
        }
    }
    // Detached, or never attached (no id was recorded): let the attachment go.
    let rest: Vec<String> = va
        .finalizers()
        .iter()
        .filter(|f| **f != attachments::finalizer())
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": va.resource_version()}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    info!(tenant = %d.tenant, attachment = %name, %volume, "volume detached");
    Ok(Action::await_change())
}

fn retry_attachment<I: Infra>(
    va: Arc<VolumeAttachment>,
    error: &Error,
    d: Arc<Driver<I>>,
) -> Action {
    warn!(tenant = %d.tenant, attachment = %va.name_any(), %error, "CSI attachment reconcile failed");
    d.metrics
        .reconcile_failed("csi-attachment", error.category());
    Action::requeue(FAILED_RETRY)
}

/// Records `message` as the attachment's `attachError` or `detachError` (an attach error also
/// says it is not attached), unless it says so already: each write wakes this reconcile again.
async fn set_error(
    api: &Api<VolumeAttachment>,
    va: &VolumeAttachment,
    field: &str,
    message: &str,
) -> Result<()> {
    let status = va.status.as_ref();
    let current = match field {
        "attachError" => status.and_then(|s| s.attach_error.as_ref()),
        _ => status.and_then(|s| s.detach_error.as_ref()),
    };
    if current.and_then(|e| e.message.as_deref()) == Some(message) {
        return Ok(());
    }
    let error = json!({"message": message, "time": jiff::Timestamp::now().to_string()});
    let mut patch = json!({ field: error });
    if field == "attachError" {
        patch["attached"] = json!(false);
    }
    set_status(api, &va.name_any(), patch).await
}

async fn set_status(
    api: &Api<VolumeAttachment>,
    name: &str,
    status: serde_json::Value,
) -> Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// The volume id and the capability to publish PersistentVolume `pv` with, if it is one of
/// this driver's volumes.
pub fn publish_inputs(pv: &PersistentVolume) -> Option<(String, VolumeCapability)> {
    let spec = pv.spec.as_ref()?;
    let csi = spec.csi.as_ref().filter(|c| c.driver == super::DRIVER)?;
    let mode = match spec
        .access_modes
        .as_ref()
        .and_then(|m| m.first())
        .map(String::as_str)
    {
        Some("ReadWriteOncePod") => Mode::SingleNodeSingleWriter,
        Some("ReadOnlyMany") => Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => Mode::MultiNodeMultiWriter,
        _ => Mode::SingleNodeWriter,
    };
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: csi.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            volume_mount_group: String::new(),
        })
    };
    Some((
        csi.volume_handle.clone(),
        VolumeCapability {
            access_type: Some(access_type),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        },
    ))
}
