//! The managed etcd: names and pure builders of its Secrets, Services and StatefulSet.

use super::{
    ETCD_CLIENT_PORT, ETCD_DEFAULT_IMAGE_TAG, ETCD_METRICS_PORT, ETCD_PEER_PORT,
    MANAGED_LEAF_VALIDITY,
};
use crate::Result;
use crate::api::{DataStore, ManagedDataStore};
use crate::apply::{DATASTORE_LABEL, child_labels, owner_reference};
use crate::pki::{self, CertProfile, CertUsage, KeyPairPem};
use crate::podspec::{field_env, restricted_container, restricted_pod};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Names of a managed DataStore's objects.
pub struct ManagedNames {
    pub base: String,
    pub namespace: String,
}

impl ManagedNames {
    pub fn new(ds: &DataStore, managed: &ManagedDataStore) -> Self {
        Self {
            base: format!("{}-etcd", ds.name_any()),
            namespace: managed.namespace.clone(),
        }
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.base)
    }
    pub fn server_secret(&self) -> String {
        format!("{}-server", self.base)
    }
    pub fn root_secret(&self) -> String {
        format!("{}-root-client", self.base)
    }
    /// Headless Service that gives members stable DNS names.
    pub fn peer_service(&self) -> String {
        self.base.clone()
    }
    pub fn client_service(&self) -> String {
        format!("{}-client", self.base)
    }
    pub fn client_endpoint(&self) -> String {
        format!(
            "https://{}.{}.svc:{ETCD_CLIENT_PORT}",
            self.client_service(),
            self.namespace
        )
    }
    fn member(&self, i: i32) -> String {
        format!("{}-{i}", self.base)
    }
    fn member_host(&self, i: i32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.member(i),
            self.peer_service(),
            self.namespace
        )
    }
}

// ------------------------------------------------------------------------------------------------
// Managed etcd: pure builders.

fn managed_meta(ds: &DataStore, names: &ManagedNames, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(child_labels(DATASTORE_LABEL, &ds.name_any(), "etcd")),
        owner_references: Some(vec![owner_reference(ds)]),
        ..Default::default()
    }
}

fn etcd_selector(ds: &DataStore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DATASTORE_LABEL.to_string(), ds.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            "etcd".to_string(),
        ),
    ])
}

/// DNS names the etcd server certificate must carry (members, peer and client Services).
pub fn server_dns_names(names: &ManagedNames, replicas: i32) -> Vec<String> {
    let ns = &names.namespace;
    let mut dns = Vec::new();
    for i in 0..replicas {
        dns.push(names.member_host(i));
        dns.push(format!("{}.{}.{ns}", names.member(i), names.peer_service()));
    }
    for svc in [names.client_service(), names.peer_service()] {
        dns.push(format!("{svc}.{ns}.svc"));
        dns.push(format!("{svc}.{ns}.svc.cluster.local"));
        dns.push(format!("{svc}.{ns}"));
    }
    dns.push("localhost".into());
    dns
}

