//! Bootstrap inside the tenant cluster: what `kubeadm init` leaves in a cluster so that nodes can
//! `kubeadm join` it, plus the add-ons (CoreDNS, kube-proxy, konnectivity-agent). Pure builders;
//! [`apply::apply_and_prune`] sends them to the tenant apiserver and removes what is no longer
//! wanted.

use crate::api::TenantControlPlane;
use crate::podspec::{field_env, restricted_container};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    HostPathVolumeSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The group kubeadm's default bootstrap tokens authenticate as.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers:kubeadm:default-node-token";
const KUBE_SYSTEM: &str = "kube-system";
const KUBE_PUBLIC: &str = "kube-public";
const COREDNS_VERSION: &str = "v1.12.1";
const KONNECTIVITY_AGENT_VERSION: &str = "v0.33.0";
const LABEL_MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "orrery");
/// Names the part of the tenant bootstrap an object belongs to (`bootstrap` or an add-on), so
/// objects of a part switched off can be found and removed.
pub const ADDON_LABEL: &str = "orrery.dev/addon";

pub mod apply;

/// Everything Orrery keeps inside one tenant cluster.
#[derive(Clone, Debug, Default)]
pub struct TenantObjects {
    pub config_maps: Vec<ConfigMap>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub deployments: Vec<Deployment>,
    pub daemon_sets: Vec<DaemonSet>,
    pub services: Vec<Service>,
}

/// Calls `$f` with the metadata of every object of `$o`.
macro_rules! each_meta {
    ($o:expr, $f:expr) => {{
        let f = $f;
        $o.config_maps.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.service_accounts
            .iter_mut()
            .for_each(|x| f(&mut x.metadata));
        $o.cluster_roles.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.cluster_role_bindings
            .iter_mut()
            .for_each(|x| f(&mut x.metadata));
        $o.roles.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.role_bindings.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.deployments.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.daemon_sets.iter_mut().for_each(|x| f(&mut x.metadata));
        $o.services.iter_mut().for_each(|x| f(&mut x.metadata));
    }};
}

impl TenantObjects {
    /// Labels every object as part of `addon`.
    fn labelled(mut self, addon: &str) -> Self {
        each_meta!(self, |m: &mut ObjectMeta| {
            m.labels
                .get_or_insert_with(Default::default)
                .insert(ADDON_LABEL.to_string(), addon.to_string());
        });
        self
    }

    /// Moves every object of `other` into `self`.
    fn extend(&mut self, other: TenantObjects) {
        self.config_maps.extend(other.config_maps);
        self.service_accounts.extend(other.service_accounts);
        self.cluster_roles.extend(other.cluster_roles);
        self.cluster_role_bindings
            .extend(other.cluster_role_bindings);
        self.roles.extend(other.roles);
        self.role_bindings.extend(other.role_bindings);
        self.deployments.extend(other.deployments);
        self.daemon_sets.extend(other.daemon_sets);
        self.services.extend(other.services);
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.config_maps.len()
            + self.service_accounts.len()
            + self.cluster_roles.len()
            + self.cluster_role_bindings.len()
            + self.roles.len()
            + self.role_bindings.len()
            + self.deployments.len()
            + self.daemon_sets.len()
            + self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the builders need besides the spec.
#[derive(Clone, Debug)]
pub struct BootstrapInputs {
    /// host:port of the tenant apiserver as nodes reach it.
    pub endpoint: String,
    /// PEM of the tenant cluster CA.
    pub ca_pem: String,
    /// Registry and path prefix of the add-on images.
    pub image_registry: String,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(BTreeMap::from([(
            LABEL_MANAGED.0.to_string(),
            LABEL_MANAGED.1.to_string(),
        )])),
        ..Default::default()
    }
}

fn group(name: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        name: name.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        namespace: None,
    }
}

fn user(name: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: name.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        namespace: None,
    }
}

fn service_account_subject(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    }
}

fn cluster_role_binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    }
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

