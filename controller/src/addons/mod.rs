//! Add-ons that Orrery runs for a tenant from the management cluster rather than inside it, so
//! that management credentials never enter the tenant: [`cloud`], the tenant's cloud controller,
//! and [`autoscaler`], the cluster-autoscaler's node-group API and each tenant's autoscaler;
//! [`health`] turns what they show into the tenant's `AddonsReady` condition.

pub mod autoscaler;
pub mod cloud;
pub mod csi;
pub mod health;
