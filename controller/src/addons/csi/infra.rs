//! What holds the disks behind the driver's Controller service: in a tenant, PersistentVolumeClaims
//! in its management namespace hot-plugged into its worker VMs; in the conformance test, sparse
//! files on loop devices. The controller's CSI rules ([`super::controller`]) are the same over
//! both.

use std::collections::BTreeSet;
use tonic::Status;

/// A volume as the infrastructure holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The volume id, also the disk's serial.
    pub id: String,
    /// The CSI name it was created for (ids are hashes: a different name is a collision).
    pub name: String,
    /// Its size in bytes, as created or last expanded.
    pub capacity: i64,
    /// The node ids it is attached to, or being attached to.
    pub nodes: BTreeSet<String>,
}

/// Where an attach or a detach stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// Under way: asked again later. Says what it waits for.
    Pending(String),
}

/// The disks, and the nodes they attach to. Errors are the gRPC status the caller gets (for a
/// failing API call: UNAVAILABLE, so the caller retries).
#[tonic::async_trait]
pub trait Infra: Send + Sync + 'static {
    /// The disk with this id, if there is one.
    async fn disk(&self, id: &str) -> Result<Option<Disk>, Status>;
    /// Creates the disk `id` for the CSI volume `name`, of `capacity` bytes.
    async fn create(&self, id: &str, name: &str, capacity: i64) -> Result<Disk, Status>;
    /// Deletes a disk that is attached nowhere.
    async fn delete(&self, id: &str) -> Result<(), Status>;
    /// Whether `node` is a node the infrastructure can attach to.
    async fn node_exists(&self, node: &str) -> Result<bool, Status>;
    /// Attaches the disk to `node` (idempotent).
    async fn attach(&self, id: &str, node: &str) -> Result<Progress, Status>;
    /// Detaches the disk from `node` (idempotent; done when it was not attached).
    async fn detach(&self, id: &str, node: &str) -> Result<Progress, Status>;
    /// Grows a detached disk to `capacity` bytes (idempotent: done once it holds them).
    async fn expand(&self, id: &str, capacity: i64) -> Result<Progress, Status>;
}
