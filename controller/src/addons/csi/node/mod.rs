//! The CSI Node service, run on each tenant worker by `orrery-csi-node`: it finds a volume's disk
//! by its serial (the volume id), makes a filesystem on a new disk, mounts it at the staging
//! path, and bind-mounts it (or the raw device) where a pod uses it.
//!
//! One job a module: [`device`] finds disks, [`mount`] reads and changes the mount table,
//! [`format`] runs blkid, mkfs and the grow tools, [`registration`] answers the kubelet's plugin
//! watcher; [`serve`] puts the services on their sockets.
//!
//! Every call is idempotent, and one volume has one call at a time: a second call while the
//! first runs is ABORTED, as the CSI spec suggests, and the kubelet retries it.

pub mod device;
pub mod format;
pub mod mount;
pub mod registration;

use super::busy::Busy;
use super::capability::{self, Access, Capability};
use super::identity::IdentityService;
use super::ids;
use super::proto::csi::identity_server::IdentityServer;
use super::proto::csi::node_server::{Node, NodeServer};
use super::proto::csi::node_service_capability::{self, rpc};
use super::proto::csi::volume_usage::Unit;
use super::proto::csi::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, VolumeUsage,
};
use super::proto::registration::registration_server::RegistrationServer;
use super::socket;
use device::Device;
use format::Content;
use mount::MountOptions;
use registration::{RegistrationOptions, RegistrationService};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// Where udev links disks by their serial.
pub const DEFAULT_DEVICE_DIR: &str = "/dev/disk/by-id";

/// How the Node service runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id: the tenant Node's name.
    pub node_id: String,
    /// Where disks are linked by serial (`/dev/disk/by-id`; a test directory of links to loop
    /// devices in conformance tests).
    pub device_dir: PathBuf,
    /// How many volumes the node takes; 0 for no limit of the driver's own.
    pub max_volumes: i64,
    /// How long staging or publishing waits for a disk to appear.
    pub device_wait: Duration,
}

impl NodeOptions {
    /// Options for the node `node_id`, with the defaults for the rest.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            device_dir: DEFAULT_DEVICE_DIR.into(),
            max_volumes: 0,
            device_wait: device::DEFAULT_WAIT,
        }
    }
}

/// Serves CSI Identity and Node on `csi_socket` and, when given, the kubelet's plugin
/// registration on its own socket, until `shutdown` completes or the kubelet refuses the driver
/// (then an error, so that the pod restarts and registers again). Removes both sockets before it
/// returns: a registration socket left behind would keep the kubelet dialing a dead plugin.
pub async fn serve(
    csi_socket: &Path,
    registration: Option<RegistrationOptions>,
    opts: NodeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let refused = CancellationToken::new();
    tokio::spawn({
        let (stop, refused) = (stop.clone(), refused.clone());
        async move {
            tokio::select! {
                () = shutdown => {}
                () = refused.cancelled() => {}
                () = stop.cancelled() => {}
            }
            stop.cancel();
        }
    });

    let csi_incoming = socket::bind(csi_socket)?;
    let registration_incoming = match &registration {
        None => None,
        Some(r) => match socket::bind(&r.socket) {
            Ok(incoming) => Some(incoming),
            Err(e) => {
                remove_socket(csi_socket);
                stop.cancel();
                return Err(e);
            }
        },
    };
    info!(socket = %csi_socket.display(), node_id = %opts.node_id, "serving CSI Identity and Node");
    let csi = Server::builder()
        .add_service(IdentityServer::new(IdentityService))
        .add_service(NodeServer::new(NodeService::new(opts)))
        .serve_with_incoming_shutdown(csi_incoming, stop.clone().cancelled_owned());
    // When one server fails, the other stops too.
    let csi = async {
        let result = csi.await;
        stop.cancel();
        result.map_err(io::Error::other)
    };
    let kubelet = async {
        let (Some(r), Some(incoming)) = (&registration, registration_incoming) else {
            return Ok(());
        };
        info!(socket = %r.socket.display(), endpoint = %r.endpoint.display(), "serving plugin registration");
        let result = Server::builder()
            .add_service(RegistrationServer::new(RegistrationService::new(
                &r.endpoint,
                refused.clone(),
            )))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned())
            .await;
        stop.cancel();
        result.map_err(io::Error::other)
    };
    let (csi, kubelet) = tokio::join!(csi, kubelet);

    // Unregister first, so the kubelet stops dialing before the CSI socket goes.
    if let Some(r) = &registration {
        remove_socket(&r.socket);
    }
    remove_socket(csi_socket);
    csi?;
    kubelet?;
    if refused.is_cancelled() {
        return Err(io::Error::other(
            "the kubelet refused the driver's registration",
        ));
    }
    Ok(())
}

fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(socket = %path.display(), error = %e, "cannot remove the socket"),
    }
}

/// The CSI Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    opts: Arc<NodeOptions>,
    /// Volumes a call is working on.
    busy: Busy,
}

impl NodeService {
    pub fn new(opts: NodeOptions) -> Self {
        Self {
            opts: Arc::new(opts),
            busy: Busy::default(),
        }
    }

    /// Runs `work` on `volume_id` alone: ABORTED while another call works on it. The work runs in
    /// its own task, so a caller that gives up (a kubelet timeout) does not stop a mkfs or a
    /// mount halfway, and its retry waits for the end of the first.
    async fn exclusive<T: Send + 'static>(
        &self,
        volume_id: &str,
        work: impl Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        let claim = self.busy.claim(volume_id)?;
        tokio::spawn(async move {
            let result = work.await;
            drop(claim);
            result
        })
        .await
        .map_err(|e| Status::internal(format!("volume {volume_id}: {e}")))?
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = check_stage(request.get_ref())?;
        let id = req.volume_id.clone();
        self.exclusive(&id, stage(self.opts.clone(), req)).await?;
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = check_unstage(request.get_ref())?;
        let id = req.volume_id.clone();
        self.exclusive(&id, unstage(req)).await?;
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = check_publish(request.get_ref())?;
        let id = req.volume_id.clone();
        self.exclusive(&id, publish(self.opts.clone(), req)).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = check_unpublish(request.get_ref())?;
        let id = req.volume_id.clone();
        self.exclusive(&id, unpublish(req)).await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = check_stats(request.get_ref())?;
        let usage = stats(&self.opts, req).await?;
        Ok(Response::new(NodeGetVolumeStatsResponse { usage }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = check_expand(request.get_ref())?;
        let id = req.volume_id.clone();
        let capacity_bytes = self.exclusive(&id, expand(self.opts.clone(), req)).await?;
        Ok(Response::new(NodeExpandVolumeResponse { capacity_bytes }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let rpc = |t: rpc::Type| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(rpc::Type::StageUnstageVolume),
                rpc(rpc::Type::GetVolumeStats),
                rpc(rpc::Type::ExpandVolume),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.opts.node_id.clone(),
            max_volumes_per_node: self.opts.max_volumes,
        }))
    }
}

// ---- requests, checked (pure)

#[derive(Debug)]
struct Stage {
    volume_id: String,
    staging: PathBuf,
    capability: Capability,
}

#[derive(Debug)]
struct Unstage {
    volume_id: String,
    staging: PathBuf,
}

#[derive(Debug)]
struct Publish {
    volume_id: String,
    staging: PathBuf,
    target: PathBuf,
    capability: Capability,
    /// The request's `readonly` or a read-only access mode.
    read_only: bool,
}

#[derive(Debug)]
struct Unpublish {
    volume_id: String,
    target: PathBuf,
}

#[derive(Debug)]
struct Stats {
    volume_id: String,
    path: PathBuf,
}

#[derive(Debug)]
struct Expand {
    volume_id: String,
    path: PathBuf,
    capability: Option<Capability>,
    required_bytes: i64,
}

// Every field is checked before the id's form, so a request that lacks one is INVALID_ARGUMENT
// whatever its id (csi-sanity sends made-up ids with missing fields).

fn check_stage(req: &NodeStageVolumeRequest) -> Result<Stage, Status> {
    let volume_id = required("volume_id", &req.volume_id)?;
    let staging = absolute("staging_target_path", &req.staging_target_path)?;
    let capability = capability::parse("volume_capability", req.volume_capability.as_ref())?;
    known(volume_id)?;
    Ok(Stage {
        volume_id: volume_id.to_owned(),
        staging,
        capability,
    })
}

fn check_unstage(req: &NodeUnstageVolumeRequest) -> Result<Unstage, Status> {
    // No check of the id's form: unmounting what is there is right for any id.
    Ok(Unstage {
        volume_id: required("volume_id", &req.volume_id)?.to_owned(),
        staging: absolute("staging_target_path", &req.staging_target_path)?,
    })
}

