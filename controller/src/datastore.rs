//! DataStores: the etcd clusters that hold tenants' state.
//!
//! Every tenant gets its own key prefix and, on the shared etcd, its own user and role limited to
//! that prefix; its apiserver authenticates with a client certificate whose common name is that
//! user. Orrery itself talks to etcd as `root` to create and remove those users, roles and keys.
//!
//! The DataStore controller keeps `status.usedBy`, refuses deletion while tenants use the
//! DataStore (finalizer), and for `managed` DataStores builds and applies the etcd StatefulSet.

use crate::api::{DataStore, DataStoreStatus, ManagedDataStore, SecretKeyRef, TenantControlPlane};
use crate::apply::{DATASTORE_LABEL, apply, child_labels, owner_reference};
use crate::conditions;
use crate::context::Context;
use crate::pki::{self, CertProfile, CertUsage, KeyPairPem};
use crate::podspec::{field_env, restricted_container, restricted_pod};
use crate::{Error, Result};
use etcd_client::{
    Certificate, Client as EtcdClient, ConnectOptions, DeleteOptions, Identity, Permission,
    TlsOptions, UserAddOptions,
};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{info, instrument, warn};

/// A DataStore carrying this annotation set to "true" is used by tenants that name none.
pub const DEFAULT_ANNOTATION: &str = "orrery.dev/default-datastore";
/// Keeps a DataStore while tenants still use it.
pub const PROTECTION_FINALIZER: &str = "orrery.dev/datastore-protection";
const CONTROLLER: &str = "datastore";
const ETCD_CLIENT_PORT: i32 = 2379;
const ETCD_PEER_PORT: i32 = 2380;
const ETCD_METRICS_PORT: i32 = 2381;
const ETCD_DEFAULT_IMAGE_TAG: &str = "3.6.4-0";
/// Lifetime of the managed etcd's server and root certificates; renewed in the last third.
const MANAGED_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The etcd user (and role) of a tenant. Namespaces cannot contain '/', so this is unambiguous.
pub fn etcd_user(namespace: &str, name: &str) -> String {
    format!("orrery/{namespace}/{name}")
}

/// The apiserver's `--etcd-prefix` for a tenant. Its keys all start with this plus '/', which is
/// the prefix the tenant's role is limited to.
pub fn etcd_prefix(namespace: &str, name: &str) -> String {
    format!("/orrery/{namespace}/{name}")
}

fn role_prefix(namespace: &str, name: &str) -> String {
    format!("{}/", etcd_prefix(namespace, name))
}

/// How to reach a DataStore's etcd as root, and the CA that signs tenants' client certificates.
#[derive(Clone, Debug)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub ca: KeyPairPem,
    pub root: KeyPairPem,
}

impl Connection {
    fn fingerprint(&self) -> String {
        crate::hash::of_strings(&[
            self.endpoints.join(","),
            self.ca.cert.clone(),
            self.root.cert.clone(),
        ])
    }
}

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

async fn secret_key(client: &kube::Client, r: &SecretKeyRef, field: &str) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::Invalid {
            field: field.into(),
            reason: format!("Secret {}/{} does not exist", r.namespace, r.name),
        })?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .ok_or_else(|| Error::Invalid {
            field: field.into(),
            reason: format!("Secret {}/{} has no key {}", r.namespace, r.name, r.key),
        })?;
    String::from_utf8(value.0).map_err(|_| Error::Invalid {
        field: field.into(),
        reason: format!("key {} is not PEM text", r.key),
    })
}

async fn key_pair_from_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<KeyPairPem>> {
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    Ok(match (text("tls.crt"), text("tls.key")) {
        (Some(cert), Some(key)) => Some(KeyPairPem { cert, key }),
        _ => None,
    })
}