fn role_with_binding(
    name: &str,
    namespace: &str,
    rules: Vec<PolicyRule>,
    subjects: Vec<Subject>,
) -> (Role, RoleBinding) {
    (
        Role {
            metadata: meta(name, Some(namespace)),
            rules: Some(rules),
        },
        RoleBinding {
            metadata: meta(name, Some(namespace)),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.into(),
            },
            subjects: Some(subjects),
        },
    )
}

/// The tenth address of the service CIDR, kubeadm's default for the DNS Service.
pub fn default_dns_ip(service_cidr: &str) -> Result<IpAddr> {
    let net: ipnet::IpNet = service_cidr
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|_| Error::Invalid {
            field: "spec.network.serviceCIDR".into(),
            reason: format!("{service_cidr} is not a CIDR"),
        })?;
    // kubeadm takes the network address plus ten.
    let too_small = || Error::Invalid {
        field: "spec.network.serviceCIDR".into(),
        reason: "is too small to hold a DNS Service IP".into(),
    };
    if net.hosts().nth(10).is_none() {
        return Err(too_small());
    }
    Ok(match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 10).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 10).into()),
    })
}

/// The `cluster-info` kubeconfig: the CA and the server, no credentials. The controller-manager's
/// bootstrapsigner adds a JWS signature per bootstrap token, which `kubeadm join` verifies.
pub fn cluster_info_kubeconfig(endpoint: &str, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://{endpoint}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n"
    )
}