fn check_publish(req: &NodePublishVolumeRequest) -> Result<Publish, Status> {
    let volume_id = required("volume_id", &req.volume_id)?;
    let target = absolute("target_path", &req.target_path)?;
    let capability = capability::parse("volume_capability", req.volume_capability.as_ref())?;
    // The node stages every volume (STAGE_UNSTAGE_VOLUME), so publishing needs the staging path.
    let staging = absolute("staging_target_path", &req.staging_target_path)?;
    known(volume_id)?;
    let read_only = req.readonly || capability.read_only;
    Ok(Publish {
        volume_id: volume_id.to_owned(),
        staging,
        target,
        capability,
        read_only,
    })
}

fn check_unpublish(req: &NodeUnpublishVolumeRequest) -> Result<Unpublish, Status> {
    Ok(Unpublish {
        volume_id: required("volume_id", &req.volume_id)?.to_owned(),
        target: absolute("target_path", &req.target_path)?,
    })
}

fn check_stats(req: &NodeGetVolumeStatsRequest) -> Result<Stats, Status> {
    let volume_id = required("volume_id", &req.volume_id)?;
    let path = required("volume_path", &req.volume_path)?;
    known(volume_id)?;
    Ok(Stats {
        volume_id: volume_id.to_owned(),
        path: path.into(),
    })
}

fn check_expand(req: &NodeExpandVolumeRequest) -> Result<Expand, Status> {
    let volume_id = required("volume_id", &req.volume_id)?;
    let path = required("volume_path", &req.volume_path)?;
    // Optional here: the kubelet sends it, csi-sanity does not.
    let capability = req
        .volume_capability
        .as_ref()
        .map(|c| capability::parse("volume_capability", Some(c)))
        .transpose()?;
    known(volume_id)?;
    Ok(Expand {
        volume_id: volume_id.to_owned(),
        path: path.into(),
        capability,
        required_bytes: req.capacity_range.as_ref().map_or(0, |r| r.required_bytes),
    })
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

fn absolute(field: &str, value: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(required(field, value)?);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{field} {value:?} is not an absolute path"
        )));
    }
    Ok(path)
}

/// NOT_FOUND for an id that cannot be one of ours, without looking for its disk.
fn known(volume_id: &str) -> Result<(), Status> {
    if ids::is_volume_id(volume_id) {
        return Ok(());
    }
    Err(Status::not_found(format!(
        "volume {volume_id:?} does not exist: volume ids of csi.orrery.dev are {} hex characters",
        ids::ID_LEN
    )))
}

/// Whether a mount found at a staging path is this volume as asked; ALREADY_EXISTS if the path
/// is taken by another disk or another way of mounting.
fn check_staged(
    found: &mount::MountInfo,
    device: &Device,
    fs_type: &str,
    read_only: bool,
) -> Result<(), Status> {
    let taken = |why: String| {
        Status::already_exists(format!(
            "staging_target_path {} is {why}",
            found.mount_point.display()
        ))
    };
    if found.device() != device.number {
        return Err(taken(format!(
            "already a mount of another device ({})",
            found.source
        )));
    }
    if found.fs_type != fs_type {
        return Err(taken(format!(
            "already staged as {}, not {fs_type}",
            found.fs_type
        )));
    }
    if found.read_only() != read_only {
        return Err(taken(format!(
            "already staged {}",
            if found.read_only() {
                "read-only"
            } else {
                "read-write"
            }
        )));
    }
    Ok(())
}

/// Whether a mount found at a target path is this volume as asked; ALREADY_EXISTS if not.
fn check_published(
    target: &Path,
    found_device: u64,
    found_read_only: bool,
    device: &Device,
    read_only: bool,
) -> Result<(), Status> {
    if found_device != device.number {
        return Err(Status::already_exists(format!(
            "target_path {} is already a mount of another volume",
            target.display()
        )));
    }
    if found_read_only != read_only {
        return Err(Status::already_exists(format!(
            "target_path {} is already published {}",
            target.display(),
            if found_read_only {
                "read-only"
            } else {
                "read-write"
            }
        )));
    }
    Ok(())
}

// ---- the work