/// Reads what is needed to use `ds` as root.
pub async fn connection(client: &kube::Client, ds: &DataStore) -> Result<Connection> {
    if let Some(ext) = &ds.spec.external {
        let ca = &ext.certificate_authority;
        let root = &ext.root_client_certificate;
        return Ok(Connection {
            endpoints: ext.endpoints.clone(),
            ca: KeyPairPem {
                cert: secret_key(
                    client,
                    &ca.certificate,
                    "spec.external.certificateAuthority.certificate",
                )
                .await?,
                key: secret_key(
                    client,
                    &ca.private_key,
                    "spec.external.certificateAuthority.privateKey",
                )
                .await?,
            },
            root: KeyPairPem {
                cert: secret_key(
                    client,
                    &root.certificate,
                    "spec.external.rootClientCertificate.certificate",
                )
                .await?,
                key: secret_key(
                    client,
                    &root.private_key,
                    "spec.external.rootClientCertificate.privateKey",
                )
                .await?,
            },
        });
    }
    let managed = ds
        .spec
        .managed
        .as_ref()
        .expect("admission requires managed or external");
    let names = ManagedNames::new(ds, managed);
    let missing = |what: &str| {
        Error::DataStore(format!(
            "managed DataStore {} has no {what} yet",
            ds.name_any()
        ))
    };
    let ca = key_pair_from_secret(client, &names.namespace, &names.ca_secret())
        .await?
        .ok_or_else(|| missing("CA"))?;
    let root = key_pair_from_secret(client, &names.namespace, &names.root_secret())
        .await?
        .ok_or_else(|| missing("root client certificate"))?;
    Ok(Connection {
        endpoints: vec![names.client_endpoint()],
        ca,
        root,
    })
}

/// etcd clients, one per DataStore, so a reconcile does not pay a TLS handshake.
#[derive(Default)]
pub struct EtcdPool {
    clients: Mutex<HashMap<String, (String, EtcdClient)>>,
}

impl EtcdPool {
    /// A client for `ds` as root, reused while the connection details are unchanged.
    pub async fn client(&self, ds_name: &str, conn: &Connection) -> Result<EtcdClient> {
        let fingerprint = conn.fingerprint();
        if let Some((f, c)) = self.clients.lock().unwrap().get(ds_name)
            && *f == fingerprint
        {
            return Ok(c.clone());
        }
        let client = connect(conn).await?;
        self.clients
            .lock()
            .unwrap()
            .insert(ds_name.to_string(), (fingerprint, client.clone()));
        Ok(client)
    }

    /// Drops a client after an error so the next use reconnects.
    pub fn forget(&self, ds_name: &str) {
        self.clients.lock().unwrap().remove(ds_name);
    }
}

/// Connects to etcd with the root client certificate.
pub async fn connect(conn: &Connection) -> Result<EtcdClient> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&conn.ca.cert))
        .identity(Identity::from_pem(&conn.root.cert, &conn.root.key));
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    Ok(EtcdClient::connect(conn.endpoints.clone(), Some(opts)).await?)
}

fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("not found"))
}

