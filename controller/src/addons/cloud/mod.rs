//! The tenant's cloud, run from the management cluster so the tenant never holds management
//! credentials: its cloud controller (what a cloud-controller-manager does for a cluster on
//! KubeVirt) and the controller side of its CSI driver ([`crate::addons::csi`]).
//!
//! The controller `cloud` is keyed on TenantControlPlane: for each bootstrapped tenant with
//! `spec.addons.cloudController` or `spec.addons.csi` enabled, it keeps one [`runner`] task
//! alive ([`runners`]), started again when the admin kubeconfig or the settings change, and
//! stopped when the tenant goes. Switching the cloud controller off also removes what it made
//! ([`release::switch_off`]). The runner works against the tenant's API with its admin
//! kubeconfig:
//!
//! - [`nodes`]: Node initialisation from the VM ([`node_patch`], [`instance_type`]);
//! - [`services`]: LoadBalancer Services served by management Services ([`load_balancer`]);
//! - the CSI driver's provisioning and attaching ([`crate::addons::csi::runner`]).
//!
//! Management-side reads (VMIs, Nodes, Services) are plain GETs, repeated on a timer: a watch per
//! tenant in the management cluster would not scale.

pub mod instance_type;
pub mod load_balancer;
pub mod node_patch;
mod nodes;
pub mod release;
pub mod runner;
pub mod runners;
mod services;

use crate::addons::health::{CloudReport, Health};
use crate::api::{SecretRef, TenantControlPlane};
use crate::conditions::{self, TENANT_BOOTSTRAPPED};
use crate::context::{Context, Settings};
use crate::controlplane::build::Names;
use crate::pki::CLOUD_CONTROLLER_CONF;
use crate::{Error, Result};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use runner::Tenant;
use runners::Runners;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

const CONTROLLER: &str = "cloud";
const FAILED_RETRY: Duration = Duration::from_secs(15);

/// Whether the tenant's cloud controller runs (when the tenant is ready for it): its workers
/// then leave Node initialisation to it.
pub fn runs_for(tcp: &TenantControlPlane, settings: &Settings) -> bool {
    settings.tenant_access && tcp.spec.addons.cloud_controller.enabled
}

/// Whether the tenant's CSI driver runs (when the tenant is ready for it).
pub fn csi_runs_for(tcp: &TenantControlPlane, settings: &Settings) -> bool {
    settings.tenant_access && tcp.spec.addons.csi.enabled
}

/// What a tenant's cloud controller should be doing.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Running.
    Run,
    /// Switched off: nothing runs, and what it made goes.
    Off,
    /// Not running, for the reason given; what it made stays (it is still wanted, or goes with
    /// the tenant).
    Idle(&'static str),
}

/// The plan for `tcp` (pure).
pub fn plan(tcp: &TenantControlPlane, settings: &Settings) -> Plan {
    let status = tcp.status.clone().unwrap_or_default();
    if !settings.tenant_access {
        Plan::Idle("the operator does not reach into tenants")
    } else if tcp.meta().deletion_timestamp.is_some() {
        Plan::Idle("the tenant is being deleted")
    } else if tcp.spec.sleep {
        Plan::Idle("the tenant sleeps")
    } else if !tcp.spec.addons.cloud_controller.enabled && !tcp.spec.addons.csi.enabled {
        Plan::Off
    } else if status.kubeconfig_secret_ref.is_none()
        || !conditions::is_true(&status.conditions, TENANT_BOOTSTRAPPED)
    {
        Plan::Idle("the tenant is not bootstrapped yet")
    } else {
        Plan::Run
    }
}

/// The controller's state: the process context and the running tasks.
struct State {
    ctx: Arc<Context>,
    runners: Arc<Runners>,
}

