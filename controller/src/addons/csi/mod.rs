//! The tenant's CSI driver `csi.orrery.dev`: a tenant PersistentVolumeClaim becomes a
//! PersistentVolumeClaim in the tenant's management namespace, hot-plugged into the worker VM
//! that needs it.
//!
//! - [`identity`] and [`controller`]: the CSI Identity and Controller services. The controller
//!   side runs outside the tenant, over an [`infra::Infra`] that holds the disks;
//! - [`node`]: the Node service, run in the tenant on each worker (`orrery-csi-node`), with no
//!   credentials: it finds a disk by its serial (the volume id, [`ids`]), formats and mounts it,
//!   and registers itself with the kubelet;
//! - [`capability`]: what a volume can be (one node, ext4, xfs or a raw block device).

pub mod attachments;
pub mod busy;
pub mod capability;
pub mod claims;
pub mod controller;
pub mod identity;
pub mod ids;
pub mod infra;
pub mod kubevirt;
pub mod node;
pub mod proto;
pub mod resize;
pub mod runner;
pub mod socket;

/// The driver's name, as StorageClasses, CSIDriver and PersistentVolumes name it.
pub const DRIVER: &str = "csi.orrery.dev";

/// The driver's version: Orrery's.
pub const VENDOR_VERSION: &str = env!("CARGO_PKG_VERSION");
