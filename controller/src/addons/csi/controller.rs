//! The CSI Controller service over an [`Infra`]: the spec's rules (what is required, what is
//! idempotent, which error code says what) in one place, whatever holds the disks.

use super::busy::{Busy, Claim};
use super::capability;
use super::ids::{self, MIB};
use super::infra::{Disk, Infra, Progress};
use super::proto::csi::controller_server::Controller;
use super::proto::csi::controller_service_capability::{self, rpc};
use super::proto::csi::validate_volume_capabilities_response::Confirmed;
use super::proto::csi::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerPublishVolumeRequest, ControllerPublishVolumeResponse, ControllerServiceCapability,
    ControllerUnpublishVolumeRequest, ControllerUnpublishVolumeResponse, CreateVolumeRequest,
    CreateVolumeResponse, DeleteVolumeRequest, DeleteVolumeResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, Volume,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The key of the publish context that carries the disk's serial to the node.
pub const SERIAL_KEY: &str = "serial";

/// Sizes of volumes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The size of a volume whose request names none.
    pub default_bytes: i64,
    /// The largest volume.
    pub max_bytes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_bytes: 1 << 30,
            max_bytes: 1 << 40,
        }
    }
}

/// The Controller service of one tenant (`scope`, its uid, keeps its volume ids apart from
/// every other tenant's).
pub struct ControllerService<I> {
    infra: Arc<I>,
    scope: String,
    limits: Limits,
    busy: Busy,
}

impl<I: Infra> ControllerService<I> {
    pub fn new(infra: Arc<I>, scope: impl Into<String>, limits: Limits) -> Self {
        Self {
            infra,
            scope: scope.into(),
            limits,
            busy: Busy::default(),
        }
    }

