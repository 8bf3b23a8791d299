//! The objects that make up a tenant control plane in the management cluster, built as pure
//! functions of the TenantControlPlane and what was resolved for it (no API calls here).
//!
//! One pod runs kube-apiserver, kube-controller-manager, kube-scheduler and, unless switched off,
//! a konnectivity-server sidecar that the apiserver reaches over a Unix socket in a shared
//! emptyDir (EgressSelectorConfiguration).

use crate::api::{ComponentSpec, TenantControlPlane};
use crate::apply::{TENANT_LABEL, child_labels, owner_reference};
use crate::context::Settings;
use crate::podspec::{field_env, restricted_container, restricted_pod};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, KeyToPath, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecretProjection, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeProjection, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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

/// The konnectivity release that goes with a Kubernetes minor version (as Kubernetes' own
/// manifests pair them).
fn konnectivity_version(minor: u32) -> &'static str {
    match minor {
        32 => "v0.31.2",
        33 => "v0.32.1",
        _ => "v0.33.0",
    }
}

/// Upstream images for the tenant's version, unless the spec overrides them.
pub fn images(tcp: &TenantControlPlane, settings: &Settings) -> Images {
    let spec = &tcp.spec;
    let reg = settings.image_registry.trim_end_matches('/');
    let version = &spec.version;
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(34);
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
                konnectivity_version(minor)
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
    format!(
        "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: GRPC\n    transport:\n      uds:\n        udsName: {UDS_PATH}\n"
    )
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

/// Flags as a sorted map so `extraArgs` can override Orrery's and the output is deterministic.
fn args(base: BTreeMap<&str, String>, extra: &BTreeMap<String, String>) -> Vec<String> {
    let mut all: BTreeMap<String, String> =
        base.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.into_iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

fn https_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some("HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn resources(spec: &ComponentSpec, cpu: &str, memory: &str) -> ResourceRequirements {
    spec.resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ])),
            ..Default::default()
        })
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn items(keys: &[(&str, &str)]) -> Option<Vec<KeyToPath>> {
    Some(
        keys.iter()
            .map(|(k, p)| KeyToPath {
                key: (*k).into(),
                path: (*p).into(),
                mode: None,
            })
            .collect(),
    )
}

fn secret_projection(name: String, keys: &[(&str, &str)]) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name,
            items: items(keys),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// A projected volume that gives one container exactly the files it needs, readable by the