#[instrument(skip_all, fields(tenant = %tcp.name_any(), namespace = tcp.namespace().unwrap_or_default()))]
async fn reconcile(tcp: Arc<TenantControlPlane>, state: Arc<State>) -> Result<Action> {
    let ctx = &state.ctx;
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let key = ObjectRef::from_obj(&*tcp);
    match plan(&tcp, &ctx.settings) {
        Plan::Idle(why) => {
            if state.runners.stop(&key) {
                info!(why, "cloud controller stopped");
            }
            ctx.addons.report_cloud(&key, None);
            Ok(Action::await_change())
        }
        Plan::Off => {
            if state.runners.stop(&key) {
                info!("cloud controller switched off");
            }
            ctx.addons.report_cloud(&key, None);
            switch_off(&tcp, ctx).await?;
            // Looked at again later: a task stopping just now may still have made something.
            Ok(Action::requeue(ctx.settings.resync))
        }
        Plan::Run => {
            if !tcp.spec.addons.cloud_controller.enabled {
                switch_off(&tcp, ctx).await?;
            }
            let kubeconfig = own_kubeconfig(&tcp, ctx).await?;
            let addons = &tcp.spec.addons;
            let hash = crate::hash::of_strings(&[
                kubeconfig.as_str(),
                addons.cloud_controller.load_balancer_service_type.as_str(),
                &addons.cloud_controller.enabled.to_string(),
                &addons.csi.enabled.to_string(),
                addons.csi.storage_class_name.as_deref().unwrap_or_default(),
            ]);
            if !state.runners.is_current(&key, &hash) {
                let tenant = Arc::new(Tenant::connect(ctx, &tcp, &kubeconfig).await?);
                ctx.addons.report_cloud(&key, Some(CloudReport::Starting));
                state
                    .runners
                    .start(key, hash, |stop| runner::run(tenant, stop).boxed());
            }
            // The kubeconfig Secret is not watched: a renewed one is noticed at the resync.
            Ok(Action::requeue(ctx.settings.resync))
        }
    }
}

/// The kubeconfig of the cloud controller's own tenant user (see [`crate::tenant`]'s add-on
/// access): it can do in the tenant what the cloud controller and the CSI driver do, no more.
async fn own_kubeconfig(tcp: &TenantControlPlane, ctx: &Context) -> Result<String> {
    let ns = tcp.namespace().unwrap_or_default();
    let secret = SecretRef {
        name: Names::new(tcp).addon_kubeconfigs(),
        key: CLOUD_CONTROLLER_CONF.into(),
    };
    crate::tenant::apply::kubeconfig_in(&ctx.client, &ns, &secret)
        .await?
        .ok_or_else(|| Error::Pending(format!("the kubeconfig Secret {}", secret.name)))
}

/// The tenant's admin kubeconfig, which its status names: only to clean up after a switched-off
/// cloud controller, whose own user's access goes with it.
async fn admin_kubeconfig(tcp: &TenantControlPlane, ctx: &Context) -> Result<String> {
    let ns = tcp.namespace().unwrap_or_default();
    let missing = || Error::Pending(format!("the admin kubeconfig of tenant {}", tcp.name_any()));
    let secret = tcp
        .status
        .as_ref()
        .and_then(|s| s.kubeconfig_secret_ref.clone())
        .ok_or_else(missing)?;
    crate::tenant::apply::kubeconfig_in(&ctx.client, &ns, &secret)
        .await?
        .ok_or_else(missing)
}

/// Removes what a switched-off cloud controller made, if anything is left.
async fn switch_off(tcp: &TenantControlPlane, ctx: &Context) -> Result<()> {
    let ns = tcp.namespace().unwrap_or_default();
    if !release::anything_left(&ctx.client, &ns, &tcp.name_any()).await? {
        return Ok(());
    }
    let kubeconfig = admin_kubeconfig(tcp, ctx).await?;
    let tenant = Tenant::connect(ctx, tcp, &kubeconfig).await?;
    let removed = release::switch_off(&tenant).await?;
    info!(
        removed,
        "cloud controller switched off: its load balancers are removed"
    );
    Ok(())
}

fn error_policy(tcp: Arc<TenantControlPlane>, error: &Error, state: Arc<State>) -> Action {
    warn!(tenant = %tcp.name_any(), %error, "cloud controller reconcile failed");
    state
        .ctx
        .metrics
        .reconcile_failed(CONTROLLER, error.category());
    Action::requeue(FAILED_RETRY)
}

/// Stops the task of a tenant that is gone: at its deletion, and after a new list (a deletion
/// may have been missed while the watch was down).
fn forget_gone(
    runners: &Runners,
    health: &Health,
    tenants: &Store<TenantControlPlane>,
    event: &Result<watcher::Event<TenantControlPlane>, watcher::Error>,
) {
    match event {
        Ok(watcher::Event::Delete(tcp)) => {
            let key = ObjectRef::from_obj(tcp);
            if runners.stop(&key) {
                info!(tenant = %tcp.name_any(), "cloud controller stopped: the tenant is gone");
            }
            health.forget_cloud(|k| k != &key);
        }
        Ok(watcher::Event::InitDone) => {
            runners.retain(|key| tenants.get(key).is_some());
            health.forget_cloud(|key| tenants.get(key).is_some());
        }
        _ => {}
    }
}

