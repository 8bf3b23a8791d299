//! NodePool: KubeVirt worker VMs that join a tenant cluster. `plan` decides, purely, which
//! machines to create and delete next (scale, rollout, remediation).

pub mod plan;
