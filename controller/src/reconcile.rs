//! The TenantControlPlane controller: dereference (DataStore, Service address) → build (PKI and
//! workload objects, pure) → apply (server-side apply, one field manager) → status.
//!
//! A reconcile of an unchanged tenant sends only no-op applies (the server keeps every
//! resourceVersion) and writes no status. Deleting a tenant removes its children through owner
//! references; the finalizer exists only for what the garbage collector cannot reach: the
//! tenant's keys, user and role in etcd.

use crate::api::{DataStore, SecretRef, TenantControlPlane, TenantControlPlaneStatus};
use crate::apply::{MANAGED_BY, apply};
use crate::conditions::{
    self, CERTIFICATES_READY, CONTROL_PLANE_AVAILABLE, DATASTORE_READY, READY, TENANT_API_READY,
    TENANT_BOOTSTRAPPED,
};
use crate::context::Context;
use crate::controlplane::{self, DeploymentInputs, Names};
use crate::datastore::{self, Connection};
use crate::pki::{self, CurrentPki, DesiredPki, TenantPkiSpec};
use crate::tenant;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, instrument, warn};

const CONTROLLER: &str = "tenantcontrolplane";
/// Removes the tenant's etcd keys, user and role before the object goes.
pub const CLEANUP_FINALIZER: &str = "orrery.dev/datastore-cleanup";
/// Set to "true" on a TenantControlPlane to delete it without cleaning its DataStore (for a
/// DataStore that is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "orrery.dev/skip-datastore-cleanup";
const RETRY: Duration = Duration::from_secs(5);