    async fn create(&self, req: CreateVolumeRequest) -> Result<Volume, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        capability::parse_all("volume_capabilities", &req.volume_capabilities)?;
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume_content_source: volumes from snapshots or clones are not offered",
            ));
        }
        if let Some(key) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters.{key}: the driver takes no StorageClass parameters"
            )));
        }
        let capacity = capacity_for(req.capacity_range.as_ref(), self.limits)?;
        let id = ids::volume_id(&self.scope, &req.name);
        let _busy = self.claim(&id)?;
        let disk = match self.infra.disk(&id).await? {
            Some(disk) => {
                if disk.name != req.name {
                    return Err(Status::internal(format!(
                        "volume id {id} of {:?} is already the id of {:?}",
                        req.name, disk.name
                    )));
                }
                if !fits(disk.capacity, req.capacity_range.as_ref()) {
                    return Err(Status::already_exists(format!(
                        "volume {:?} exists with {} bytes, outside the requested range",
                        req.name, disk.capacity
                    )));
                }
                disk
            }
            None => self.infra.create(&id, &req.name, capacity).await?,
        };
        Ok(volume(&disk))
    }

    async fn delete(&self, req: DeleteVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &req.volume_id)?;
        // An id that cannot be ours names no volume, and deleting no volume succeeds.
        if !ids::is_volume_id(id) {
            return Ok(());
        }
        let _busy = self.claim(id)?;
        let Some(disk) = self.infra.disk(id).await? else {
            return Ok(());
        };
        if let Some(node) = disk.nodes.first() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is attached to node {node}: unpublish it first"
            )));
        }
        self.infra.delete(id).await
    }

    async fn publish(
        &self,
        req: ControllerPublishVolumeRequest,
    ) -> Result<BTreeMap<String, String>, Status> {
        let id = required("volume_id", &req.volume_id)?;
        let node = required("node_id", &req.node_id)?;
        capability::parse("volume_capability", req.volume_capability.as_ref())?;
        // Claimed before the disk is read: where it is attached must not change meanwhile.
        let _busy = self.claim(id)?;
        let disk = self.existing(id).await?;
        if !self.infra.node_exists(node).await? {
            return Err(Status::not_found(format!("node {node} is not known")));
        }
        if let Some(other) = disk.nodes.iter().find(|n| *n != node) {
            return Err(Status::failed_precondition(format!(
                "volume {id} is attached to node {other}; it attaches to one node at a time"
            )));
        }
        match self.infra.attach(id, node).await? {
            Progress::Done => Ok(BTreeMap::from([(SERIAL_KEY.to_owned(), id.to_owned())])),
            Progress::Pending(why) => Err(Status::unavailable(format!(
                "attaching volume {id} to node {node}: {why}"
            ))),
        }
    }

    async fn unpublish(&self, req: ControllerUnpublishVolumeRequest) -> Result<(), Status> {
        let id = required("volume_id", &req.volume_id)?;
        if !ids::is_volume_id(id) {
            return Ok(());
        }
        let _busy = self.claim(id)?;
        let Some(disk) = self.infra.disk(id).await? else {
            return Ok(());
        };
        // No node: detach from every node.
        let nodes: Vec<&String> = if req.node_id.is_empty() {
            disk.nodes.iter().collect()
        } else {
            vec![&req.node_id]
        };
        for node in nodes {
            if let Progress::Pending(why) = self.infra.detach(id, node).await? {
                return Err(Status::unavailable(format!(
                    "detaching volume {id} from node {node}: {why}"
                )));
            }
        }
        Ok(())
    }

    async fn validate(
        &self,
        req: ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse, Status> {
        let id = required("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        self.existing(id).await?;
        Ok(
            match capability::parse_all("volume_capabilities", &req.volume_capabilities) {
                Ok(_) => ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                    }),
                    message: String::new(),
                },
                Err(refused) => ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: refused.message().to_owned(),
                },
            },
        )
    }

    async fn expand(&self, req: ControllerExpandVolumeRequest) -> Result<(i64, bool), Status> {
        let id = required("volume_id", &req.volume_id)?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range is required"));
        };
        let capacity = capacity_for(Some(range), self.limits)?;
        let _busy = self.claim(id)?;
        let disk = self.existing(id).await?;
        // A block volume has no filesystem to grow on the node.
        let on_node = !matches!(
            capability::parse("volume_capability", req.volume_capability.as_ref()),
            Ok(capability::Capability {
                access: capability::Access::Block,
                ..
            })
        );
        // Asked for no more than it was given: done, attached or not. Asking again for the
        // same size of a detached disk asks the infrastructure whether it is done growing.
        if capacity < disk.capacity || (capacity == disk.capacity && !disk.nodes.is_empty()) {
            return Ok((disk.capacity, on_node));
        }
        if let Some(node) = disk.nodes.first() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is attached to node {node}: it grows while detached"
            )));
        }
        match self.infra.expand(id, capacity).await? {
            Progress::Done => Ok((capacity, on_node)),
            Progress::Pending(why) => Err(Status::unavailable(format!(
                "volume {id} is growing: {why}"
            ))),
        }
    }

    /// The disk `id`, or NOT_FOUND.
    async fn existing(&self, id: &str) -> Result<Disk, Status> {
        let found = if ids::is_volume_id(id) {
            self.infra.disk(id).await?
        } else {
            None
        };
        found.ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))
    }

    /// Marks `id` busy until the claim drops (see [`Busy`]).
    fn claim(&self, id: &str) -> Result<Claim, Status> {
        self.busy.claim(id)
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn volume(disk: &Disk) -> Volume {
    Volume {
        capacity_bytes: disk.capacity,
        volume_id: disk.id.clone(),
        volume_context: Default::default(),
    }
}

/// The size of a new volume: the request rounded up to a whole MiB, or the default size when
/// there is none (within the limit).
pub fn capacity_for(range: Option<&CapacityRange>, limits: Limits) -> Result<i64, Status> {
    let (required, limit) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if required < 0 || limit < 0 {
        return Err(Status::invalid_argument(
            "capacity_range: sizes cannot be negative",
        ));
    }
    if limit > 0 && limit < required {
        return Err(Status::invalid_argument(format!(
            "capacity_range: limit_bytes {limit} is below required_bytes {required}"
        )));
    }
    let wanted = match (required, limit) {
        (0, 0) => limits.default_bytes,
        (0, limit) => limits.default_bytes.min(limit),
        (required, _) => required,
    };
    let capacity = ids::round_up_mib(wanted).unwrap_or(i64::MAX);
    if limit > 0 && capacity > limit {
        return Err(Status::out_of_range(format!(
            "capacity_range: volumes come in whole MiB, and none lies between {required} and {limit} bytes"
        )));
    }
    if capacity > limits.max_bytes {
        return Err(Status::out_of_range(format!(
            "capacity_range: {capacity} bytes is more than the largest volume, {} bytes",
            limits.max_bytes
        )));
    }
    if capacity < MIB {
        return Err(Status::out_of_range(
            "capacity_range: the smallest volume is 1 MiB",
        ));
    }
    Ok(capacity)
}

/// Whether an existing volume of `capacity` bytes satisfies the range.
fn fits(capacity: i64, range: Option<&CapacityRange>) -> bool {
    range.is_none_or(|r| {
        capacity >= r.required_bytes && (r.limit_bytes == 0 || capacity <= r.limit_bytes)
    })
}

#[tonic::async_trait]
impl<I: Infra> Controller for ControllerService<I> {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let volume = self.create(req.into_inner()).await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        self.delete(req.into_inner()).await?;
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        let publish_context = self.publish(req.into_inner()).await?;
        Ok(Response::new(ControllerPublishVolumeResponse {
            publish_context: publish_context.into_iter().collect(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        self.unpublish(req.into_inner()).await?;
        Ok(Response::new(ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        Ok(Response::new(self.validate(req.into_inner()).await?))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let rpc = |t: rpc::Type| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(rpc::Type::CreateDeleteVolume),
                rpc(rpc::Type::PublishUnpublishVolume),
                rpc(rpc::Type::ExpandVolume),
            ],
        }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let (capacity_bytes, node_expansion_required) = self.expand(req.into_inner()).await?;
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes,
            node_expansion_required,
        }))
    }
}