/// The headless peer Service and the client Service.
pub fn managed_services(ds: &DataStore, names: &ManagedNames) -> [Service; 2] {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    [
        Service {
            metadata: managed_meta(ds, names, names.peer_service()),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                // Members must find each other before any is ready.
                publish_not_ready_addresses: Some(true),
                selector: Some(etcd_selector(ds)),
                ports: Some(vec![
                    port("client", ETCD_CLIENT_PORT),
                    port("peer", ETCD_PEER_PORT),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Service {
            metadata: managed_meta(ds, names, names.client_service()),
            spec: Some(ServiceSpec {
                selector: Some(etcd_selector(ds)),
                ports: Some(vec![port("client", ETCD_CLIENT_PORT)]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// etcd's volume mount of its server key pair and CA.
const PKI_DIR: &str = "/etc/etcd/pki";

/// The etcd StatefulSet of a managed DataStore.
pub fn managed_statefulset(
    ds: &DataStore,
    managed: &ManagedDataStore,
    names: &ManagedNames,
    pki_hash: &str,
) -> StatefulSet {
    StatefulSet {
        metadata: managed_meta(ds, names, names.base.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(managed.replicas),
            service_name: Some(names.peer_service()),
            // All members must start together to form the initial cluster.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(etcd_selector(ds)),
                ..Default::default()
            },
            template: etcd_pod_template(ds, managed, names, pki_hash),
            volume_claim_templates: Some(vec![data_claim(managed)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pods carry the hash of the PKI, so new certificates roll them.
fn etcd_pod_template(
    ds: &DataStore,
    managed: &ManagedDataStore,
    names: &ManagedNames,
    pki_hash: &str,
) -> PodTemplateSpec {
    let mut labels = child_labels(DATASTORE_LABEL, &ds.name_any(), "etcd");
    labels.extend(etcd_selector(ds));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "checksum.orrery.dev/pki".to_string(),
                pki_hash.to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(etcd_pod_spec(managed, names)),
    }
}

fn etcd_pod_spec(managed: &ManagedDataStore, names: &ManagedNames) -> PodSpec {
    let sched = &managed.scheduling;
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        node_selector: (!sched.node_selector.is_empty()).then(|| sched.node_selector.clone()),
        tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
        affinity: sched.affinity.clone(),
        topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
            .then(|| sched.topology_spread_constraints.clone()),
        priority_class_name: sched.priority_class_name.clone(),
        security_context: Some(restricted_pod()),
        containers: vec![etcd_container(managed, names)],
        volumes: Some(vec![Volume {
            name: "pki".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.server_secret()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// etcd flags: members find each other through the peer Service, every client and peer shows a
/// certificate of the DataStore's CA.
fn etcd_args(names: &ManagedNames, replicas: i32) -> Vec<String> {
    let initial_cluster: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "{}=https://{}:{ETCD_PEER_PORT}",
                names.member(i),
                names.member_host(i)
            )
        })
        .collect();
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.peer_service(),
        names.namespace
    );
    vec![
        "--name=$(POD_NAME)".to_string(),
        "--data-dir=/var/lib/etcd/data".into(),
        format!("--listen-client-urls=https://0.0.0.0:{ETCD_CLIENT_PORT}"),
        format!("--advertise-client-urls=https://{host}:{ETCD_CLIENT_PORT}"),
        format!("--listen-peer-urls=https://0.0.0.0:{ETCD_PEER_PORT}"),
        format!("--initial-advertise-peer-urls=https://{host}:{ETCD_PEER_PORT}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}"),
        format!("--initial-cluster={}", initial_cluster.join(",")),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token={}", names.base),
        "--client-cert-auth=true".into(),
        format!("--trusted-ca-file={PKI_DIR}/ca.crt"),
        format!("--cert-file={PKI_DIR}/tls.crt"),
        format!("--key-file={PKI_DIR}/tls.key"),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-trusted-ca-file={PKI_DIR}/ca.crt"),
        format!("--peer-cert-file={PKI_DIR}/tls.crt"),
        format!("--peer-key-file={PKI_DIR}/tls.key"),
        // Tenants may not compact (their users are limited to a prefix); etcd does it itself.
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=5m".into(),
    ]
}

/// Health checks on the plain-HTTP metrics listener.
fn etcd_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ETCD_METRICS_PORT),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

fn etcd_container(managed: &ManagedDataStore, names: &ManagedNames) -> Container {
    let image = managed
        .image
        .clone()
        .unwrap_or_else(|| format!("registry.k8s.io/etcd:{ETCD_DEFAULT_IMAGE_TAG}"));
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        ..Default::default()
    };
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity("100m".into())),
        ("memory".to_string(), Quantity("256Mi".into())),
    ]);
    Container {
        name: "etcd".into(),
        image: Some(image),
        command: Some(vec!["etcd".into()]),
        args: Some(etcd_args(names, managed.replicas)),
        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
        ports: Some(vec![
            port("client", ETCD_CLIENT_PORT),
            port("peer", ETCD_PEER_PORT),
            port("metrics", ETCD_METRICS_PORT),
        ]),
        startup_probe: Some(etcd_probe("/readyz", 2, 90)),
        liveness_probe: Some(etcd_probe("/livez", 10, 6)),
        readiness_probe: Some(etcd_probe("/readyz", 5, 3)),
        resources: Some(managed.resources.clone().unwrap_or(ResourceRequirements {
            requests: Some(requests),
            ..Default::default()
        })),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/var/lib/etcd".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "pki".into(),
                mount_path: PKI_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Each member's data volume.
fn data_claim(managed: &ManagedDataStore) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: managed.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(managed.storage_size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn string_data(map: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    map.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect()
}

fn secret(meta: ObjectMeta, data: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta,
        data: Some(string_data(data)),
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    }
}

fn pem_pair(kp: &KeyPairPem, ca: &KeyPairPem) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tls.crt".to_string(), kp.cert.clone()),
        ("tls.key".to_string(), kp.key.clone()),
        ("ca.crt".to_string(), ca.cert.clone()),
    ])
}

/// The key pairs a managed etcd has now (read from its Secrets).
#[derive(Clone, Debug, Default)]
pub struct ManagedPki {
    pub ca: Option<KeyPairPem>,
    pub server: Option<KeyPairPem>,
    pub root: Option<KeyPairPem>,
}

/// Everything Orrery keeps for a managed etcd, in the order it is applied.
pub struct ManagedObjects {
    pub secrets: Vec<Secret>,
    pub services: [Service; 2],
    pub statefulset: StatefulSet,
}

/// Builds the managed etcd's Secrets, Services and StatefulSet. The CA is made once and never
/// replaced; the server and root certificates are kept while valid.
pub fn managed_objects(
    ds: &DataStore,
    managed: &ManagedDataStore,
    current: ManagedPki,
    now: SystemTime,
) -> Result<ManagedObjects> {
    let names = ManagedNames::new(ds, managed);
    let ca = match current.ca {
        Some(ca) => ca,
        None => pki::generate_ca(&format!("{} etcd CA", ds.name_any()), pki::CA_VALIDITY)?,
    };
    let server_profile = CertProfile {
        common_name: names.base.clone(),
        organizations: Vec::new(),
        dns_names: server_dns_names(&names, managed.replicas),
        ip_addresses: vec!["127.0.0.1".parse().expect("literal IP")],
        usage: CertUsage::ServerAndClient,
        validity: MANAGED_LEAF_VALIDITY,
    };
    let server = pki::keep_or_issue(current.server, &ca, &server_profile, now)?;
    let root_profile = CertProfile::client("root", &[], MANAGED_LEAF_VALIDITY);
    let root = pki::keep_or_issue(current.root, &ca, &root_profile, now)?;
    let ca_data = BTreeMap::from([
        ("tls.crt".to_string(), ca.cert.clone()),
        ("tls.key".to_string(), ca.key.clone()),
    ]);
    let pki_hash = crate::hash::of_strings(&[server.cert.clone(), ca.cert.clone()]);
    Ok(ManagedObjects {
        secrets: vec![
            secret(managed_meta(ds, &names, names.ca_secret()), &ca_data),
            secret(
                managed_meta(ds, &names, names.server_secret()),
                &pem_pair(&server, &ca),
            ),
            secret(
                managed_meta(ds, &names, names.root_secret()),
                &pem_pair(&root, &ca),
            ),
        ],
        services: managed_services(ds, &names),
        statefulset: managed_statefulset(ds, managed, &names, &pki_hash),
    })
}