/// Builds every object of the tenant bootstrap and the enabled add-ons.
pub fn build(tcp: &TenantControlPlane, inputs: &BootstrapInputs) -> Result<TenantObjects> {
    let spec = &tcp.spec;
    let net = &spec.network;
    let mut o = TenantObjects::default();
    let dns_ip = match &net.dns_service_ip {
        Some(ip) => ip.clone(),
        None => default_dns_ip(&net.service_cidr)?.to_string(),
    };
    let cluster_name = tcp.metadata.name.clone().unwrap_or_default();

    // kubeadm's view of the cluster, read by `kubeadm join`.
    let cluster_configuration = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nclusterName: {cluster_name}\nkubernetesVersion: {version}\ncontrolPlaneEndpoint: {endpoint}\ncertificatesDir: /etc/kubernetes/pki\nimageRepository: {registry}\nnetworking:\n  dnsDomain: {domain}\n  serviceSubnet: {svc}\n  podSubnet: {pod}\n",
        version = spec.version,
        endpoint = inputs.endpoint,
        registry = inputs.image_registry,
        domain = net.cluster_domain,
        svc = net.service_cidr,
        pod = net.pod_cidr,
    );
    let kubelet_configuration = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nauthentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\nauthorization:\n  mode: Webhook\ncgroupDriver: systemd\nclusterDNS:\n- {dns_ip}\nclusterDomain: {domain}\nrotateCertificates: true\nserverTLSBootstrap: false\nstaticPodPath: /etc/kubernetes/manifests\n",
        domain = net.cluster_domain,
    );
    let cm = |name: &str, ns: &str, data: BTreeMap<String, String>| ConfigMap {
        metadata: meta(name, Some(ns)),
        data: Some(data),
        ..Default::default()
    };
    o.config_maps.push(cm(
        "kubeadm-config",
        KUBE_SYSTEM,
        BTreeMap::from([("ClusterConfiguration".to_string(), cluster_configuration)]),
    ));
    o.config_maps.push(cm(
        "kubelet-config",
        KUBE_SYSTEM,
        BTreeMap::from([("kubelet".to_string(), kubelet_configuration)]),
    ));
    o.config_maps.push(cm(
        "cluster-info",
        KUBE_PUBLIC,
        BTreeMap::from([(
            "kubeconfig".to_string(),
            cluster_info_kubeconfig(&inputs.endpoint, &inputs.ca_pem),
        )]),
    ));

    // Bootstrap-token RBAC, as kubeadm sets it up.
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:kubelet-bootstrap",
        "system:node-bootstrapper",
        vec![group(BOOTSTRAPPERS)],
    ));
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:node-autoapprove-bootstrap",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        vec![group(BOOTSTRAPPERS)],
    ));
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:node-autoapprove-certificate-rotation",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        vec![group("system:nodes")],
    ));
    o.cluster_roles.push(ClusterRole {
        metadata: meta("kubeadm:get-nodes", None),
        rules: Some(vec![rule(&[""], &["nodes"], &[], &["get"])]),
        ..Default::default()
    });
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:get-nodes",
        "kubeadm:get-nodes",
        vec![group(BOOTSTRAPPERS)],
    ));
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:cluster-admins",
        "cluster-admin",
        vec![group("kubeadm:cluster-admins")],
    ));
    for (name, cm_name) in [
        ("kubeadm:nodes-kubeadm-config", "kubeadm-config"),
        ("kubeadm:kubelet-config", "kubelet-config"),
    ] {
        let (r, b) = role_with_binding(
            name,
            KUBE_SYSTEM,
            vec![rule(&[""], &["configmaps"], &[cm_name], &["get"])],
            vec![group(BOOTSTRAPPERS), group("system:nodes")],
        );
        o.roles.push(r);
        o.role_bindings.push(b);
    }
    // `kubeadm join` reads kube-proxy's component config with the bootstrap token.
    let (r, b) = role_with_binding(
        "kube-proxy",
        KUBE_SYSTEM,
        vec![rule(&[""], &["configmaps"], &["kube-proxy"], &["get"])],
        vec![group(BOOTSTRAPPERS)],
    );
    o.roles.push(r);
    o.role_bindings.push(b);
    let (r, b) = role_with_binding(
        "kubeadm:bootstrap-signer-clusterinfo",
        KUBE_PUBLIC,
        vec![rule(&[""], &["configmaps"], &["cluster-info"], &["get"])],
        vec![user("system:anonymous")],
    );
    o.roles.push(r);
    o.role_bindings.push(b);

    let mut o = o.labelled("bootstrap");
    let addons = &spec.addons;
    let registry = inputs.image_registry.trim_end_matches('/');
    if addons.core_dns.enabled {
        let image = addons
            .core_dns
            .image
            .clone()
            .unwrap_or_else(|| format!("{registry}/coredns/coredns:{COREDNS_VERSION}"));
        let mut part = TenantObjects::default();
        coredns(&mut part, &image, &dns_ip, &net.cluster_domain);
        o.extend(part.labelled("coredns"));
    }
    if addons.kube_proxy.enabled {
        let image = addons
            .kube_proxy
            .image
            .clone()
            .unwrap_or_else(|| format!("{registry}/kube-proxy:{}", spec.version));
        let mut part = TenantObjects::default();
        kube_proxy(&mut part, &image, &inputs.endpoint, &net.pod_cidr);
        o.extend(part.labelled("kube-proxy"));
    }
    if addons.konnectivity.enabled {
        let image = addons.konnectivity.image.clone().unwrap_or_else(|| {
            format!("{registry}/kas-network-proxy/proxy-agent:{KONNECTIVITY_AGENT_VERSION}")
        });
        let mut part = TenantObjects::default();
        konnectivity_agent(
            &mut part,
            &image,
            &inputs.endpoint,
            tcp.spec.network.konnectivity_port,
        );
        o.extend(part.labelled("konnectivity-agent"));
    }
    Ok(o)
}

fn k8s_app(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("k8s-app".to_string(), name.to_string())])
}

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        ..Default::default()
    }
}

/// A pod template whose pods carry `labels`.
fn template(labels: BTreeMap<String, String>, pod: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..Default::default()
        }),
        spec: Some(pod),
    }
}

