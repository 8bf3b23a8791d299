//! The add-ons' part of a tenant's status: the `AddonsReady` condition. The TenantControlPlane
//! controller, the one writer of the status, builds it ([`condition`], pure) from what each
//! enabled add-on shows:
//!
//! - the cloud controller runs in this process and reports to [`Health`]; a report that changes
//!   wakes the tenant's reconcile ([`Health::take_wakes`]);
//! - the cluster-autoscaler is a Deployment, read from the cluster (its changes wake the tenant's
//!   reconcile through the controller's watch of Orrery's children).

use super::autoscaler::addon::NOT_SERVED;
use super::autoscaler::deploy;
use super::cloud;
use crate::Result;
use crate::api::TenantControlPlane;
use crate::conditions::SLEEPING;
use crate::context::Settings;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::Mutex;

type Key = ObjectRef<TenantControlPlane>;

/// What a tenant's cloud controller reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudReport {
    /// Its task started and is listing the tenant's Services and Nodes.
    Starting,
    /// It serves the tenant.
    Running,
}

/// The reports of the add-ons running in this process, by tenant.
pub struct Health {
    cloud: Mutex<HashMap<Key, CloudReport>>,
    wake: mpsc::UnboundedSender<Key>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<Key>>>,
}

impl Default for Health {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded();
        Self {
            cloud: Mutex::default(),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, CloudReport>> {
        self.cloud.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `key`'s cloud controller as `report` (`None`: not running), and wakes the
    /// tenant's reconcile when that is news.
    pub fn report_cloud(&self, key: &Key, report: Option<CloudReport>) {
        let before = match report {
            Some(r) => self.lock().insert(key.clone(), r),
            None => self.lock().remove(key),
        };
        if before != report {
            // Nobody listens once the controller has stopped; nothing to wake then.
            let _ = self.wake.unbounded_send(key.clone());
        }
    }

    /// Forgets the reports of the tenants `keep` says no to (they are gone: nothing to wake).
    pub fn forget_cloud(&self, keep: impl Fn(&Key) -> bool) {
        self.lock().retain(|key, _| keep(key));
    }

    /// What `key`'s cloud controller last reported.
    pub fn cloud(&self, key: &Key) -> Option<CloudReport> {
        self.lock().get(key).copied()
    }

    /// The tenants whose reports changed, for the TenantControlPlane controller (the first
    /// caller gets them; later ones an empty stream).
    pub fn take_wakes(&self) -> BoxStream<'static, Key> {
        let taken = self.woken.lock().unwrap_or_else(|e| e.into_inner()).take();
        match taken {
            Some(rx) => rx.boxed(),
            None => futures::stream::empty().boxed(),
        }
    }
}

/// The condition's (status, reason, message) for `tcp`, from its cloud controller's `cloud`
/// report and its autoscaler's Deployment `autoscaler` (pure). Add-ons switched off are left
/// out; with none on, the condition holds.
pub fn condition(
    tcp: &TenantControlPlane,
    settings: &Settings,
    cloud: Option<CloudReport>,
    autoscaler: Option<&Deployment>,
) -> (bool, &'static str, String) {
    if tcp.spec.sleep {
        return (
            false,
            SLEEPING,
            "the tenant sleeps: its add-ons are stopped".into(),
        );
    }
    let mut running = Vec::new();
    // (reason, message) of each add-on that is on but not running.
    let mut waiting: Vec<(&'static str, String)> = Vec::new();
    if cloud::runs_for(tcp, settings) {
        match cloud {
            Some(CloudReport::Running) => running.push("cloud-controller"),
            Some(CloudReport::Starting) => waiting.push((
                "CloudControllerStarting",
                "cloud-controller: starting (listing the tenant's Nodes and Services)".into(),
            )),
            None => waiting.push((
                "CloudControllerPending",
                "cloud-controller: starts once the tenant is bootstrapped".into(),
            )),
        }
    }
    // The driver's controller side runs in the same task as the cloud controller.
    if cloud::csi_runs_for(tcp, settings) {
        match cloud {
            Some(CloudReport::Running) => running.push("csi-driver"),
            Some(CloudReport::Starting) => {
                waiting.push(("CsiDriverStarting", "csi-driver: starting".into()))
            }
            None => waiting.push((
                "CsiDriverPending",
                "csi-driver: starts once the tenant is bootstrapped".into(),
            )),
        }
    }
    if tcp.spec.addons.cluster_autoscaler.enabled {
        let available = autoscaler
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if settings.autoscaler.is_none() {
            waiting.push((
                "ClusterAutoscalerNotServed",
                format!("cluster-autoscaler: {NOT_SERVED}"),
            ));
        } else if autoscaler.is_none() {
            waiting.push((
                "ClusterAutoscalerPending",
                "cluster-autoscaler: its Deployment is made once the tenant has its admin kubeconfig"
                    .into(),
            ));
        } else if available < 1 {
            waiting.push((
                "ClusterAutoscalerUnavailable",
                format!(
                    "cluster-autoscaler: Deployment {} has no available replica",
                    deploy::name(tcp)
                ),
            ));
        } else {
            running.push("cluster-autoscaler");
        }
    }
    match waiting.first() {
        Some((reason, _)) => {
            let messages: Vec<&str> = waiting.iter().map(|(_, m)| m.as_str()).collect();
            (false, *reason, messages.join("; "))
        }
        None if running.is_empty() => (true, "NoAddons", "no add-on is switched on".into()),
        None => (
            true,
            "AddonsRunning",
            format!("running: {}", running.join(", ")),
        ),
    }
}

/// The autoscaler's Deployment of `tcp`, read only when the add-on is on.
pub async fn autoscaler_deployment(
    client: &kube::Client,
    tcp: &TenantControlPlane,
) -> Result<Option<Deployment>> {
    if !tcp.spec.addons.cluster_autoscaler.enabled {
        return Ok(None);
    }
    let ns = tcp.namespace().unwrap_or_default();
    Ok(Api::<Deployment>::namespaced(client.clone(), &ns)
        .get_opt(&deploy::name(tcp))
        .await?)
}

/// The key of `tcp` in [`Health`].
pub fn key(tcp: &TenantControlPlane) -> Key {
    ObjectRef::from_obj(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn tcp(addons: &str) -> TenantControlPlane {
        let yaml = format!("{{version: v1.34.4, addons: {addons}}}");
        let mut t = TenantControlPlane::new("t1", serde_yaml_ng::from_str(&yaml).unwrap());
        t.metadata.namespace = Some("ns".into());
        t
    }

    fn deployment(available: Option<i32>) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                available_replicas: available,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_condition_names_every_addon_that_is_on_and_not_running() {
        let mut settings = Settings {
            autoscaler: Some(super::super::autoscaler::ApiEndpoint {
                service: "orrery-autoscaler".into(),
                namespace: "orrery-system".into(),
                port: 8443,
            }),
            ..Settings::default()
        };
        let both = "{clusterAutoscaler: {enabled: true}}";
        let running = deployment(Some(1));
        // (case, spec.addons, cloud report, autoscaler Deployment) -> (status, reason)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<CloudReport>,
            Option<&'a Deployment>,
        );
        let cases: Vec<(Case, (bool, &str))> = vec![
            (
                ("defaults, running", "{}", Some(CloudReport::Running), None),
                (true, "AddonsRunning"),
            ),
            (
                ("defaults, not bootstrapped", "{}", None, None),
                (false, "CloudControllerPending"),
            ),
            (
                ("defaults, listing", "{}", Some(CloudReport::Starting), None),
                (false, "CloudControllerStarting"),
            ),
            (
                ("all off", "{cloudController: {enabled: false}}", None, None),
                (true, "NoAddons"),
            ),
            (
                (
                    "CSI driver alone, not bootstrapped",
                    "{cloudController: {enabled: false}, csi: {enabled: true}}",
                    None,
                    None,
                ),
                (false, "CsiDriverPending"),
            ),
            (
                (
                    "CSI driver alone, running",
                    "{cloudController: {enabled: false}, csi: {enabled: true}}",
                    Some(CloudReport::Running),
                    None,
                ),
                (true, "AddonsRunning"),
            ),
            (
                (
                    "both running",
                    both,
                    Some(CloudReport::Running),
                    Some(&running),
                ),
                (true, "AddonsRunning"),
            ),
            (
                (
                    "autoscaler not made yet",
                    both,
                    Some(CloudReport::Running),
                    None,
                ),
                (false, "ClusterAutoscalerPending"),
            ),
        ];
        for ((what, addons, cloud, autoscaler), (ok, reason)) in cases {
            let (got_ok, got_reason, message) =
                condition(&tcp(addons), &settings, cloud, autoscaler);
            assert_eq!((got_ok, got_reason), (ok, reason), "{what}: {message}");
        }

        // A sleeping tenant's add-ons are stopped, whatever they last reported.
        let mut asleep = tcp(both);
        asleep.spec.sleep = true;
        let (ok, reason, _) = condition(
            &asleep,
            &settings,
            Some(CloudReport::Running),
            Some(&running),
        );
        assert_eq!((ok, reason), (false, "Sleeping"));

        // Each add-on that waits is named, the first one's reason is the condition's.
        let unavailable = deployment(None);
        let (ok, reason, message) = condition(
            &tcp(both),
            &settings,
            Some(CloudReport::Starting),
            Some(&unavailable),
        );
        assert!(!ok);
        assert_eq!(reason, "CloudControllerStarting");
        assert!(message.contains("cloud-controller: starting"), "{message}");
        assert!(
            message.contains("Deployment t1-cluster-autoscaler has no available replica"),
            "{message}"
        );

        // An operator that does not serve the autoscaler API says so.
        settings.autoscaler = None;
        let (ok, reason, message) = condition(
            &tcp(both),
            &settings,
            Some(CloudReport::Running),
            Some(&running),
        );
        assert_eq!(
            (ok, reason),
            (false, "ClusterAutoscalerNotServed"),
            "{message}"
        );

        // Without tenant access the cloud controller never runs, so it is not waited for.
        settings.tenant_access = false;
        let (ok, reason, _) = condition(&tcp("{}"), &settings, None, None);
        assert_eq!((ok, reason), (true, "NoAddons"));
    }

    #[tokio::test]
    async fn a_changed_report_wakes_its_tenant_once() {
        let health = Health::default();
        let mut wakes = health.take_wakes();
        let a = key(&tcp("{}"));
        health.report_cloud(&a, Some(CloudReport::Starting));
        health.report_cloud(&a, Some(CloudReport::Starting));
        health.report_cloud(&a, Some(CloudReport::Running));
        health.report_cloud(&a, None);
        health.report_cloud(&a, None);
        assert_eq!(health.cloud(&a), None);
        let mut woken = Vec::new();
        while let Ok(Some(k)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), wakes.next()).await
        {
            woken.push(k);
        }
        assert_eq!(woken, vec![a.clone(), a.clone(), a], "one wake per change");
        let second = health.take_wakes().next().await;
        assert_eq!(second, None, "the wakes have one taker");
    }
}
