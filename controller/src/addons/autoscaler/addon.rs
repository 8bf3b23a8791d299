//! The controller `cluster-autoscaler`, keyed on TenantControlPlane: for a tenant whose
//! `spec.addons.clusterAutoscaler` is enabled it keeps the autoscaler's Secret (cloud-config,
//! client key pair issued by the API's CA) and Deployment ([`super::deploy`]) in the tenant's
//! namespace; switched off, it deletes them.

use super::deploy::{self, COMPONENT};
use super::identity::Tenant;
use super::{ApiEndpoint, authority};
use crate::api::{SecretRef, TenantControlPlane};
use crate::apply::{MANAGED_BY, TENANT_LABEL, apply};
use crate::context::{Context, Settings};
use crate::controlplane::build::Names;
use crate::pki;
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

const CONTROLLER: &str = "cluster-autoscaler";
const FAILED_RETRY: Duration = Duration::from_secs(15);

/// What a tenant's autoscaler should be doing.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Deployed, with the API at this endpoint.
    Run(ApiEndpoint),
    /// Switched off: its objects go.
    Off,
    /// Left as it is, for the reason given.
    Idle(&'static str),
}

/// Why an enabled autoscaler cannot run: the operator does not serve its API.
pub const NOT_SERVED: &str =
    "the operator does not serve the cluster-autoscaler API (its --autoscaler-addr is unset)";

/// The plan for `tcp` (pure).
pub fn plan(tcp: &TenantControlPlane, settings: &Settings) -> Plan {
    let has_kubeconfig = tcp
        .status
        .as_ref()
        .is_some_and(|s| s.kubeconfig_secret_ref.is_some());
    if tcp.meta().deletion_timestamp.is_some() {
        Plan::Idle("the tenant is being deleted")
    } else if !tcp.spec.addons.cluster_autoscaler.enabled || tcp.spec.sleep {
        // A sleeping tenant's autoscaler would only fail against an apiserver that is not
        // there: it goes, and comes back when the tenant wakes.
        Plan::Off
    } else if let Some(api) = &settings.autoscaler {
        if has_kubeconfig {
            Plan::Run(api.clone())
        } else {
            Plan::Idle("the tenant has no admin kubeconfig yet")
        }
    } else {
        Plan::Idle(NOT_SERVED)
    }
}

/// The controller's state: the process context, and what autoscaler objects exist (their
/// metadata, from the watches that also wake the controller when one changes).
struct State {
    ctx: Arc<Context>,
    deployments: Store<PartialObjectMeta<Deployment>>,
    secrets: Store<PartialObjectMeta<Secret>>,
}

impl State {
    /// Whether `tcp` has an autoscaler Deployment or Secret.
    fn has_objects(&self, tcp: &TenantControlPlane) -> bool {
        let name = deploy::name(tcp);
        let ns = tcp.namespace().unwrap_or_default();
        self.deployments
            .get(&ObjectRef::new(&name).within(&ns))
            .is_some()
            || self
                .secrets
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some()
    }
}

#[instrument(skip_all, fields(tenant = %tcp.name_any(), namespace = tcp.namespace().unwrap_or_default()))]
async fn reconcile(tcp: Arc<TenantControlPlane>, state: Arc<State>) -> Result<Action> {
    let ctx = &state.ctx;
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    match plan(&tcp, &ctx.settings) {
        Plan::Run(api) => {
            deploy(&tcp, ctx, &api).await?;
            // A renewed kubeconfig or a certificate due for renewal is noticed at the resync.
            Ok(Action::requeue(ctx.settings.resync))
        }
        // Most tenants have none: nothing is asked of the apiserver for them.
        Plan::Off => {
            if state.has_objects(&tcp) && remove(&tcp, ctx).await? {
                info!("cluster-autoscaler switched off: removed");
            }
            Ok(Action::await_change())
        }
        Plan::Idle(why) => {
            if why == NOT_SERVED {
                warn!(why, "cluster-autoscaler enabled but cannot run");
                let note = format!("spec.addons.clusterAutoscaler is enabled, but {why}");
                ctx.event(
                    &*tcp,
                    EventType::Warning,
                    "AutoscalerNotServed",
                    "Reconcile",
                    note,
                )
                .await;
            }
            Ok(Action::await_change())
        }
    }
}

/// Applies the tenant's autoscaler Secret and Deployment.
async fn deploy(tcp: &TenantControlPlane, ctx: &Context, api: &ApiEndpoint) -> Result<()> {
    let ns = tcp.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let ca = authority::ensure_ca(&ctx.client, api).await?;
    let current = secrets
        .get_opt(&deploy::name(tcp))
        .await?
        .as_ref()
        .and_then(authority::key_pair);
    let profile = authority::client_profile(&Tenant::new(&ns, &tcp.name_any()));
    let client = pki::keep_or_issue(current, &ca, &profile, SystemTime::now())?;
    let status = tcp.status.clone().unwrap_or_default();
    // Its own tenant user, with only what an autoscaler does (see the tenant's add-on access).
    let kubeconfig_ref = SecretRef {
        name: Names::new(tcp).addon_kubeconfigs(),
        key: pki::CLUSTER_AUTOSCALER_CONF.into(),
    };
    let kubeconfig = crate::tenant::apply::kubeconfig_in(&ctx.client, &ns, &kubeconfig_ref)
        .await?
        .ok_or_else(|| {
            Error::Pending(format!(
                "Secret {} (the autoscaler's kubeconfig)",
                kubeconfig_ref.name
            ))
        })?;
    let version = status.version.unwrap_or_else(|| tcp.spec.version.clone());
    let image = match &tcp.spec.addons.cluster_autoscaler.image {
        Some(image) => image.clone(),
        None => deploy::default_image(&ctx.settings.image_registry, &version),
    };
    let address = api.address();
    let kubeconfig_hash = crate::hash::of_strings(&[kubeconfig.as_str()]);
    let inputs = deploy::Inputs {
        tcp,
        address: &address,
        client: &client,
        ca_cert: &ca.cert,
        image: &image,
        kubeconfig: &kubeconfig_ref,
        kubeconfig_hash: &kubeconfig_hash,
    };
    apply(&secrets, &deploy::secret(&inputs)).await?;
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    apply(&deployments, &deploy::deployment(&inputs)).await?;
    Ok(())
}