async fn stage(opts: Arc<NodeOptions>, req: Stage) -> Result<(), Status> {
    let device = find_device(&opts, &req.volume_id, opts.device_wait).await?;
    let Access::Mount { fs_type, flags } = &req.capability.access else {
        // A raw device is published from where it is: nothing to prepare.
        return Ok(());
    };
    let read_only = req.capability.read_only;
    let staging = req.staging;
    std::fs::create_dir_all(&staging).map_err(io_error(format!(
        "creating staging_target_path {}",
        staging.display()
    )))?;
    match mount::mounted_at(&staging).map_err(io_error("reading the mount table".into()))? {
        Some(found) => check_staged(&found, &device, fs_type, read_only)?,
        None => {
            prepare_filesystem(&device, fs_type).await?;
            if !read_only {
                // The disk may have grown while detached (offline expansion).
                let size = device_size(&device)?;
                format::grow_unmounted(fs_type, &device.path, size)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            let options = MountOptions::parse(flags, read_only);
            let (source, target, fs) = (device.path.clone(), staging.clone(), fs_type.clone());
            blocking(
                format!("mounting {} at {}", source.display(), target.display()),
                move || mount::mount(&source, &target, &fs, &options),
            )
            .await?;
            info!(volume_id = %req.volume_id, device = %device.path.display(), staging = %staging.display(), "staged");
        }
    }
    if !read_only {
        // xfs grows only mounted; and an earlier stage may have mounted, then failed to grow.
        let size = device_size(&device)?;
        format::grow_mounted(fs_type, &device.path, &staging, size)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    Ok(())
}

/// Makes a filesystem on a new disk; leaves one of the right type; refuses anything else.
async fn prepare_filesystem(device: &Device, fs_type: &str) -> Result<(), Status> {
    let content = format::probe(&device.path)
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    match content {
        Content::Empty => {
            info!(device = %device.path.display(), fs_type, "making a filesystem on a new disk");
            format::make(&device.path, fs_type)
                .await
                .map_err(|e| Status::internal(e.to_string()))
        }
        Content::Filesystem(found) if found == fs_type => Ok(()),
        Content::Filesystem(found) => Err(Status::failed_precondition(format!(
            "the disk {} holds a {found} filesystem, not {fs_type}",
            device.path.display()
        ))),
        Content::Other(what) => Err(Status::failed_precondition(format!(
            "the disk {} holds {what}; not formatting over it",
            device.path.display()
        ))),
    }
}

async fn unstage(req: Unstage) -> Result<(), Status> {
    let staging = req.staging;
    blocking(format!("unmounting {}", staging.display()), move || {
        mount::unmount_all(&staging)
    })
    .await
}

async fn publish(opts: Arc<NodeOptions>, req: Publish) -> Result<(), Status> {
    let device = find_device(&opts, &req.volume_id, opts.device_wait).await?;
    let target = req.target.clone();
    let read_only = req.read_only;
    let found = mount::mounted_at(&target).map_err(io_error("reading the mount table".into()))?;
    if let Some(found) = found {
        // A block volume's mount is of the device node: its device is the node's st_rdev.
        let on = device::backing(&target).map_err(io_error(format!(
            "reading target_path {}",
            target.display()
        )))?;
        return check_published(&target, on, found.read_only(), &device, read_only);
    }
    let source = match req.capability.access {
        Access::Mount { .. } => {
            let staged = mount::mounted_at(&req.staging)
                .map_err(io_error("reading the mount table".into()))?
                .filter(|m| m.device() == device.number)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "volume {} is not staged at {}",
                        req.volume_id,
                        req.staging.display()
                    ))
                })?;
            std::fs::create_dir_all(&target).map_err(io_error(format!(
                "creating target_path {}",
                target.display()
            )))?;
            staged.mount_point
        }
        Access::Block => {
            create_file(&target).map_err(io_error(format!(
                "creating target_path {}",
                target.display()
            )))?;
            device.path.clone()
        }
    };
    let what = format!("bind-mounting {} at {}", source.display(), target.display());
    blocking(what, move || {
        mount::bind(&source, &target)?;
        if read_only && let Err(e) = mount::remount_read_only(&target) {
            // Never leave a writable mount where a read-only one was asked for.
            let _ = mount::unmount_all(&target);
            return Err(e);
        }
        Ok(())
    })
    .await?;
    info!(volume_id = %req.volume_id, target = %req.target.display(), read_only, "published");
    Ok(())
}