/// Runs the cloud controller until `shutdown` is cancelled, then stops every tenant's task.
/// It watches TenantControlPlanes itself (status included: the kubeconfig and bootstrap
/// condition start a task), besides the TenantControlPlane controller's own watch.
pub fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
    let runners = Arc::new(Runners::new(shutdown.clone()));
    let (reader, writer) = reflector::store();
    let (gone, health, store) = (runners.clone(), ctx.addons.clone(), reader.clone());
    let tenants = watcher(
        Api::<TenantControlPlane>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .inspect(move |event| forget_gone(&gone, &health, &store, event))
    .applied_objects();
    let state = Arc::new(State {
        ctx,
        runners: runners.clone(),
    });
    async move {
        Controller::for_stream(tenants, reader)
            .graceful_shutdown_on(shutdown.cancelled_owned())
            .run(reconcile, error_policy, state)
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller event");
                }
            })
            .await;
        runners.stop_all().await;
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn tcp(spec: &str, status: &str) -> TenantControlPlane {
        let mut t = TenantControlPlane::new("t1", serde_yaml_ng::from_str(spec).unwrap());
        t.metadata.namespace = Some("ns".into());
        t.status = serde_yaml_ng::from_str(status).unwrap();
        t
    }

    const SPEC: &str = "version: v1.34.4\n";
    const OFF: &str = "version: v1.34.4\naddons:\n  cloudController:\n    enabled: false\n";
    const CSI_ONLY: &str = "version: v1.34.4\naddons:\n  cloudController:\n    enabled: false\n  csi:\n    enabled: true\n";
    const BOOTSTRAPPED: &str = r#"
kubeconfigSecretRef: {name: t1-admin-kubeconfig, key: kubeconfig}
conditions:
- {type: TenantBootstrapped, status: "True", reason: Done, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;
    const NOT_BOOTSTRAPPED: &str = r#"
kubeconfigSecretRef: {name: t1-admin-kubeconfig, key: kubeconfig}
conditions:
- {type: TenantBootstrapped, status: "False", reason: Waiting, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    #[test]
    fn the_plan_runs_only_an_enabled_bootstrapped_tenant_and_switches_off_a_disabled_one() {
        let on = Settings::default();
        let no_access = Settings {
            tenant_access: false,
            ..Settings::default()
        };
        let mut deleting = tcp(SPEC, BOOTSTRAPPED);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        for (what, t, settings, expected) in [
            (
                "enabled and bootstrapped",
                tcp(SPEC, BOOTSTRAPPED),
                &on,
                Plan::Run,
            ),
            ("switched off", tcp(OFF, BOOTSTRAPPED), &on, Plan::Off),
            (
                "cloud controller off, CSI driver on",
                tcp(CSI_ONLY, BOOTSTRAPPED),
                &on,
                Plan::Run,
            ),
            (
                "switched off before bootstrap",
                tcp(OFF, "{}"),
                &on,
                Plan::Off,
            ),
            (
                "not bootstrapped",
                tcp(SPEC, NOT_BOOTSTRAPPED),
                &on,
                Plan::Idle("the tenant is not bootstrapped yet"),
            ),
            (
                "no status yet",
                tcp(SPEC, "{}"),
                &on,
                Plan::Idle("the tenant is not bootstrapped yet"),
            ),
            (
                "being deleted",
                deleting,
                &on,
                Plan::Idle("the tenant is being deleted"),
            ),
            (
                "no tenant access",
                tcp(SPEC, BOOTSTRAPPED),
                &no_access,
                Plan::Idle("the operator does not reach into tenants"),
            ),
        ] {
            assert_eq!(plan(&t, settings), expected, "{what}");
        }
        assert!(runs_for(&tcp(SPEC, "{}"), &on), "on by default");
        assert!(!runs_for(&tcp(OFF, "{}"), &on));
        assert!(!runs_for(&tcp(SPEC, "{}"), &no_access));
    }
}