fn coredns(o: &mut TenantObjects, image: &str, dns_ip: &str, domain: &str) {
    let corefile = format!(
        ".:53 {{\n    errors\n    health {{\n       lameduck 5s\n    }}\n    ready\n    kubernetes {domain} in-addr.arpa ip6.arpa {{\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }}\n    prometheus :9153\n    forward . /etc/resolv.conf {{\n       max_concurrent 1000\n    }}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n"
    );
    o.service_accounts.push(ServiceAccount {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    o.cluster_roles.push(ClusterRole {
        metadata: meta("system:coredns", None),
        rules: Some(vec![
            rule(
                &[""],
                &["endpoints", "services", "pods", "namespaces"],
                &[],
                &["list", "watch"],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &[],
                &["list", "watch"],
            ),
        ]),
        ..Default::default()
    });
    o.cluster_role_bindings.push(cluster_role_binding(
        "system:coredns",
        "system:coredns",
        vec![service_account_subject("coredns", KUBE_SYSTEM)],
    ));
    o.config_maps.push(ConfigMap {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([("Corefile".to_string(), corefile)])),
        ..Default::default()
    });
    let labels = k8s_app("kube-dns");
    let port = |name: &str, port: i32, protocol: &str| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    let mut security = restricted_container();
    // Binding port 53 needs this one capability.
    security.capabilities = Some(Capabilities {
        add: Some(vec!["NET_BIND_SERVICE".into()]),
        drop: Some(vec!["ALL".into()]),
    });
    o.deployments.push(Deployment {
        metadata: meta("coredns", Some(KUBE_SYSTEM)),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: selector(&labels),
            template: template(
                labels.clone(),
                PodSpec {
                    service_account_name: Some("coredns".into()),
                    priority_class_name: Some("system-cluster-critical".into()),
                    tolerations: Some(vec![Toleration {
                        key: Some("CriticalAddonsOnly".into()),
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    containers: vec![Container {
                        name: "coredns".into(),
                        image: Some(image.into()),
                        args: Some(vec!["-conf".into(), "/etc/coredns/Corefile".into()]),
                        ports: Some(vec![
                            port("dns", 53, "UDP"),
                            port("dns-tcp", 53, "TCP"),
                            port("metrics", 9153, "TCP"),
                        ]),
                        liveness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/health".into()),
                                port: IntOrString::Int(8080),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/ready".into()),
                                port: IntOrString::Int(8181),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        security_context: Some(security),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "config".into(),
                            mount_path: "/etc/coredns".into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "coredns".into(),
                            items: Some(vec![KeyToPath {
                                key: "Corefile".into(),
                                path: "Corefile".into(),
                                mode: None,
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    dns_policy: Some("Default".into()),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
    let svc_port = |name: &str, port: i32, protocol: &str| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    o.services.push(Service {
        metadata: meta("kube-dns", Some(KUBE_SYSTEM)),
        spec: Some(ServiceSpec {
            cluster_ip: Some(dns_ip.into()),
            selector: Some(labels),
            ports: Some(vec![
                svc_port("dns", 53, "UDP"),
                svc_port("dns-tcp", 53, "TCP"),
                svc_port("metrics", 9153, "TCP"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn kube_proxy(o: &mut TenantObjects, image: &str, endpoint: &str, pod_cidr: &str) {
    let config = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nbindAddress: 0.0.0.0\nclientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\nclusterCIDR: {pod_cidr}\nmode: iptables\n"
    );
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt\n    server: https://{endpoint}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    namespace: default\n    user: default\n  name: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n"
    );
    o.service_accounts.push(ServiceAccount {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    o.cluster_role_bindings.push(cluster_role_binding(
        "kubeadm:node-proxier",
        "system:node-proxier",
        vec![service_account_subject("kube-proxy", KUBE_SYSTEM)],
    ));
    o.config_maps.push(ConfigMap {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        data: Some(BTreeMap::from([
            ("config.conf".to_string(), config),
            ("kubeconfig.conf".to_string(), kubeconfig),
        ])),
        ..Default::default()
    });
    let labels = k8s_app("kube-proxy");
    let host_path = |name: &str, path: &str, type_: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    };
    o.daemon_sets.push(DaemonSet {
        metadata: meta("kube-proxy", Some(KUBE_SYSTEM)),
        spec: Some(DaemonSetSpec {
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    service_account_name: Some("kube-proxy".into()),
                    host_network: Some(true),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    node_selector: Some(BTreeMap::from([(
                        "kubernetes.io/os".to_string(),
                        "linux".to_string(),
                    )])),
                    containers: vec![Container {
                        name: "kube-proxy".into(),
                        image: Some(image.into()),
                        command: Some(vec![
                            "kube-proxy".into(),
                            "--config=/var/lib/kube-proxy/config.conf".into(),
                            "--hostname-override=$(NODE_NAME)".into(),
                        ]),
                        env: Some(vec![field_env("NODE_NAME", "spec.nodeName")]),
                        // kube-proxy programs the node's iptables: it is a privileged node agent.
                        security_context: Some(SecurityContext {
                            privileged: Some(true),
                            ..Default::default()
                        }),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "kube-proxy".into(),
                                mount_path: "/var/lib/kube-proxy".into(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "xtables-lock".into(),
                                mount_path: "/run/xtables.lock".into(),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "lib-modules".into(),
                                mount_path: "/lib/modules".into(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "kube-proxy".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: "kube-proxy".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        host_path("xtables-lock", "/run/xtables.lock", "FileOrCreate"),
                        host_path("lib-modules", "/lib/modules", ""),
                    ]),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn konnectivity_agent(o: &mut TenantObjects, image: &str, endpoint: &str, port: i32) {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    o.service_accounts.push(ServiceAccount {
        metadata: meta("konnectivity-agent", Some(KUBE_SYSTEM)),
        ..Default::default()
    });
    // konnectivity-server authenticates agents with TokenReview as this user.
    o.cluster_role_bindings.push(cluster_role_binding(
        "system:konnectivity-server",
        "system:auth-delegator",
        vec![user("system:konnectivity-server")],
    ));
    let labels = k8s_app("konnectivity-agent");
    let token_path = "/var/run/secrets/tokens";
    o.daemon_sets.push(DaemonSet {
        metadata: meta("konnectivity-agent", Some(KUBE_SYSTEM)),
        spec: Some(DaemonSetSpec {
            selector: selector(&labels),
            template: template(
                labels,
                PodSpec {
                    service_account_name: Some("konnectivity-agent".into()),
                    priority_class_name: Some("system-cluster-critical".into()),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "konnectivity-agent".into(),
                        image: Some(image.into()),
                        command: Some(vec!["/proxy-agent".into()]),
                        args: Some(vec![
                            "--logtostderr=true".into(),
                            "--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
                            format!("--proxy-server-host={host}"),
                            format!("--proxy-server-port={port}"),
                            "--admin-server-port=8133".into(),
                            "--health-server-port=8134".into(),
                            format!(
                                "--service-account-token-path={token_path}/konnectivity-agent-token"
                            ),
                            "--agent-identifiers=default-route=true".into(),
                        ]),
                        liveness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/healthz".into()),
                                port: IntOrString::Int(8134),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        security_context: Some(restricted_container()),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "konnectivity-agent-token".into(),
                            mount_path: token_path.into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "konnectivity-agent-token".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![VolumeProjection {
                                service_account_token: Some(ServiceAccountTokenProjection {
                                    path: "konnectivity-agent-token".into(),
                                    audience: Some("system:konnectivity-server".into()),
                                    expiration_seconds: Some(3600),
                                }),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(yaml: &str) -> TenantControlPlane {
        TenantControlPlane::new("t1", serde_yaml_ng::from_str(yaml).unwrap())
    }

    fn inputs() -> BootstrapInputs {
        BootstrapInputs {
            endpoint: "10.96.4.5:6443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            image_registry: "registry.k8s.io".into(),
        }
    }

    #[test]
    fn bootstrap_matches_what_kubeadm_join_needs() {
        let o = build(&tcp("version: v1.34.4"), &inputs()).unwrap();
        let cm = |name: &str| {
            o.config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        let info = cm("cluster-info");
        assert_eq!(info.metadata.namespace.as_deref(), Some("kube-public"));
        let kubeconfig = &info.data.as_ref().unwrap()["kubeconfig"];
        assert!(kubeconfig.contains("server: https://10.96.4.5:6443"));
        assert!(kubeconfig.contains("certificate-authority-data: LS0tLS1CRUdJTi"));
        assert!(
            cm("kubeadm-config").data.as_ref().unwrap()["ClusterConfiguration"]
                .contains("controlPlaneEndpoint: 10.96.4.5:6443")
        );
        assert!(cm("kubelet-config").data.as_ref().unwrap()["kubelet"].contains("- 10.96.0.10"));
        let crb = |name: &str| {
            o.cluster_role_bindings
                .iter()
                .find(|b| b.metadata.name.as_deref() == Some(name))
                .unwrap()
        };
        assert_eq!(
            crb("kubeadm:kubelet-bootstrap").role_ref.name,
            "system:node-bootstrapper"
        );
        assert_eq!(
            crb("kubeadm:node-autoapprove-bootstrap")
                .subjects
                .as_ref()
                .unwrap()[0]
                .name,
            BOOTSTRAPPERS
        );
        assert_eq!(
            crb("kubeadm:node-autoapprove-certificate-rotation")
                .subjects
                .as_ref()
                .unwrap()[0]
                .name,
            "system:nodes"
        );
        let anon = o
            .role_bindings
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some("kubeadm:bootstrap-signer-clusterinfo"))
            .unwrap();
        assert_eq!(anon.subjects.as_ref().unwrap()[0].name, "system:anonymous");
        // No wildcard anywhere in what Orrery grants inside the tenant.
        for r in o
            .cluster_roles
            .iter()
            .flat_map(|r| r.rules.iter().flatten())
            .chain(o.roles.iter().flat_map(|r| r.rules.iter().flatten()))
        {
            assert!(!r.verbs.iter().any(|v| v == "*"));
            assert!(!r.resources.iter().flatten().any(|v| v == "*"));
        }
    }

    #[test]
    fn addons_follow_the_spec() {
        let o = build(&tcp("version: v1.34.4"), &inputs()).unwrap();
        assert_eq!(o.deployments.len(), 1);
        assert_eq!(o.daemon_sets.len(), 2);
        let dns = &o.services[0];
        assert_eq!(
            dns.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
        let agent = o
            .daemon_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some("konnectivity-agent"))
            .unwrap();
        let pod = agent.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let args = pod.containers[0].args.as_ref().unwrap();
        assert!(args.contains(&"--proxy-server-host=10.96.4.5".to_string()));
        assert!(args.contains(&"--proxy-server-port=8132".to_string()));
        let token = pod.volumes.as_ref().unwrap()[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(
            token.audience.as_deref(),
            Some("system:konnectivity-server")
        );

        let off = build(
            &tcp("version: v1.34.4\nnetwork:\n  dnsServiceIP: 10.96.0.53\naddons:\n  coreDNS:\n    enabled: false\n  kubeProxy:\n    enabled: false\n  konnectivity:\n    enabled: false\n"),
            &inputs(),
        )
        .unwrap();
        assert!(
            off.deployments.is_empty() && off.daemon_sets.is_empty() && off.services.is_empty()
        );
        assert!(off.config_maps.iter().any(|c| {
            c.data
                .as_ref()
                .unwrap()
                .get("kubelet")
                .is_some_and(|k| k.contains("10.96.0.53"))
        }));
    }

    #[test]
    fn dns_ip_is_the_tenth_service_address() {
        assert_eq!(
            default_dns_ip("10.96.0.0/16").unwrap().to_string(),
            "10.96.0.10"
        );
        assert_eq!(
            default_dns_ip("fd00:10::/108").unwrap().to_string(),
            "fd00:10::a"
        );
        assert!(default_dns_ip("10.0.0.0/30").is_err());
    }
}