/// Deletes the tenant's autoscaler Deployment and Secret; whether there was anything.
async fn remove(tcp: &TenantControlPlane, ctx: &Context) -> Result<bool> {
    let ns = tcp.namespace().unwrap_or_default();
    let name = deploy::name(tcp);
    let deleted = |r: kube::Result<_>| match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(Error::from(e)),
    };
    let params = DeleteParams::background();
    let deployment = deleted(
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &params)
            .await
            .map(|_| ()),
    )?;
    let secret = deleted(
        Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &params)
            .await
            .map(|_| ()),
    )?;
    Ok(deployment || secret)
}

fn error_policy(tcp: Arc<TenantControlPlane>, error: &Error, state: Arc<State>) -> Action {
    warn!(tenant = %tcp.name_any(), %error, "cluster-autoscaler reconcile failed");
    state
        .ctx
        .metrics
        .reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}

/// The tenant an autoscaler object belongs to, from its labels.
fn owning_tenant<K: Resource>(obj: PartialObjectMeta<K>) -> Option<ObjectRef<TenantControlPlane>> {
    let tenant = obj.labels().get(TENANT_LABEL)?;
    Some(ObjectRef::new(tenant).within(&obj.namespace()?))
}

/// Changes of the autoscaler objects of kind `K` (metadata only), kept in `writer`'s store, so a
/// deleted or edited one is restored at once.
fn ours<K>(
    client: &kube::Client,
    writer: Writer<PartialObjectMeta<K>>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let selector = format!(
        "{}={},app.kubernetes.io/component={COMPONENT}",
        MANAGED_BY.0, MANAGED_BY.1
    );
    watcher(
        Api::<PartialObjectMeta<K>>::all(client.clone()),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
}

/// Runs the controller until `shutdown` is cancelled.
pub fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
    let client = ctx.client.clone();
    let (deployments, deployments_writer) = reflector::store();
    let (secrets, secrets_writer) = reflector::store();
    let state = Arc::new(State {
        ctx,
        deployments,
        secrets,
    });
    Controller::new(
        Api::<TenantControlPlane>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_stream(
        ours::<Deployment>(&client, deployments_writer),
        owning_tenant,
    )
    .watches_stream(ours::<Secret>(&client, secrets_writer), owning_tenant)
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile, error_policy, state)
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "controller event");
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn tcp(addons: &str, status: &str) -> TenantControlPlane {
        let spec = format!("version: v1.34.4\naddons: {addons}\n");
        let mut t = TenantControlPlane::new("t1", serde_yaml_ng::from_str(&spec).unwrap());
        t.metadata.namespace = Some("ns".into());
        t.status = serde_yaml_ng::from_str(status).unwrap();
        t
    }

    const ON: &str = "{clusterAutoscaler: {enabled: true}}";
    const READY: &str = "kubeconfigSecretRef: {name: t1-admin-kubeconfig, key: kubeconfig}";

    #[test]
    fn the_plan_runs_only_an_enabled_tenant_with_a_kubeconfig_on_a_serving_operator() {
        let api = ApiEndpoint {
            service: "orrery-autoscaler".into(),
            namespace: "orrery-system".into(),
            port: 8443,
        };
        let serving = Settings {
            autoscaler: Some(api.clone()),
            ..Settings::default()
        };
        let not_serving = Settings::default();
        let mut deleting = tcp(ON, READY);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        for (what, t, settings, expected) in [
            ("enabled", tcp(ON, READY), &serving, Plan::Run(api.clone())),
            ("off by default", tcp("{}", READY), &serving, Plan::Off),
            (
                "switched off",
                tcp("{clusterAutoscaler: {enabled: false}}", READY),
                &serving,
                Plan::Off,
            ),
            (
                "not served",
                tcp(ON, READY),
                &not_serving,
                Plan::Idle(NOT_SERVED),
            ),
            (
                "off and not served",
                tcp("{}", READY),
                &not_serving,
                Plan::Off,
            ),
            (
                "no kubeconfig yet",
                tcp(ON, "{}"),
                &serving,
                Plan::Idle("the tenant has no admin kubeconfig yet"),
            ),
            (
                "being deleted",
                deleting,
                &serving,
                Plan::Idle("the tenant is being deleted"),
            ),
        ] {
            assert_eq!(plan(&t, settings), expected, "{what}");
        }
    }
}