/// Creates the file a block volume is bind-mounted on, and its directories.
fn create_file(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn unpublish(req: Unpublish) -> Result<(), Status> {
    let target = req.target;
    blocking(format!("unpublishing {}", target.display()), move || {
        mount::unmount_all(&target)?;
        remove(&target)
    })
    .await
}

/// Removes a target path: the spec makes it the plugin's. `remove_dir` only takes an empty
/// directory, so a volume that failed to unmount never loses its files here.
fn remove(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

async fn stats(opts: &NodeOptions, req: Stats) -> Result<Vec<VolumeUsage>, Status> {
    let meta = volume_path(&req.path)?;
    let device = find_device(opts, &req.volume_id, Duration::ZERO).await?;
    ensure_at(&req.path, &device, &req.volume_id)?;
    if meta.file_type().is_block_device() {
        return Ok(vec![VolumeUsage {
            total: to_i64(device_size(&device)?),
            unit: Unit::Bytes as i32,
            ..Default::default()
        }]);
    }
    let path = req.path.clone();
    let u = blocking(format!("statvfs {}", req.path.display()), move || {
        mount::usage(&path)
    })
    .await?;
    Ok(vec![
        VolumeUsage {
            available: to_i64(u.bytes_available),
            total: to_i64(u.bytes_total),
            used: to_i64(u.bytes_used),
            unit: Unit::Bytes as i32,
        },
        VolumeUsage {
            available: to_i64(u.inodes_available),
            total: to_i64(u.inodes_total),
            used: to_i64(u.inodes_used),
            unit: Unit::Inodes as i32,
        },
    ])
}

async fn expand(opts: Arc<NodeOptions>, req: Expand) -> Result<i64, Status> {
    let meta = volume_path(&req.path)?;
    let device = find_device(&opts, &req.volume_id, Duration::ZERO).await?;
    let is_node = meta.file_type().is_block_device();
    let block = is_node || matches!(&req.capability, Some(c) if c.access == Access::Block);
    // A block volume's path may be the kubelet's staging directory, which holds nothing.
    if is_node || !block {
        ensure_at(&req.path, &device, &req.volume_id)?;
    }
    if !block {
        let content = format::probe(&device.path)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let Content::Filesystem(fs_type) = content else {
            return Err(Status::failed_precondition(format!(
                "the disk {} of volume {} holds no filesystem",
                device.path.display(),
                req.volume_id
            )));
        };
        format::grow_mounted(&fs_type, &device.path, &req.path, device_size(&device)?)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    let size = to_i64(device_size(&device)?);
    if size < req.required_bytes {
        // The disk has not grown (yet): report what it is, the resizer compares.
        warn!(volume_id = %req.volume_id, size, required = req.required_bytes, "the disk is smaller than asked");
    }
    Ok(size)
}

/// The metadata of a stats or expand request's path: NOT_FOUND when it does not exist.
fn volume_path(path: &Path) -> Result<std::fs::Metadata, Status> {
    let missing = || Status::not_found(format!("volume_path {} does not exist", path.display()));
    if !path.is_absolute() {
        return Err(missing());
    }
    match std::fs::metadata(path) {
        Ok(meta) => Ok(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(Status::internal(format!("reading {}: {e}", path.display()))),
    }
}

/// NOT_FOUND unless `path` is on `device` (or is it, for a block volume).
fn ensure_at(path: &Path, device: &Device, volume_id: &str) -> Result<(), Status> {
    let on = device::backing(path).map_err(io_error(format!("reading {}", path.display())))?;
    if on != device.number {
        return Err(Status::not_found(format!(
            "volume {volume_id} is not at {}",
            path.display()
        )));
    }
    Ok(())
}

async fn find_device(
    opts: &NodeOptions,
    volume_id: &str,
    wait: Duration,
) -> Result<Device, Status> {
    device::find(&opts.device_dir, volume_id, wait)
        .await
        .map_err(io_error(format!(
            "looking in {}",
            opts.device_dir.display()
        )))?
        .ok_or_else(|| {
            Status::not_found(format!(
                "volume {volume_id}: no disk with this serial in {} (is it attached to this node?)",
                opts.device_dir.display()
            ))
        })
}

fn device_size(device: &Device) -> Result<u64, Status> {
    device::size(&device.path).map_err(io_error(format!(
        "reading the size of {}",
        device.path.display()
    )))
}

/// A count as CSI carries it.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> Status {
    move |e| Status::internal(format!("{what}: {e}"))
}

/// Runs a call that may block (a mount, an unmount flushing a disk) off the async threads.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(io_error(what)),
        Err(e) => Err(Status::internal(format!("{what}: {e}"))),
    }
}

#[cfg(test)]
mod tests;
