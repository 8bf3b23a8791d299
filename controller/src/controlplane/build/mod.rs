//! The objects that make up a tenant control plane in the management cluster, built as pure
//! functions of the TenantControlPlane and what was resolved for it (no API calls here).
//!
//! One pod runs kube-apiserver, kube-controller-manager, kube-scheduler and, unless switched off,
//! a konnectivity-server sidecar that the apiserver reaches over a Unix socket in a shared
//! emptyDir (EgressSelectorConfiguration). Each container, with the volumes it brings, has its own
//! file; [`deployment()`] puts them in one pod.

pub mod apiserver;
mod container;
mod controller_manager;
mod deployment;
mod konnectivity_server;
mod scheduler;
mod volumes;

pub use deployment::deployment;

use crate::api::{ComponentSpec, TenantControlPlane, release_for};
use crate::apply::{TENANT_LABEL, child_labels, owner_reference};
use crate::config::ComponentConfig;
use crate::config::egress_selector::{EgressSelection, EgressSelectorConfiguration};
use crate::context::Settings;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Component label value of the control-plane pods and their Deployment / Service / PDB.
pub const COMPONENT: &str = "control-plane";
/// Port on which konnectivity-server accepts agents inside the pod.
pub const KONNECTIVITY_AGENT_PORT: i32 = 8132;
const KONNECTIVITY_ADMIN_PORT: i32 = 8133;
const KONNECTIVITY_HEALTH_PORT: i32 = 8134;
const CONTROLLER_MANAGER_PORT: i32 = 10257;
const SCHEDULER_PORT: i32 = 10259;

const PKI_DIR: &str = "/etc/kubernetes/pki";
const KUBECONFIG_DIR: &str = "/etc/kubernetes/kubeconfigs";
const CONFIG_DIR: &str = "/etc/kubernetes/config";
const UDS_DIR: &str = "/run/konnectivity";
const UDS_PATH: &str = "/run/konnectivity/konnectivity-server.socket";

/// Names of a tenant's children; all derive from the TenantControlPlane's name.
#[derive(Clone, Debug)]
pub struct Names {
    pub tenant: String,
}

impl Names {
    pub fn new(tcp: &TenantControlPlane) -> Self {
        Self {
            tenant: tcp.name_any(),
        }
    }
    /// Deployment, Service and PodDisruptionBudget share the tenant's name.
    pub fn workload(&self) -> String {
        self.tenant.clone()
    }
    pub fn ca(&self) -> String {
        format!("{}-ca", self.tenant)
    }
    pub fn front_proxy_ca(&self) -> String {
        format!("{}-front-proxy-ca", self.tenant)
    }
    pub fn service_account(&self) -> String {
        format!("{}-sa", self.tenant)
    }
    pub fn certs(&self) -> String {
        format!("{}-certs", self.tenant)
    }
    pub fn admin_kubeconfig(&self) -> String {
        format!("{}-admin-kubeconfig", self.tenant)
    }
    pub fn kubeconfigs(&self) -> String {
        format!("{}-kubeconfigs", self.tenant)
    }
    pub fn addon_kubeconfigs(&self) -> String {
        format!("{}-addon-kubeconfigs", self.tenant)
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.tenant)
    }
}

/// Images of the control-plane containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub api_server: String,
    pub controller_manager: String,
    pub scheduler: String,
    pub konnectivity_server: String,
}

/// The konnectivity release that goes with each supported Kubernetes minor version; a test
/// checks that every supported minor has one. v1.34 takes the release built against it; v1.36
/// and v1.37 the release whose client their apiserver is built with (v0.34.0, v0.36.0); v1.35
/// the first release after it.
pub const KONNECTIVITY_RELEASES: [(u32, &str); 4] = [
    (34, "v0.33.0"),
    (35, "v0.34.0"),
    (36, "v0.34.0"),
    (37, "v0.36.0"),
];