/// pod's group only.
fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The control-plane Deployment.
pub fn deployment(tcp: &TenantControlPlane, inputs: &DeploymentInputs) -> Deployment {
    let spec = &tcp.spec;
    let names = Names::new(tcp);
    let net = &spec.network;
    let konnectivity = spec.addons.konnectivity.enabled;
    let port = net.port;
    let pki = |f: &str| format!("{PKI_DIR}/{f}");
    let kubeconfig = |f: &str| format!("{KUBECONFIG_DIR}/{f}");

    let mut apiserver_args = BTreeMap::from([
        ("allow-privileged", "true".to_string()),
        ("authorization-mode", "Node,RBAC".to_string()),
        ("bind-address", "0.0.0.0".to_string()),
        ("client-ca-file", pki("ca.crt")),
        ("enable-admission-plugins", "NodeRestriction".to_string()),
        ("enable-bootstrap-token-auth", "true".to_string()),
        ("etcd-cafile", pki("datastore-ca.crt")),
        ("etcd-certfile", pki("datastore-client.crt")),
        ("etcd-keyfile", pki("datastore-client.key")),
        // A tenant's etcd user may touch its own prefix only; compaction of a shared etcd is
        // the DataStore's job.
        ("etcd-compaction-interval", "0".to_string()),
        ("etcd-prefix", inputs.etcd_prefix.clone()),
        ("etcd-servers", inputs.datastore_endpoints.join(",")),
        (
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        ("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        (
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname".to_string(),
        ),
        ("proxy-client-cert-file", pki("front-proxy-client.crt")),
        ("proxy-client-key-file", pki("front-proxy-client.key")),
        (
            "requestheader-allowed-names",
            "front-proxy-client".to_string(),
        ),
        ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        (
            "requestheader-extra-headers-prefix",
            "X-Remote-Extra-".to_string(),
        ),
        ("requestheader-group-headers", "X-Remote-Group".to_string()),
        (
            "requestheader-username-headers",
            "X-Remote-User".to_string(),
        ),
        ("secure-port", port.to_string()),
        (
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", net.cluster_domain),
        ),
        ("service-account-key-file", pki("sa.pub")),
        ("service-account-signing-key-file", pki("sa.key")),
        ("service-cluster-ip-range", net.service_cidr.clone()),
        ("tls-cert-file", pki("apiserver.crt")),
        ("tls-private-key-file", pki("apiserver.key")),
    ]);
    if let Some(addr) = &inputs.advertise_address {
        apiserver_args.insert("advertise-address", addr.clone());
    }
    if konnectivity {
        apiserver_args.insert(
            "egress-selector-config-file",
            format!("{CONFIG_DIR}/egress-selector-configuration.yaml"),
        );
    }
    let cp = &spec.control_plane;
    let mut apiserver_mounts = vec![mount("apiserver-pki", PKI_DIR)];
    if konnectivity {
        apiserver_mounts.push(mount("config", CONFIG_DIR));
        apiserver_mounts.push(VolumeMount {
            name: "konnectivity-uds".into(),
            mount_path: UDS_DIR.into(),
            ..Default::default()
        });
    }
    let apiserver = Container {
        name: "kube-apiserver".into(),
        image: Some(inputs.images.api_server.clone()),
        command: Some(vec!["kube-apiserver".into()]),
        args: Some(args(apiserver_args, &cp.api_server.extra_args)),
        env: Some(vec![field_env("POD_IP", "status.podIP")]),
        ports: Some(vec![ContainerPort {
            name: Some("kube-apiserver".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        startup_probe: Some(https_probe("/livez", port, 2, 60)),
        liveness_probe: Some(https_probe("/livez", port, 10, 6)),
        readiness_probe: Some(https_probe("/readyz", port, 2, 3)),
        resources: Some(resources(&cp.api_server, "100m", "256Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(apiserver_mounts),
        ..Default::default()
    };

    let controller_manager = Container {
        name: "kube-controller-manager".into(),
        image: Some(inputs.images.controller_manager.clone()),
        command: Some(vec!["kube-controller-manager".into()]),
        args: Some(args(
            BTreeMap::from([
                ("allocate-node-cidrs", "true".to_string()),
                (
                    "authentication-kubeconfig",
                    kubeconfig("controller-manager.conf"),
                ),
                (
                    "authorization-kubeconfig",
                    kubeconfig("controller-manager.conf"),
                ),
                ("bind-address", "0.0.0.0".to_string()),
                ("client-ca-file", pki("ca.crt")),
                ("cluster-cidr", net.pod_cidr.clone()),
                ("cluster-name", tcp.name_any()),
                ("cluster-signing-cert-file", pki("ca.crt")),
                ("cluster-signing-key-file", pki("ca.key")),
                ("controllers", "*,bootstrapsigner,tokencleaner".to_string()),
                ("kubeconfig", kubeconfig("controller-manager.conf")),
                ("leader-elect", "true".to_string()),
                ("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
                ("root-ca-file", pki("ca.crt")),
                ("secure-port", CONTROLLER_MANAGER_PORT.to_string()),
                ("service-account-private-key-file", pki("sa.key")),
                ("service-cluster-ip-range", net.service_cidr.clone()),
                ("use-service-account-credentials", "true".to_string()),
            ]),
            &cp.controller_manager.extra_args,
        )),
        startup_probe: Some(https_probe("/healthz", CONTROLLER_MANAGER_PORT, 2, 60)),
        liveness_probe: Some(https_probe("/healthz", CONTROLLER_MANAGER_PORT, 10, 6)),
        resources: Some(resources(&cp.controller_manager, "50m", "64Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("controller-manager-pki", PKI_DIR),
            mount("controller-manager-kubeconfig", KUBECONFIG_DIR),
        ]),
        ..Default::default()
    };

    let scheduler = Container {
        name: "kube-scheduler".into(),
        image: Some(inputs.images.scheduler.clone()),
        command: Some(vec!["kube-scheduler".into()]),
        args: Some(args(
            BTreeMap::from([
                ("authentication-kubeconfig", kubeconfig("scheduler.conf")),
                ("authorization-kubeconfig", kubeconfig("scheduler.conf")),
                ("bind-address", "0.0.0.0".to_string()),
                ("kubeconfig", kubeconfig("scheduler.conf")),
                ("leader-elect", "true".to_string()),
                ("secure-port", SCHEDULER_PORT.to_string()),
            ]),
            &cp.scheduler.extra_args,
        )),
        startup_probe: Some(https_probe("/healthz", SCHEDULER_PORT, 2, 60)),
        liveness_probe: Some(https_probe("/healthz", SCHEDULER_PORT, 10, 6)),
        resources: Some(resources(&cp.scheduler, "20m", "32Mi")),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![mount("scheduler-kubeconfig", KUBECONFIG_DIR)]),
        ..Default::default()
    };

    let mut containers = vec![apiserver, controller_manager, scheduler];
    let mut volumes = vec![
        projected(
            "apiserver-pki",
            vec![
                secret_projection(
                    names.certs(),
                    &[
                        ("ca.crt", "ca.crt"),
                        ("front-proxy-ca.crt", "front-proxy-ca.crt"),
                        ("datastore-ca.crt", "datastore-ca.crt"),
                        ("apiserver.crt", "apiserver.crt"),
                        ("apiserver.key", "apiserver.key"),
                        (
                            "apiserver-kubelet-client.crt",
                            "apiserver-kubelet-client.crt",
                        ),
                        (
                            "apiserver-kubelet-client.key",
                            "apiserver-kubelet-client.key",
                        ),
                        ("front-proxy-client.crt", "front-proxy-client.crt"),
                        ("front-proxy-client.key", "front-proxy-client.key"),
                        ("datastore-client.crt", "datastore-client.crt"),
                        ("datastore-client.key", "datastore-client.key"),
                    ],
                ),
                secret_projection(
                    names.service_account(),
                    &[("sa.key", "sa.key"), ("sa.pub", "sa.pub")],
                ),
            ],
        ),
        projected(
            "controller-manager-pki",
            vec![
                secret_projection(names.ca(), &[("tls.crt", "ca.crt"), ("tls.key", "ca.key")]),
                secret_projection(
                    names.certs(),
                    &[("front-proxy-ca.crt", "front-proxy-ca.crt")],
                ),
                secret_projection(names.service_account(), &[("sa.key", "sa.key")]),
            ],
        ),
        projected(
            "controller-manager-kubeconfig",
            vec![secret_projection(
                names.kubeconfigs(),
                &[("controller-manager.conf", "controller-manager.conf")],
            )],
        ),
        projected(
            "scheduler-kubeconfig",
            vec![secret_projection(
                names.kubeconfigs(),
                &[("scheduler.conf", "scheduler.conf")],
            )],
        ),
    ];

    if konnectivity {
        containers.push(Container {
            name: "konnectivity-server".into(),
            image: Some(inputs.images.konnectivity_server.clone()),
            command: Some(vec!["/proxy-server".into()]),
            args: Some(args(
                BTreeMap::from([
                    ("admin-port", KONNECTIVITY_ADMIN_PORT.to_string()),
                    ("agent-namespace", "kube-system".to_string()),
                    ("agent-port", KONNECTIVITY_AGENT_PORT.to_string()),
                    ("agent-service-account", "konnectivity-agent".to_string()),
                    (
                        "authentication-audience",
                        "system:konnectivity-server".to_string(),
                    ),
                    ("cluster-cert", pki("apiserver.crt")),
                    ("cluster-key", pki("apiserver.key")),
                    ("delete-existing-uds-file", "true".to_string()),
                    ("health-port", KONNECTIVITY_HEALTH_PORT.to_string()),
                    ("kubeconfig", kubeconfig("konnectivity-server.conf")),
                    ("mode", "grpc".to_string()),
                    ("proxy-strategies", "destHost,default".to_string()),
                    ("server-count", spec.replicas.to_string()),
                    ("server-port", "0".to_string()),
                    ("uds-name", UDS_PATH.to_string()),
                ]),
                &cp.konnectivity_server.extra_args,
            )),
            ports: Some(vec![ContainerPort {
                name: Some("konnectivity".into()),
                container_port: KONNECTIVITY_AGENT_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            liveness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/healthz".into()),
                    port: IntOrString::Int(KONNECTIVITY_HEALTH_PORT),
                    scheme: Some("HTTP".into()),
                    ..Default::default()
                }),
                period_seconds: Some(10),
                failure_threshold: Some(6),
                ..Default::default()
            }),
            resources: Some(resources(&cp.konnectivity_server, "20m", "32Mi")),
            security_context: Some(restricted_container()),
            volume_mounts: Some(vec![
                mount("konnectivity-pki", PKI_DIR),
                mount("konnectivity-kubeconfig", KUBECONFIG_DIR),
                VolumeMount {
                    name: "konnectivity-uds".into(),
                    mount_path: UDS_DIR.into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        volumes.push(projected(
            "konnectivity-pki",
            vec![secret_projection(
                names.certs(),
                &[
                    ("apiserver.crt", "apiserver.crt"),
                    ("apiserver.key", "apiserver.key"),
                ],
            )],
        ));
        volumes.push(projected(
            "konnectivity-kubeconfig",
            vec![secret_projection(
                names.kubeconfigs(),
                &[("konnectivity-server.conf", "konnectivity-server.conf")],
            )],
        ));
        volumes.push(empty_dir("konnectivity-uds"));
        volumes.push(Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let sched = &cp.scheduling;
    let affinity = sched
        .affinity
        .clone()
        .unwrap_or_else(|| k8s_openapi::api::core::v1::Affinity {
            // Spread replicas over nodes when the nodes allow it.
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(selector_labels(tcp)),
                                ..Default::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });

    let mut template_labels = child_labels(TENANT_LABEL, &tcp.name_any(), COMPONENT);
    template_labels.extend(selector_labels(tcp));
    let annotations: BTreeMap<String, String> = inputs
        .config_hashes
        .iter()
        .map(|(name, hash)| (format!("checksum.orrery.dev/{name}"), hash.clone()))
        .collect();

    Deployment {
        metadata: meta(tcp, names.workload(), COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(tcp)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // No management-cluster credentials in tenant pods.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    containers,
                    volumes: Some(volumes),
                    security_context: Some(restricted_pod()),
                    node_selector: (!sched.node_selector.is_empty())
                        .then(|| sched.node_selector.clone()),
                    tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
                    topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
                        .then(|| sched.topology_spread_constraints.clone()),
                    priority_class_name: sched.priority_class_name.clone(),
                    affinity: Some(affinity),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TenantControlPlaneSpec;

    fn tcp(yaml: &str) -> TenantControlPlane {
        let spec: TenantControlPlaneSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut tcp = TenantControlPlane::new("t1", spec);
        tcp.metadata.namespace = Some("ns1".into());
        tcp.metadata.uid = Some("uid-1".into());
        tcp
    }

    fn inputs(tcp: &TenantControlPlane) -> DeploymentInputs {
        DeploymentInputs {
            images: images(tcp, &Settings::default()),
            datastore_endpoints: vec!["https://etcd-0:2379".into(), "https://etcd-1:2379".into()],
            etcd_prefix: "/orrery/ns1/t1".into(),
            advertise_address: Some("10.96.0.20".into()),
            config_hashes: BTreeMap::from([("t1-certs".to_string(), "abc".to_string())]),
        }
    }

    fn container<'a>(d: &'a Deployment, name: &str) -> &'a Container {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn default_tenant_has_four_containers_wired_through_konnectivity() {
        let t = tcp("version: v1.34.4");
        let d = deployment(&t, &inputs(&t));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let names: Vec<_> = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "konnectivity-server"
            ]
        );
        let api = container(&d, "kube-apiserver");
        let args = api.args.as_ref().unwrap();
        assert!(args.contains(&"--egress-selector-config-file=/etc/kubernetes/config/egress-selector-configuration.yaml".into()));
        assert!(args.contains(&"--etcd-servers=https://etcd-0:2379,https://etcd-1:2379".into()));
        assert!(args.contains(&"--etcd-prefix=/orrery/ns1/t1".into()));
        assert!(args.contains(&"--advertise-address=10.96.0.20".into()));
        assert_eq!(
            api.image.as_deref(),
            Some("registry.k8s.io/kube-apiserver:v1.34.4")
        );
        let kcm = container(&d, "kube-controller-manager")
            .args
            .as_ref()
            .unwrap();
        assert!(kcm.contains(&"--controllers=*,bootstrapsigner,tokencleaner".into()));
        assert!(kcm.contains(&"--cluster-signing-key-file=/etc/kubernetes/pki/ca.key".into()));
        let konn = container(&d, "konnectivity-server").args.as_ref().unwrap();
        assert!(konn.contains(&"--uds-name=/run/konnectivity/konnectivity-server.socket".into()));
        assert!(konn.contains(&"--authentication-audience=system:konnectivity-server".into()));
        assert!(
            egress_selector_configuration()
                .contains("udsName: /run/konnectivity/konnectivity-server.socket")
        );
        // Probes.
        assert_eq!(
            api.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            api.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/livez")
        );
        let sched = container(&d, "kube-scheduler");
        assert_eq!(
            sched
                .liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        // The hash of each mounted object is in the template.
        let ann = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(
            ann.get("checksum.orrery.dev/t1-certs").map(String::as_str),
            Some("abc")
        );
    }

    #[test]
    fn pods_meet_restricted_and_carry_no_management_credentials() {
        let t = tcp("version: v1.34.4");
        let d = deployment(&t, &inputs(&t));
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in &pod.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
        // Only kube-controller-manager sees the CA key.
        let vols = pod.volumes.unwrap();
        let with_ca_key: Vec<_> = vols
            .iter()
            .filter(|v| {
                v.projected.as_ref().is_some_and(|p| {
                    p.sources.as_ref().unwrap().iter().any(|s| {
                        s.secret.as_ref().is_some_and(|s| {
                            s.items.as_ref().unwrap().iter().any(|i| i.path == "ca.key")
                        })
                    })
                })
            })
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(with_ca_key, ["controller-manager-pki"]);
    }

    #[test]
    fn konnectivity_off_removes_sidecar_port_and_egress() {
        let t = tcp("version: v1.34.4\naddons:\n  konnectivity:\n    enabled: false\n");
        let d = deployment(&t, &inputs(&t));
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 3);
        assert!(
            !container(&d, "kube-apiserver")
                .args
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a.contains("egress"))
        );
        assert_eq!(service(&t).spec.unwrap().ports.unwrap().len(), 1);
    }

    #[test]
    fn spec_settings_reach_the_objects() {
        let t = tcp(
            "version: v1.33.2\nreplicas: 3\nnetwork:\n  serviceType: LoadBalancer\n  port: 443\ncontrolPlane:\n  apiServer:\n    image: my/apiserver:1\n    extraArgs:\n      v: \"4\"\n      authorization-mode: RBAC\n  scheduling:\n    nodeSelector:\n      pool: cp\n",
        );
        let d = deployment(&t, &inputs(&t));
        let api = container(&d, "kube-apiserver");
        assert_eq!(api.image.as_deref(), Some("my/apiserver:1"));
        let args = api.args.as_ref().unwrap();
        assert!(args.contains(&"--v=4".into()));
        assert!(
            args.contains(&"--authorization-mode=RBAC".into()),
            "extraArgs override"
        );
        assert!(!args.contains(&"--authorization-mode=Node,RBAC".into()));
        assert!(args.contains(&"--secure-port=443".into()));
        assert_eq!(
            container(&d, "kube-scheduler").image.as_deref(),
            Some("registry.k8s.io/kube-scheduler:v1.33.2")
        );
        assert_eq!(
            container(&d, "konnectivity-server").image.as_deref(),
            Some("registry.k8s.io/kas-network-proxy/proxy-server:v0.32.1")
        );
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "cp");
        let svc = service(&t).spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.ports.unwrap()[0].port, 443);
        let pdb = pod_disruption_budget(&t).spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn children_are_labelled_and_owned() {
        let t = tcp("version: v1.34.4");
        for m in [
            service(&t).metadata,
            config_map(&t).metadata,
            pod_disruption_budget(&t).metadata,
        ] {
            assert_eq!(m.labels.as_ref().unwrap()[TENANT_LABEL], "t1");
            assert_eq!(m.owner_references.as_ref().unwrap()[0].uid, "uid-1");
            assert_eq!(
                m.owner_references.as_ref().unwrap()[0].controller,
                Some(true)
            );
        }
    }
}
