//! Add-ons that Orrery runs for a tenant from the management cluster rather than inside it, so
//! that management credentials never enter the tenant: [`cloud`], the tenant's cloud controller.

pub mod cloud;