/// Upstream images for the tenant's version, unless the spec overrides them.
pub fn images(tcp: &TenantControlPlane, settings: &Settings) -> Images {
    let spec = &tcp.spec;
    let reg = settings.image_registry.trim_end_matches('/');
    let version = &spec.version;
    let pick = |c: &ComponentSpec, default: String| c.image.clone().unwrap_or(default);
    let cp = &spec.control_plane;
    Images {
        api_server: pick(&cp.api_server, format!("{reg}/kube-apiserver:{version}")),
        controller_manager: pick(
            &cp.controller_manager,
            format!("{reg}/kube-controller-manager:{version}"),
        ),
        scheduler: pick(&cp.scheduler, format!("{reg}/kube-scheduler:{version}")),
        konnectivity_server: pick(
            &cp.konnectivity_server,
            format!(
                "{reg}/kas-network-proxy/proxy-server:{}",
                release_for(&KONNECTIVITY_RELEASES, version)
            ),
        ),
    }
}

/// Everything the control-plane Deployment depends on besides the spec.
#[derive(Clone, Debug)]
pub struct DeploymentInputs {
    pub images: Images,
    /// etcd client URLs.
    pub datastore_endpoints: Vec<String>,
    /// This tenant's etcd key prefix, e.g. `/orrery/ns/name`.
    pub etcd_prefix: String,
    /// Address the apiserver advertises (the tenant's `kubernetes` Service endpoint), if known.
    pub advertise_address: Option<String>,
    /// Hash of each mounted Secret / ConfigMap, keyed by object name: a change rolls the pods.
    pub config_hashes: BTreeMap<String, String>,
}

fn meta(tcp: &TenantControlPlane, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: tcp.namespace(),
        labels: Some(child_labels(TENANT_LABEL, &tcp.name_any(), component)),
        owner_references: Some(vec![owner_reference(tcp)]),
        ..Default::default()
    }
}

/// Labels that select this tenant's control-plane pods.
pub fn selector_labels(tcp: &TenantControlPlane) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TENANT_LABEL.to_string(), tcp.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT.to_string(),
        ),
    ])
}

/// A Secret or ConfigMap child with the tenant's labels and owner.
pub fn child_meta(tcp: &TenantControlPlane, name: String, component: &str) -> ObjectMeta {
    meta(tcp, name, component)
}

/// The EgressSelectorConfiguration that sends the apiserver's cluster traffic (logs, exec,
/// port-forward, webhooks in the tenant) through konnectivity-server.
pub fn egress_selector_configuration() -> String {
    EgressSelectorConfiguration {
        egress_selections: vec![EgressSelection::grpc_over_uds("cluster", UDS_PATH)],
    }
    .to_yaml()
}

/// ConfigMap `<tcp>-config` with the egress selector configuration.
pub fn config_map(tcp: &TenantControlPlane) -> ConfigMap {
    ConfigMap {
        metadata: meta(tcp, Names::new(tcp).config(), COMPONENT),
        data: Some(BTreeMap::from([(
            "egress-selector-configuration.yaml".to_string(),
            egress_selector_configuration(),
        )])),
        ..Default::default()
    }
}

/// Service exposing the tenant apiserver and the konnectivity agent port.
pub fn service(tcp: &TenantControlPlane) -> Service {
    let net = &tcp.spec.network;
    let mut ports = vec![ServicePort {
        name: Some("kube-apiserver".into()),
        port: net.port,
        target_port: Some(IntOrString::Int(net.port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    if tcp.spec.addons.konnectivity.enabled {
        ports.push(ServicePort {
            name: Some("konnectivity".into()),
            port: net.konnectivity_port,
            target_port: Some(IntOrString::Int(KONNECTIVITY_AGENT_PORT)),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    Service {
        metadata: meta(tcp, Names::new(tcp).workload(), COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some(net.service_type.as_str().into()),
            selector: Some(selector_labels(tcp)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// PodDisruptionBudget: voluntary evictions take at most one control-plane pod at a time.
pub fn pod_disruption_budget(tcp: &TenantControlPlane) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(tcp, Names::new(tcp).workload(), COMPONENT),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(tcp)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