/// Makes sure the tenant's role (read-write on its prefix only) and user exist. Reads first and
/// writes only what is missing, so a steady state costs no etcd writes.
pub async fn ensure_tenant(etcd: &mut EtcdClient, namespace: &str, name: &str) -> Result<()> {
    let user = etcd_user(namespace, name);
    let prefix = role_prefix(namespace, name);
    let wanted = Permission::read_write(prefix.as_bytes().to_vec()).with_prefix();
    match etcd.role_get(user.as_str()).await {
        Ok(role) => {
            if !role
                .permissions()
                .iter()
                .any(|p| p.key() == wanted.key() && p.range_end() == wanted.range_end())
            {
                etcd.role_grant_permission(user.as_str(), wanted).await?;
            }
        }
        Err(e) if is_not_found(&e) => {
            etcd.role_add(user.as_str()).await?;
            etcd.role_grant_permission(user.as_str(), wanted).await?;
        }
        Err(e) => return Err(e.into()),
    }
    match etcd.user_get(user.as_str()).await {
        Ok(u) => {
            if !u.roles().contains(&user) {
                etcd.user_grant_role(user.as_str(), user.as_str()).await?;
            }
        }
        Err(e) if is_not_found(&e) => {
            // Certificate authentication only: the user has no password.
            etcd.user_add(user.as_str(), "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
            etcd.user_grant_role(user.as_str(), user.as_str()).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Removes the tenant's keys, user and role, and nothing else.
pub async fn remove_tenant(etcd: &mut EtcdClient, namespace: &str, name: &str) -> Result<i64> {
    let user = etcd_user(namespace, name);
    let deleted = etcd
        .delete(
            role_prefix(namespace, name).into_bytes(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await?
        .deleted();
    for result in [
        etcd.user_delete(user.as_str()).await.map(|_| ()),
        etcd.role_delete(user.as_str()).await.map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Makes sure `root` can authenticate and etcd authentication is on (managed etcd starts with
/// it off). Idempotent.
pub async fn ensure_auth_enabled(etcd: &mut EtcdClient) -> Result<()> {
    let roles = match etcd.user_get("root").await {
        Ok(user) => user.roles().to_vec(),
        Err(e) if is_not_found(&e) => {
            etcd.user_add("root", "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if !roles.iter().any(|r| r == "root") {
        if let Err(e) = etcd.role_get("root").await {
            if !is_not_found(&e) {
                return Err(e.into());
            }
            etcd.role_add("root").await?;
        }
        etcd.user_grant_role("root", "root").await?;
    }
    // Enabling authentication twice is a no-op in etcd.
    etcd.auth_enable().await?;
    Ok(())
}

/// The DataStore a tenant uses: spec, else the one recorded in status, else the default one.
pub async fn resolve_name(client: &kube::Client, tcp: &TenantControlPlane) -> Result<String> {
    if let Some(name) = tcp
        .spec
        .data_store
        .clone()
        .or_else(|| tcp.status.as_ref().and_then(|s| s.data_store.clone()))
    {
        return Ok(name);
    }
    let all = Api::<DataStore>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let defaults: Vec<String> = all
        .items
        .iter()
        .filter(|ds| ds.annotations().get(DEFAULT_ANNOTATION).map(String::as_str) == Some("true"))
        .map(|ds| ds.name_any())
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Invalid {
            field: "spec.dataStore".into(),
            reason: format!("is unset and no DataStore is annotated {DEFAULT_ANNOTATION}=\"true\""),
        }),
        many => Err(Error::Invalid {
            field: "spec.dataStore".into(),
            reason: format!(
                "is unset and several DataStores are marked default: {}",
                many.join(", ")
            ),
        }),
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

/// The etcd StatefulSet of a managed DataStore.
pub fn managed_statefulset(
    ds: &DataStore,
    managed: &ManagedDataStore,
    names: &ManagedNames,
    pki_hash: &str,
) -> StatefulSet {
    let image = managed
        .image
        .clone()
        .unwrap_or_else(|| format!("registry.k8s.io/etcd:{ETCD_DEFAULT_IMAGE_TAG}"));
    let initial_cluster: Vec<String> = (0..managed.replicas)
        .map(|i| {
            format!(
                "{}=https://{}:{ETCD_PEER_PORT}",
                names.member(i),
                names.member_host(i)
            )
        })
        .collect();
    let pki = "/etc/etcd/pki";
    let sched = &managed.scheduling;
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.peer_service(),
        names.namespace
    );
    let args = vec![
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
        format!("--trusted-ca-file={pki}/ca.crt"),
        format!("--cert-file={pki}/tls.crt"),
        format!("--key-file={pki}/tls.key"),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-trusted-ca-file={pki}/ca.crt"),
        format!("--peer-cert-file={pki}/tls.crt"),
        format!("--peer-key-file={pki}/tls.key"),
        // Tenants may not compact (their users are limited to a prefix); etcd does it itself.
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=5m".into(),
    ];
    let probe = |path: &str, period: i32, failures: i32| Probe {
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
    };
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
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some({
                        let mut l = child_labels(DATASTORE_LABEL, &ds.name_any(), "etcd");
                        l.extend(etcd_selector(ds));
                        l
                    }),
                    annotations: Some(BTreeMap::from([(
                        "checksum.orrery.dev/pki".to_string(),
                        pki_hash.to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector: (!sched.node_selector.is_empty())
                        .then(|| sched.node_selector.clone()),
                    tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
                    affinity: sched.affinity.clone(),
                    topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
                        .then(|| sched.topology_spread_constraints.clone()),
                    priority_class_name: sched.priority_class_name.clone(),
                    security_context: Some(restricted_pod()),
                    containers: vec![Container {
                        name: "etcd".into(),
                        image: Some(image),
                        command: Some(vec!["etcd".into()]),
                        args: Some(args),
                        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("client".into()),
                                container_port: ETCD_CLIENT_PORT,
                                ..Default::default()
                            },
                            ContainerPort {
                                name: Some("peer".into()),
                                container_port: ETCD_PEER_PORT,
                                ..Default::default()
                            },
                            ContainerPort {
                                name: Some("metrics".into()),
                                container_port: ETCD_METRICS_PORT,
                                ..Default::default()
                            },
                        ]),
                        startup_probe: Some(probe("/readyz", 2, 90)),
                        liveness_probe: Some(probe("/livez", 10, 6)),
                        readiness_probe: Some(probe("/readyz", 5, 3)),
                        resources: Some(managed.resources.clone().unwrap_or_else(|| {
                            ResourceRequirements {
                                requests: Some(BTreeMap::from([
                                    ("cpu".to_string(), Quantity("100m".into())),
                                    ("memory".to_string(), Quantity("256Mi".into())),
                                ])),
                                ..Default::default()
                            }
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
                                mount_path: pki.into(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
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
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
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
            }]),
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

/// Keeps an existing key pair while it is valid for `profile`, otherwise issues a new one.
fn keep_or_issue(
    existing: Option<KeyPairPem>,
    ca: &KeyPairPem,
    profile: &CertProfile,
) -> Result<KeyPairPem> {
    let now = SystemTime::now();
    if let Some(kp) = existing
        && pki::is_valid_for(&kp, ca, profile, now)
    {
        return Ok(kp);
    }
    Ok(pki::issue(ca, profile, now)?)
}

/// Applies the managed etcd's CA, certificates, Services and StatefulSet.
async fn apply_managed(ctx: &Context, ds: &DataStore, managed: &ManagedDataStore) -> Result<()> {
    let client = &ctx.client;
    let names = ManagedNames::new(ds, managed);
    // The namespace is the user's to create (with the Pod Security level they want): Orrery
    // needs no right to create namespaces.
    if Api::<Namespace>::all(client.clone())
        .get_opt(&names.namespace)
        .await?
        .is_none()
    {
        return Err(Error::Invalid {
            field: "spec.managed.namespace".into(),
            reason: format!(
                "namespace {} does not exist; create it first",
                names.namespace
            ),
        });
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &names.namespace);
    // The CA is generated once and never replaced.
    let ca = match key_pair_from_secret(client, &names.namespace, &names.ca_secret()).await? {
        Some(ca) => ca,
        None => pki::generate_ca(&format!("{} etcd CA", ds.name_any()), pki::CA_VALIDITY)?,
    };
    let mut ca_data = BTreeMap::from([
        ("tls.crt".to_string(), ca.cert.clone()),
        ("tls.key".to_string(), ca.key.clone()),
    ]);
    apply(
        &secrets,
        &secret(managed_meta(ds, &names, names.ca_secret()), &ca_data),
    )
    .await?;
    ca_data.clear();

    let server_profile = CertProfile {
        common_name: names.base.clone(),
        organizations: Vec::new(),
        dns_names: server_dns_names(&names, managed.replicas),
        ip_addresses: vec!["127.0.0.1".parse().expect("literal IP")],
        usage: CertUsage::ServerAndClient,
        validity: MANAGED_LEAF_VALIDITY,
    };
    let server = keep_or_issue(
        key_pair_from_secret(client, &names.namespace, &names.server_secret()).await?,
        &ca,
        &server_profile,
    )?;
    let server_data = pem_pair(&server, &ca);
    apply(
        &secrets,
        &secret(
            managed_meta(ds, &names, names.server_secret()),
            &server_data,
        ),
    )
    .await?;
    let root_profile = CertProfile::client("root", &[], MANAGED_LEAF_VALIDITY);
    let root = keep_or_issue(
        key_pair_from_secret(client, &names.namespace, &names.root_secret()).await?,
        &ca,
        &root_profile,
    )?;
    apply(
        &secrets,
        &secret(
            managed_meta(ds, &names, names.root_secret()),
            &pem_pair(&root, &ca),
        ),
    )
    .await?;

    let services = Api::<Service>::namespaced(client.clone(), &names.namespace);
    for svc in managed_services(ds, &names) {
        apply(&services, &svc).await?;
    }
    let pki_hash = crate::hash::of_strings(&[server_data["tls.crt"].clone(), ca.cert.clone()]);
    let sts = managed_statefulset(ds, managed, &names, &pki_hash);
    apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &names.namespace),
        &sts,
    )
    .await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The DataStore controller.

fn tenants_using(all: &[TenantControlPlane], ds: &str) -> Vec<String> {
    let mut used: Vec<String> = all
        .iter()
        .filter(|t| {
            t.status.as_ref().and_then(|s| s.data_store.as_deref()) == Some(ds)
                || t.spec.data_store.as_deref() == Some(ds)
        })
        .map(|t| format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any()))
        .collect();
    used.sort();
    used
}

#[instrument(skip_all, fields(datastore = %ds.name_any()))]
async fn reconcile(ds: Arc<DataStore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let client = &ctx.client;
    let api = Api::<DataStore>::all(client.clone());
    let name = ds.name_any();
    let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
    let tenants = Api::<TenantControlPlane>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let used_by = tenants_using(&tenants.items, &name);

    if ds.meta().deletion_timestamp.is_some() {
        if used_by.is_empty() {
            remove_finalizer(&api, &ds).await?;
            ctx.etcd.forget(&name);
            return Ok(Action::await_change());
        }
        recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: "DataStoreInUse".into(),
                    note: Some(format!(
                        "not deleted while in use by {}",
                        used_by.join(", ")
                    )),
                    action: "Delete".into(),
                    secondary: None,
                },
                &ds.object_ref(&()),
            )
            .await?;
    } else if !ds.finalizers().iter().any(|f| f == PROTECTION_FINALIZER) {
        let mut finalizers = ds.finalizers().to_vec();
        finalizers.push(PROTECTION_FINALIZER.to_string());
        let patch = serde_json::json!({
            "metadata": { "finalizers": finalizers, "resourceVersion": ds.resource_version() }
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }

    let mut invalid = None;
    if let Some(managed) = &ds.spec.managed
        && ds.meta().deletion_timestamp.is_none()
    {
        match apply_managed(&ctx, &ds, managed).await {
            Ok(()) => {}
            Err(e @ Error::Invalid { .. }) => invalid = Some(e.to_string()),
            Err(e) => return Err(e),
        }
    }

    // Reachability as root decides Ready.
    let connected = match invalid {
        Some(message) => Err(Error::DataStore(message)),
        None => connection(client, &ds).await,
    };
    let (ready, reason, message, endpoints) = match connected {
        Ok(conn) => {
            let endpoints = conn.endpoints.join(",");
            match ctx.etcd.client(&name, &conn).await {
                Ok(mut etcd) => {
                    let checked = match &ds.spec.managed {
                        Some(_) => ensure_auth_enabled(&mut etcd).await,
                        None => etcd.status().await.map(|_| ()).map_err(Into::into),
                    };
                    match checked {
                        Ok(()) => (
                            true,
                            "Reachable",
                            "etcd answers as root".to_string(),
                            endpoints,
                        ),
                        Err(e) => {
                            ctx.etcd.forget(&name);
                            (false, "Unreachable", e.to_string(), endpoints)
                        }
                    }
                }
                Err(e) => (false, "Unreachable", e.to_string(), endpoints),
            }
        }
        Err(e) => (false, "InvalidConfiguration", e.to_string(), String::new()),
    };

    let old = ds.status.clone().unwrap_or_default();
    let mut status = DataStoreStatus {
        observed_generation: ds.meta().generation,
        endpoints: (!endpoints.is_empty()).then_some(endpoints),
        tenant_count: used_by.len() as i32,
        used_by,
        conditions: old.conditions.clone(),
    };
    let now = Time(jiff::Timestamp::now());
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        ready,
        reason,
        message,
        ds.meta().generation,
        &now,
    );
    if status != old {
        if !ready && conditions::is_true(&old.conditions, conditions::READY) {
            warn!(%name, "DataStore became unreachable");
        }
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(if ready {
        Action::requeue(ctx.settings.resync)
    } else {
        Action::requeue(Duration::from_secs(10))
    })
}

async fn remove_finalizer(api: &Api<DataStore>, ds: &DataStore) -> Result<()> {
    let finalizers: Vec<String> = ds
        .finalizers()
        .iter()
        .filter(|f| *f != PROTECTION_FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": ds.resource_version() }
    });
    match api
        .patch(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(_ds: Arc<DataStore>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "DataStore reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.kind());
    Action::requeue(Duration::from_secs(5))
}

/// Runs the DataStore controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let managed_children = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::apply::MANAGED_BY.0,
        crate::apply::MANAGED_BY.1
    ));
    Controller::new(
        Api::<DataStore>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<StatefulSet>::all(client.clone()),
        managed_children.clone(),
    )
    .watches(
        Api::<TenantControlPlane>::all(client.clone()),
        watcher::Config::default(),
        |tcp| {
            let mut refs: Vec<ObjectRef<DataStore>> = Vec::new();
            if let Some(ds) = tcp.status.as_ref().and_then(|s| s.data_store.clone()) {
                refs.push(ObjectRef::new(&ds));
            }
            if let Some(ds) = tcp.spec.data_store.clone() {
                refs.push(ObjectRef::new(&ds));
            }
            refs
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Ok((obj, _)) = res {
            info!(datastore = %obj.name, "reconciled");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DataStoreSpec;

    fn managed_ds() -> (DataStore, ManagedDataStore) {
        let managed: ManagedDataStore = serde_yaml_ng::from_str("namespace: orrery-etcd").unwrap();
        let mut ds = DataStore::new(
            "shared",
            DataStoreSpec {
                managed: Some(managed.clone()),
                external: None,
            },
        );
        ds.metadata.uid = Some("ds-uid".into());
        (ds, managed)
    }

    #[test]
    fn tenant_users_and_prefixes_cannot_collide() {
        assert_eq!(etcd_user("a", "b-c"), "orrery/a/b-c");
        assert_ne!(etcd_user("a-b", "c"), etcd_user("a", "b-c"));
        assert_eq!(etcd_prefix("ns", "t"), "/orrery/ns/t");
        // The role covers "/orrery/ns/t/..." but not a sibling tenant "/orrery/ns/t2/...".
        let p = role_prefix("ns", "t");
        assert!("/orrery/ns/t/pods/x".starts_with(&p));
        assert!(!"/orrery/ns/t2/pods/x".starts_with(&p));
    }

    #[test]
    fn managed_statefulset_defaults() {
        let (ds, managed) = managed_ds();
        assert_eq!(managed.replicas, 3);
        let names = ManagedNames::new(&ds, &managed);
        let sts = managed_statefulset(&ds, &managed, &names, "h1");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("shared-etcd"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--client-cert-auth=true".to_string()));
        assert!(args.contains(&"--peer-client-cert-auth=true".to_string()));
        assert!(args.iter().any(|a| a
            == "--initial-cluster=shared-etcd-0=https://shared-etcd-0.shared-etcd.orrery-etcd.svc:2380,shared-etcd-1=https://shared-etcd-1.shared-etcd.orrery-etcd.svc:2380,shared-etcd-2=https://shared-etcd-2.shared-etcd.orrery-etcd.svc:2380"));
        assert_eq!(c.image.as_deref(), Some("registry.k8s.io/etcd:3.6.4-0"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let [peer, client] = managed_services(&ds, &names);
        assert_eq!(
            peer.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        assert_eq!(
            peer.spec.as_ref().unwrap().publish_not_ready_addresses,
            Some(true)
        );
        assert_eq!(client.metadata.name.as_deref(), Some("shared-etcd-client"));
        assert_eq!(
            names.client_endpoint(),
            "https://shared-etcd-client.orrery-etcd.svc:2379"
        );
        let dns = server_dns_names(&names, 3);
        assert!(dns.contains(&"shared-etcd-2.shared-etcd.orrery-etcd.svc".to_string()));
        assert!(dns.contains(&"shared-etcd-client.orrery-etcd.svc".to_string()));
        assert_eq!(sts.metadata.owner_references.unwrap()[0].uid, "ds-uid");
    }

    #[test]
    fn used_by_lists_tenants_by_spec_or_status() {
        let mk = |ns: &str, name: &str, spec_ds: Option<&str>, status_ds: Option<&str>| {
            let mut spec: crate::api::TenantControlPlaneSpec =
                serde_yaml_ng::from_str("version: v1.34.4").unwrap();
            spec.data_store = spec_ds.map(Into::into);
            let mut t = TenantControlPlane::new(name, spec);
            t.metadata.namespace = Some(ns.into());
            t.status = Some(crate::api::TenantControlPlaneStatus {
                data_store: status_ds.map(Into::into),
                ..Default::default()
            });
            t
        };
        let all = vec![
            mk("b", "t2", None, Some("shared")),
            mk("a", "t1", Some("shared"), None),
            mk("a", "t3", Some("other"), Some("other")),
        ];
        assert_eq!(tenants_using(&all, "shared"), ["a/t1", "b/t2"]);
        assert_eq!(tenants_using(&all, "none"), Vec::<String>::new());
    }
}