#[instrument(skip_all, fields(tenant = %tcp.name_any(), namespace = tcp.namespace().unwrap_or_default()))]
async fn reconcile(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = tcp.namespace().ok_or_else(|| Error::Invalid {
        field: "metadata.namespace".into(),
        reason: "TenantControlPlane is namespaced".into(),
    })?;
    let api = Api::<TenantControlPlane>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, CLEANUP_FINALIZER, tcp, |event| async {
        match event {
            FinalizerEvent::Apply(tcp) => Tenant::new(tcp, ctx.clone()).reconcile().await,
            FinalizerEvent::Cleanup(tcp) => cleanup(tcp, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// One reconcile of one tenant.
struct Tenant {
    tcp: Arc<TenantControlPlane>,
    ctx: Arc<Context>,
    ns: String,
    names: Names,
    status: TenantControlPlaneStatus,
    now: Time,
    recorder: Recorder,
}

/// Why a reconcile stopped before the end; recorded in a condition, and the reconcile is retried.
struct Blocked {
    condition: &'static str,
    reason: &'static str,
    message: String,
}

impl Tenant {
    fn new(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Self {
        Self {
            ns: tcp.namespace().unwrap_or_default(),
            names: Names::new(&tcp),
            status: tcp.status.clone().unwrap_or_default(),
            now: Time(jiff::Timestamp::now()),
            recorder: Recorder::new(ctx.client.clone(), ctx.reporter.clone()),
            tcp,
            ctx,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn set(&mut self, condition: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let generation = self.tcp.meta().generation;
        conditions::set(
            &mut self.status.conditions,
            condition,
            ok,
            reason,
            message,
            generation,
            &self.now,
        );
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &self.tcp.object_ref(&())).await {
            warn!(error = %e, "cannot publish event");
        }
    }

    async fn reconcile(mut self) -> Result<Action> {
        let was_ready = conditions::is_true(&self.status.conditions, READY);
        let outcome = self.converge().await;
        let action = match outcome {
            Ok(next_renewal) => {
                let wait = next_renewal
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map_or(self.ctx.settings.resync, |d| {
                        d.min(self.ctx.settings.resync)
                    });
                Action::requeue(wait.max(Duration::from_secs(1)))
            }
            Err(Ok(blocked)) => {
                let previous = self
                    .status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == blocked.condition)
                    .cloned();
                self.set(
                    blocked.condition,
                    false,
                    blocked.reason,
                    blocked.message.clone(),
                );
                let changed =
                    previous.is_none_or(|c| c.status != "False" || c.reason != blocked.reason);
                if changed {
                    self.event(EventType::Warning, blocked.reason, blocked.message)
                        .await;
                }
                Action::requeue(RETRY)
            }
            Err(Err(e)) => {
                self.write_status(was_ready).await?;
                return Err(e);
            }
        };
        self.write_status(was_ready).await?;
        Ok(action)
    }

    /// Brings the children in line with the spec. Returns when the next certificate enters its
    /// renewal window. `Err(Ok(_))` is a known blocker, `Err(Err(_))` an unexpected failure.
    async fn converge(&mut self) -> Result<Option<SystemTime>, Result<Blocked, Error>> {
        let (ds_name, conn) = self.datastore().await?;
        self.status.data_store = Some(ds_name.clone());

        let service = apply(&self.api::<Service>(), &controlplane::service(&self.tcp))
            .await
            .map_err(Err)?;
        let Some((endpoint, service_ips)) = endpoint_of(&self.tcp, &service) else {
            return Err(Ok(Blocked {
                condition: CONTROL_PLANE_AVAILABLE,
                reason: "WaitingForEndpoint",
                message: format!("Service {} has no address yet", self.names.workload()),
            }));
        };
        self.status.endpoint = Some(endpoint.clone());

        let desired = self.certificates(&conn, &endpoint, &service_ips).await?;
        let next_renewal = desired.next_renewal;

        self.tenant_in_datastore(&ds_name, &conn).await?;

        let config_map = controlplane::config_map(&self.tcp);
        apply(&self.api::<ConfigMap>(), &config_map)
            .await
            .map_err(Err)?;
        let config_hashes = BTreeMap::from([
            (self.names.ca(), crate::hash::of_map(&desired.ca)),
            (
                self.names.service_account(),
                crate::hash::of_map(&desired.service_account),
            ),
            (self.names.certs(), crate::hash::of_map(&desired.certs)),
            (
                self.names.kubeconfigs(),
                crate::hash::of_map(&desired.component_kubeconfigs),
            ),
            (
                self.names.config(),
                crate::hash::of_map(&config_map.data.clone().unwrap_or_default()),
            ),
        ]);
        let inputs = DeploymentInputs {
            images: controlplane::images(&self.tcp, &self.ctx.settings),
            datastore_endpoints: conn.endpoints.clone(),
            etcd_prefix: datastore::etcd_prefix(&self.ns, &self.names.tenant),
            advertise_address: service_ips.first().map(ToString::to_string),
            config_hashes,
        };
        let deployment = apply(
            &self.api::<Deployment>(),
            &controlplane::deployment(&self.tcp, &inputs),
        )
        .await
        .map_err(Err)?;
        apply(
            &self.api::<PodDisruptionBudget>(),
            &controlplane::pod_disruption_budget(&self.tcp),
        )
        .await
        .map_err(Err)?;

        let available = self.observe_deployment(&deployment);
        if self.ctx.settings.tenant_access {
            self.bootstrap_tenant(&desired, &endpoint, available)
                .await?;
        }
        Ok(next_renewal)
    }

    /// Checks that the tenant API answers /readyz and applies the bootstrap and add-ons there.
    async fn bootstrap_tenant(
        &mut self,
        desired: &DesiredPki,
        endpoint: &str,
        available: bool,
    ) -> Result<(), Result<Blocked, Error>> {
        if !available {
            return Err(Ok(Blocked {
                condition: TENANT_API_READY,
                reason: "WaitingForControlPlane",
                message: "no control-plane pod is available yet".into(),
            }));
        }
        let kubeconfig = desired
            .admin_kubeconfig
            .get(pki::ADMIN_KUBECONFIG)
            .cloned()
            .unwrap_or_default();
        let tenant = tenant_client(&kubeconfig).await.map_err(Err)?;
        let readyz = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("static request");
        if let Err(e) = tenant.request_text(readyz).await {
            return Err(Ok(Blocked {
                condition: TENANT_API_READY,
                reason: "TenantAPINotReady",
                message: format!("the tenant apiserver at {endpoint} does not answer /readyz: {e}"),
            }));
        }
        self.set(
            TENANT_API_READY,
            true,
            "Answering",
            format!("the tenant apiserver answers /readyz at {endpoint}"),
        );
        let inputs = tenant::BootstrapInputs {
            endpoint: endpoint.to_string(),
            ca_pem: desired.certs.get(pki::CA_CRT).cloned().unwrap_or_default(),
            image_registry: self.ctx.settings.image_registry.clone(),
        };
        let objects = tenant::build(&self.tcp, &inputs).map_err(Err)?;
        match tenant::apply_all(&tenant, &objects).await {
            Ok(n) => {
                self.set(
                    TENANT_BOOTSTRAPPED,
                    true,
                    "Applied",
                    format!("{n} bootstrap and add-on objects in place"),
                );
                Ok(())
            }
            Err(e) => Err(Ok(Blocked {
                condition: TENANT_BOOTSTRAPPED,
                reason: "BootstrapFailed",
                message: format!("applying the tenant bootstrap failed: {e}"),
            })),
        }
    }

    /// Resolves the DataStore and how to reach it.
    async fn datastore(&mut self) -> Result<(String, Connection), Result<Blocked, Error>> {
        let client = &self.ctx.client;
        let name = datastore::resolve_name(client, &self.tcp)
            .await
            .map_err(|e| match e {
                Error::Invalid { field, reason } => Ok(Blocked {
                    condition: DATASTORE_READY,
                    reason: "NoDataStore",
                    message: format!("{field} {reason}"),
                }),
                e => Err(e),
            })?;
        if let (Some(spec), Some(recorded)) = (
            &self.tcp.spec.data_store,
            self.status
                .data_store
                .as_ref()
                .filter(|_| self.status.endpoint.is_some()),
        ) && spec != recorded
        {
            return Err(Ok(Blocked {
                condition: DATASTORE_READY,
                reason: "DataStoreMigrationUnsupported",
                message: format!(
                    "spec.dataStore {spec} differs from the DataStore in use, {recorded}; moving tenants between DataStores is not supported"
                ),
            }));
        }
        let Some(ds) = Api::<DataStore>::all(client.clone())
            .get_opt(&name)
            .await
            .map_err(|e| Err(e.into()))?
        else {
            return Err(Ok(Blocked {
                condition: DATASTORE_READY,
                reason: "DataStoreNotFound",
                message: format!("DataStore {name} does not exist"),
            }));
        };
        if ds.meta().deletion_timestamp.is_some() {
            return Err(Ok(Blocked {
                condition: DATASTORE_READY,
                reason: "DataStoreDeleting",
                message: format!("DataStore {name} is being deleted"),
            }));
        }
        let conn = datastore::connection(client, &ds)
            .await
            .map_err(|e| match e {
                Error::Invalid { .. } | Error::DataStore(_) => Ok(Blocked {
                    condition: DATASTORE_READY,
                    reason: "DataStoreInvalid",
                    message: e.to_string(),
                }),
                e => Err(e),
            })?;
        Ok((name, conn))
    }

    /// Issues or keeps the tenant's certificates and kubeconfigs and applies their Secrets.
    async fn certificates(
        &mut self,
        conn: &Connection,
        endpoint: &str,
        service_ips: &[IpAddr],
    ) -> Result<DesiredPki, Result<Blocked, Error>> {
        let secrets = self.api::<Secret>();
        let read = |name: String| {
            let secrets = secrets.clone();
            async move { secrets.get_opt(&name).await }
        };
        let (ca, front_proxy_ca, sa, certs) = futures::try_join!(
            read(self.names.ca()),
            read(self.names.front_proxy_ca()),
            read(self.names.service_account()),
            read(self.names.certs()),
        )
        .map_err(|e| Err(e.into()))?;
        // A CA Secret that Orrery did not create is the user's own CA: use it, never write it.
        let user_ca = ca.as_ref().is_some_and(|s| {
            s.labels().get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1)
        });
        let current = CurrentPki {
            ca: ca.map(secret_text),
            front_proxy_ca: front_proxy_ca.map(secret_text),
            service_account: sa.map(secret_text),
            certs: certs.map(secret_text),
        };
        let spec = &self.tcp.spec;
        let svc = self.names.workload();
        let ns = &self.ns;
        let pki_spec = TenantPkiSpec {
            tenant_name: self.names.tenant.clone(),
            cluster_domain: spec.network.cluster_domain.clone(),
            service_cidr: spec.network.service_cidr.clone(),
            api_port: spec.network.port as u16,
            service_dns_names: vec![
                svc.clone(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
            ],
            service_ips: service_ips.to_vec(),
            endpoint: endpoint.to_string(),
            cert_sans: spec.network.cert_sans.clone(),
            validity: Duration::from_secs(spec.certificates.validity_hours as u64 * 3600),
            renew_before: Duration::from_secs(spec.certificates.renew_before_hours as u64 * 3600),
            datastore_user: datastore::etcd_user(ns, &self.names.tenant),
        };
        let desired = pki::reconcile_pki(&pki_spec, &current, &conn.ca, SystemTime::now())
            .map_err(|e| {
                Ok(Blocked {
                    condition: CERTIFICATES_READY,
                    reason: "CertificateAuthorityInvalid",
                    message: e.to_string(),
                })
            })?;

        let mut wanted = vec![
            (
                self.names.front_proxy_ca(),
                &desired.front_proxy_ca,
                "kubernetes.io/tls",
            ),
            (
                self.names.service_account(),
                &desired.service_account,
                "Opaque",
            ),
            (self.names.certs(), &desired.certs, "Opaque"),
            (
                self.names.admin_kubeconfig(),
                &desired.admin_kubeconfig,
                "Opaque",
            ),
            (
                self.names.kubeconfigs(),
                &desired.component_kubeconfigs,
                "Opaque",
            ),
        ];
        if !user_ca {
            wanted.insert(0, (self.names.ca(), &desired.ca, "kubernetes.io/tls"));
        }
        let applies = wanted.into_iter().map(|(name, data, type_)| {
            let secret = Secret {
                metadata: controlplane::child_meta(&self.tcp, name, "pki"),
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                        .collect(),
                ),
                type_: Some(type_.into()),
                ..Default::default()
            };
            let secrets = secrets.clone();
            async move { apply(&secrets, &secret).await }
        });
        futures::future::try_join_all(applies).await.map_err(Err)?;

        if !desired.renewed.is_empty() {
            let items: Vec<String> = desired
                .renewed
                .iter()
                .map(|(item, why)| format!("{item} ({why})"))
                .collect();
            info!(renewed = ?items, "certificates issued");
            self.event(
                EventType::Normal,
                "CertificatesIssued",
                format!("issued {}", items.join(", ")),
            )
            .await;
        }
        self.status.kubeconfig_secret_ref = Some(SecretRef {
            name: self.names.admin_kubeconfig(),
            key: "kubeconfig".into(),
        });
        let message = if user_ca {
            "certificates valid; CA provided by the user"
        } else {
            "certificates valid"
        };
        self.set(CERTIFICATES_READY, true, "Issued", message);
        Ok(desired)
    }

    /// Gives the tenant its etcd user and role, limited to its prefix.
    async fn tenant_in_datastore(
        &mut self,
        ds_name: &str,
        conn: &Connection,
    ) -> Result<(), Result<Blocked, Error>> {
        let unreachable = |e: Error| Blocked {
            condition: DATASTORE_READY,
            reason: "DataStoreUnreachable",
            message: format!("DataStore {ds_name}: {e}"),
        };
        let mut etcd = self
            .ctx
            .etcd
            .client(ds_name, conn)
            .await
            .map_err(|e| Ok(unreachable(e)))?;
        if let Err(e) = datastore::ensure_tenant(&mut etcd, &self.ns, &self.names.tenant).await {
            self.ctx.etcd.forget(ds_name);
            return Err(Ok(unreachable(e)));
        }
        self.set(
            DATASTORE_READY,
            true,
            "TenantProvisioned",
            format!(
                "etcd user {} limited to its prefix",
                datastore::etcd_user(&self.ns, &self.names.tenant)
            ),
        );
        Ok(())
    }

    /// Records the rollout and availability; returns whether a control-plane pod is available.
    fn observe_deployment(&mut self, deployment: &Deployment) -> bool {
        let want = self.tcp.spec.replicas;
        let status = deployment.status.clone().unwrap_or_default();
        let available = status.available_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let current = status.observed_generation >= deployment.metadata.generation;
        let rolled_out =
            current && updated == want && available >= want && status.replicas.unwrap_or(0) == want;
        if rolled_out {
            self.status.version = Some(self.tcp.spec.version.clone());
        }
        let message = format!("{available}/{want} control-plane replicas available");
        if available > 0 {
            self.set(CONTROL_PLANE_AVAILABLE, true, "Available", message);
        } else {
            self.set(CONTROL_PLANE_AVAILABLE, false, "Unavailable", message);
        }
        available > 0
    }

    /// Derives Ready and the phase, and writes the status if anything changed.
    async fn write_status(&mut self, was_ready: bool) -> Result<()> {
        let mut all = vec![CERTIFICATES_READY, DATASTORE_READY, CONTROL_PLANE_AVAILABLE];
        if self.ctx.settings.tenant_access {
            all.extend([TENANT_API_READY, TENANT_BOOTSTRAPPED]);
        }
        let mut waiting: Vec<&str> = all
            .iter()
            .filter(|c| !conditions::is_true(&self.status.conditions, c))
            .copied()
            .collect();
        // Ready once the first rollout has completed; during an upgrade the old version serves,
        // so Ready holds and the phase says Upgrading.
        if self.status.version.is_none() {
            waiting.push("the first rollout");
        }
        let ready = waiting.is_empty();
        let upgrading = self
            .status
            .version
            .as_ref()
            .is_some_and(|v| *v != self.tcp.spec.version);
        if ready {
            self.set(
                READY,
                true,
                "Ready",
                "the tenant control plane is available",
            );
        } else {
            self.set(
                READY,
                false,
                "NotReady",
                format!("waiting for {}", waiting.join(", ")),
            );
        }
        self.status.phase = Some(
            match (ready, upgrading, self.status.version.is_some()) {
                (_, true, _) => "Upgrading",
                (true, false, _) => "Ready",
                (false, false, true) => "NotReady",
                (false, false, false) => "Provisioning",
            }
            .into(),
        );
        self.status.observed_generation = self.tcp.meta().generation;
        if self.tcp.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let api = Api::<TenantControlPlane>::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({ "status": self.status });
        api.patch_status(
            &self.names.tenant,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        if ready && !was_ready {
            let endpoint = self.status.endpoint.clone().unwrap_or_default();
            self.event(
                EventType::Normal,
                "Ready",
                format!("tenant control plane is available at {endpoint}"),
            )
            .await;
        }
        Ok(())
    }
}

/// A client for the tenant apiserver from the admin kubeconfig, with short timeouts so an
/// unreachable tenant does not hold a reconcile.
async fn tenant_client(kubeconfig: &str) -> Result<kube::Client> {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| Error::Invalid {
            field: "admin kubeconfig".into(),
            reason: e.to_string(),
        })?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Invalid {
            field: "admin kubeconfig".into(),
            reason: e.to_string(),
        })?;
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

fn secret_text(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect()
}

/// The host:port workers and users reach, and the Service's IPs, once the Service has them.
pub fn endpoint_of(tcp: &TenantControlPlane, service: &Service) -> Option<(String, Vec<IpAddr>)> {
    let port = tcp.spec.network.port;
    let spec = service.spec.as_ref()?;
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let lb = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let lb_ips: Vec<IpAddr> = lb
        .iter()
        .flat_map(|i| i.iter())
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect();
    ips.splice(0..0, lb_ips.iter().copied());
    let host = match tcp.spec.network.service_type {
        crate::api::ServiceType::LoadBalancer => {
            let first = lb.and_then(|i| i.first())?;
            first.ip.clone().or_else(|| first.hostname.clone())?
        }
        _ => spec.cluster_ip.clone().filter(|ip| ip != "None")?,
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some((format!("{host}:{port}"), ips))
}

/// Removes the tenant's keys, user and role from its DataStore.
async fn cleanup(tcp: Arc<TenantControlPlane>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tcp.namespace().unwrap_or_default();
    let name = tcp.name_any();
    if tcp
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        warn!(tenant = %name, "deleting without DataStore cleanup, as annotated");
        return Ok(Action::await_change());
    }
    let Some(ds_name) = tcp
        .status
        .as_ref()
        .and_then(|s| s.data_store.clone())
        .or_else(|| tcp.spec.data_store.clone())
    else {
        return Ok(Action::await_change());
    };
    let Some(ds) = Api::<DataStore>::all(ctx.client.clone())
        .get_opt(&ds_name)
        .await?
    else {
        warn!(tenant = %name, datastore = %ds_name, "DataStore is gone; nothing to clean");
        return Ok(Action::await_change());
    };
    let conn = datastore::connection(&ctx.client, &ds).await?;
    let mut etcd = ctx.etcd.client(&ds_name, &conn).await?;
    let deleted = match datastore::remove_tenant(&mut etcd, &ns, &name).await {
        Ok(n) => n,
        Err(e) => {
            ctx.etcd.forget(&ds_name);
            return Err(e);
        }
    };
    info!(tenant = %name, datastore = %ds_name, deleted, "removed tenant keys, user and role");
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_: EventType::Normal,
        reason: "DataStoreCleaned".into(),
        note: Some(format!(
            "removed {deleted} keys, the etcd user and role from DataStore {ds_name}"
        )),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &tcp.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
    Ok(Action::await_change())
}

fn error_policy(tcp: Arc<TenantControlPlane>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(tenant = %tcp.name_any(), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error.kind());
    Action::requeue(RETRY)
}

/// Runs the TenantControlPlane controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_trigger(ctx, shutdown, futures::stream::pending()).await
}

/// Like [`run`], and every item of `reconcile_all` reconciles every tenant once more (tests use it
/// to check that an unchanged tenant causes no writes).
pub async fn run_with_trigger(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    reconcile_all: impl futures::Stream<Item = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let children = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    Controller::new(
        Api::<TenantControlPlane>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<Secret>::all(client.clone()), children.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), children)
    // A DataStore that becomes ready (or changes) wakes the tenants that use it.
    .watches(
        Api::<DataStore>::all(client.clone()),
        watcher::Config::default(),
        |ds| {
            let used_by = ds.status.map(|s| s.used_by).unwrap_or_default();
            used_by
                .into_iter()
                .filter_map(|t| {
                    t.split_once('/')
                        .map(|(ns, n)| ObjectRef::new(n).within(ns))
                })
                .collect::<Vec<ObjectRef<TenantControlPlane>>>()
        },
    )
    .reconcile_all_on(reconcile_all)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "controller event");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    fn tcp(yaml: &str) -> TenantControlPlane {
        let mut t = TenantControlPlane::new("t1", serde_yaml_ng::from_str(yaml).unwrap());
        t.metadata.namespace = Some("ns".into());
        t
    }

    #[test]
    fn endpoint_follows_the_service_type() {
        let svc = |cluster_ip: Option<&str>, lb: Option<LoadBalancerIngress>| Service {
            spec: Some(ServiceSpec {
                cluster_ip: cluster_ip.map(Into::into),
                cluster_ips: cluster_ip.map(|ip| vec![ip.into()]),
                ..Default::default()
            }),
            status: lb.map(|i| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![i]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cluster = tcp("version: v1.34.4");
        assert_eq!(endpoint_of(&cluster, &svc(None, None)), None);
        let (ep, ips) = endpoint_of(&cluster, &svc(Some("10.96.1.2"), None)).unwrap();
        assert_eq!(ep, "10.96.1.2:6443");
        assert_eq!(ips, vec!["10.96.1.2".parse::<IpAddr>().unwrap()]);

        let lb = tcp("version: v1.34.4\nnetwork:\n  serviceType: LoadBalancer\n  port: 443\n");
        assert_eq!(
            endpoint_of(&lb, &svc(Some("10.96.1.2"), None)),
            None,
            "LoadBalancer pending"
        );
        let ingress = LoadBalancerIngress {
            ip: Some("192.0.2.7".into()),
            ..Default::default()
        };
        let (ep, ips) = endpoint_of(&lb, &svc(Some("10.96.1.2"), Some(ingress))).unwrap();
        assert_eq!(ep, "192.0.2.7:443");
        assert_eq!(ips.len(), 2);
        let v6 = tcp("version: v1.34.4");
        assert_eq!(
            endpoint_of(&v6, &svc(Some("fd00::1"), None)).unwrap().0,
            "[fd00::1]:6443"
        );
    }
}
