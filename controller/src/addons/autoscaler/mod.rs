//! The cluster-autoscaler's node-group source: Orrery serves the upstream autoscaler's
//! `externalgrpc` cloud-provider API (`clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider`,
//! [`proto`]) over mutual TLS, and runs one upstream autoscaler per tenant that wants one.
//!
//! - Node groups are NodePools with `spec.autoscaling`, id `<namespace>/<pool>` ([`groups`]);
//!   their machines are the pools' VMs, provider ID `kubevirt://<vm>` ([`machines`]); a group at
//!   zero is described by a template Node ([`template`]). Sizes change through the NodePool's
//!   scale subresource; exactly the named nodes go through the delete annotation on their VMs.
//! - Callers are tenants: each tenant's autoscaler has a client certificate whose common name is
//!   `<namespace>/<name>` of its TenantControlPlane ([`identity`]), issued by the API's own CA
//!   ([`authority`]), and may touch only that tenant's pools.
//! - [`server`] serves the API in every replica of the operator ([`service`] reading the
//!   [`index`] of NodePools and VMs kept by watches); [`addon`] deploys each tenant's autoscaler
//!   ([`deploy`]) when `spec.addons.clusterAutoscaler.enabled`.

pub mod addon;
pub mod authority;
pub mod deploy;
pub mod groups;
pub mod identity;
pub mod index;
pub mod machines;
pub mod proto;
pub mod server;
pub mod service;
pub mod template;
#[cfg(test)]
mod tests;

pub use addon::run;

/// Where the operator serves the API, as tenants' autoscalers reach it: a Service in the
/// operator's namespace, whose port is the one the operator listens on. The API's CA and server
/// certificate live in that namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Name of the Service.
    pub service: String,
    /// Namespace of the Service and of the API's Secrets.
    pub namespace: String,
    pub port: u16,
}

impl ApiEndpoint {
    /// The host name autoscalers dial, and that the server certificate is checked against.
    pub fn host(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// `host:port`, the `address` of a cloud-config.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    /// Every name of the Service, for the server certificate.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::api::NodePool;

    /// NodePool `name` in `ns` of tenant `tenant`, with the rest of its spec from YAML.
    pub fn pool(ns: &str, name: &str, tenant: &str, spec: &str) -> NodePool {
        let mut spec: serde_json::Value = serde_yaml_ng::from_str(spec).unwrap();
        spec["controlPlaneRef"] = serde_json::json!({"name": tenant});
        let mut p = NodePool::new(name, serde_json::from_value(spec).unwrap());
        p.metadata.namespace = Some(ns.into());
        p
    }
}
