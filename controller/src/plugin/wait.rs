//! `kubectl orrery wait TENANT`: watches the tenant until it is Ready with its latest spec taken
//! up and its version rolled out, printing a line each time its progress changes. `upgrade` waits
//! the same way for the version it set, and `scale` follows a NodePool with [`Follow`].

use super::cli::{ClientArgs, Output, WaitArgs, WaitFor};
use super::connect::{self, Management};
use super::error::{Error, Result, code};
use crate::api::{TenantControlPlane, TenantControlPlaneStatus};
use crate::conditions::{
    CERTIFICATES_READY, CONTROL_PLANE_AVAILABLE, DATASTORE_READY, DEGRADED, READY,
    TENANT_API_READY, TENANT_BOOTSTRAPPED,
};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// The conditions Ready waits for, in the order a tenant comes up.
const STEPS: [&str; 5] = [
    CERTIFICATES_READY,
    DATASTORE_READY,
    CONTROL_PLANE_AVAILABLE,
    TENANT_API_READY,
    TENANT_BOOTSTRAPPED,
];

/// What "done" means.
#[derive(Clone, Debug, Default)]
pub struct Goal {
    /// Orrery must have reported on at least this generation (a change just made).
    pub generation: Option<i64>,
    /// The version that must run [default: spec.version].
    pub version: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Done(String),
    Waiting(String),
}

/// Whether `tcp` has reached `goal`, and a line saying where it is.
pub fn assess(tcp: &TenantControlPlane, goal: &Goal) -> Verdict {
    // Soon after creation this is normal; `summary` asks about the operator on a timeout.
    let Some(status) = &tcp.status else {
        return Verdict::Waiting("Orrery has not reported on it yet".into());
    };
    if let Some(line) = behind(goal.generation, status.observed_generation) {
        return Verdict::Waiting(line);
    }
    let target = goal.version.as_deref().unwrap_or(&tcp.spec.version);
    let running = status.version.as_deref();
    let versions = match running {
        Some(v) if v == target => v.to_string(),
        Some(v) => format!("{v} → {target}"),
        None => target.to_string(),
    };
    let ready = condition(status, READY);
    if running == Some(target) && ready.is_some_and(|c| c.status == "True") {
        let at = status.endpoint.as_deref().unwrap_or("no endpoint");
        return Verdict::Done(format!("Ready, {versions} at {at}"));
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let mut line = format!("{phase}, {versions}");
    if let Some(ready) = ready {
        line.push_str(&format!(": {}", ready.message));
    }
    let upgrading = running.is_some_and(|v| v != target);
    if let Some(c) = blocking(status, upgrading) {
        line.push_str(&format!(" ({} {}: {})", c.type_, c.reason, c.message));
    }
    Verdict::Waiting(line)
}

/// Says so when Orrery has not reported on generation `wanted` yet (`seen` is the last it did).
pub fn behind(wanted: Option<i64>, seen: Option<i64>) -> Option<String> {
    let (wanted, seen) = (wanted?, seen.unwrap_or(0));
    (seen < wanted).then(|| {
        format!("Orrery has not taken up generation {wanted} yet (it last reported on {seen})")
    })
}

/// The condition that says most about what holds the tenant up: a failing reconcile, the first
/// step not done, or, during an upgrade, the rollout.
fn blocking(status: &TenantControlPlaneStatus, upgrading: bool) -> Option<&Condition> {
    if let Some(degraded) = condition(status, DEGRADED).filter(|c| c.status == "True") {
        return Some(degraded);
    }
    let first_not_done = STEPS
        .iter()
        .filter_map(|s| condition(status, s))
        .find(|c| c.status != "True");
    first_not_done.or_else(|| {
        upgrading
            .then(|| condition(status, CONTROL_PLANE_AVAILABLE))
            .flatten()
    })
}

fn condition<'a>(status: &'a TenantControlPlaneStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The tenant's state in one line for errors: its phase and every condition that is not as it
/// should be.
pub fn summary(tcp: &TenantControlPlane) -> String {
    let Some(status) = &tcp.status else {
        return "Orrery has not reported on it yet: is the operator running?".into();
    };
    let mut parts = vec![format!(
        "phase {}",
        status.phase.as_deref().unwrap_or("Pending")
    )];
    for c in &status.conditions {
        let fine = if c.type_ == DEGRADED {
            c.status == "False"
        } else {
            c.status == "True"
        };
        if !fine {
            parts.push(format!(
                "{}={} ({}): {}",
                c.type_, c.status, c.reason, c.message
            ));
        }
    }
    parts.join("; ")
}

pub async fn run(client: &ClientArgs, args: WaitArgs) -> Result<()> {
    let WaitFor::Ready = args.wait_for;
    let m = connect::connect(client).await?;
    let tcp = connect::tenant(&m, &args.tenant).await?;
    let goal = Goal {
        generation: tcp.metadata.generation,
        version: None,
    };
    until(&m, &args.tenant, &goal, args.timeout.timeout, args.output).await
}

/// Watches tenant `name` until it reaches `goal`, printing its progress on stderr and, at the
/// end, a line (or the object, with `output`) on stdout.
pub async fn until(
    m: &Management,
    name: &str,
    goal: &Goal,
    timeout: Duration,
    output: Option<Output>,
) -> Result<()> {
    let follow = Follow {
        m,
        kind: TENANT,
        name,
        timeout,
        output,
    };
    follow
        .until(|tcp: &TenantControlPlane| assess(tcp, goal), summary)
        .await
}

/// How messages and RBAC name a kind of Orrery object.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// As in messages: `TenantControlPlane`.
    pub name: &'static str,
    /// As in RBAC rules: `tenantcontrolplanes`.
    pub resource: &'static str,
}

pub const TENANT: Kind = Kind {
    name: "TenantControlPlane",
    resource: "tenantcontrolplanes",
};

impl Kind {
    /// An object as kubectl prints it: `tenantcontrolplane.orrery.dev/demo`.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}.orrery.dev/{name}", self.name.to_lowercase())
    }
}

/// One object of the namespace to watch until it is done, and how to print it then.
pub struct Follow<'a> {
    pub m: &'a Management,
    pub kind: Kind,
    pub name: &'a str,
    pub timeout: Duration,
    pub output: Option<Output>,
}

impl Follow<'_> {
    /// Watches the object until `assess` says it is done, printing each new progress line on
    /// stderr and, at the end, a line (or the object, with `output`) on stdout. `summary` says
    /// where it stands when time runs out.
    pub async fn until<K>(
        &self,
        assess: impl Fn(&K) -> Verdict,
        summary: impl Fn(&K) -> String,
    ) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug
            + Send
            + 'static,
    {
        let (m, kind, name) = (self.m, self.kind, self.name);
        let api = Api::<K>::namespaced(m.client.clone(), &m.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let deadline = tokio::time::sleep(self.timeout);
        let mut deadline = std::pin::pin!(deadline);
        let start = Instant::now();
        let mut last: Option<K> = None;
        let mut last_line = String::new();
        loop {
            let event = tokio::select! {
                () = &mut deadline => return Err(Error::Timeout {
                    after: self.timeout,
                    kind: kind.name,
                    name: name.into(),
                    namespace: m.namespace.clone(),
                    why: last.as_ref().map_or_else(|| "it was not seen".into(), &summary),
                }),
                event = events.next() => event,
            };
            let obj = match event {
                Some(Ok(Event::Apply(obj) | Event::InitApply(obj))) => obj,
                Some(Ok(Event::Delete(_))) => {
                    return Err(Error::Gone {
                        kind: kind.name,
                        name: name.into(),
                        namespace: m.namespace.clone(),
                    });
                }
                Some(Ok(Event::Init | Event::InitDone)) => continue,
                // The watch is retried with a backoff; only a refusal is final.
                Some(Err(e)) if is_forbidden(&e) => {
                    return Err(Error::Forbidden {
                        verb: "watch",
                        what: format!("{} {name}", kind.name),
                        resource: kind.resource,
                        namespace: Some(m.namespace.clone()),
                    });
                }
                Some(Err(_)) => continue,
                None => return Err(Error::Invalid("the watch ended unexpectedly".into())),
            };
            match assess(&obj) {
                Verdict::Done(line) => {
                    match self.output {
                        Some(format) => super::print_object(&obj, format)?,
                        None => println!(
                            "{}: {line} (after {}s)",
                            kind.qualified(name),
                            start.elapsed().as_secs()
                        ),
                    }
                    return Ok(());
                }
                Verdict::Waiting(line) if line != last_line => {
                    eprintln!("[{:>4}s] {line}", start.elapsed().as_secs());
                    last_line = line;
                }
                Verdict::Waiting(_) => {}
            }
            last = Some(obj);
        }
    }
}

fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => code(e) == Some(403),
        watcher::Error::WatchError(status) => status.code == 403,
        watcher::Error::NoResourceVersion => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(yaml: &str) -> TenantControlPlane {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const SPEC: &str = "
apiVersion: orrery.dev/v1alpha1
kind: TenantControlPlane
metadata: {name: demo, namespace: t, generation: 3}
spec: {version: v1.34.4}
";

    fn with_status(status: &str) -> TenantControlPlane {
        tenant(&format!("{SPEC}status:\n{status}"))
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> String {
        format!(
            "  - {{type: {type_}, status: \"{status}\", reason: {reason}, message: \"{message}\", \
             lastTransitionTime: \"2026-01-01T00:00:00Z\"}}\n"
        )
    }

    #[test]
    fn progress_lines_and_the_end() {
        let ready = cond(
            READY,
            "True",
            "Ready",
            "the tenant control plane is available",
        );
        let goal = Goal {
            generation: Some(3),
            version: None,
        };
        let cases: Vec<(TenantControlPlane, Goal, Verdict)> = vec![
            (
                tenant(SPEC),
                goal.clone(),
                Verdict::Waiting("Orrery has not reported on it yet".into()),
            ),
            (
                with_status("  observedGeneration: 2\n  phase: Ready\n"),
                goal.clone(),
                Verdict::Waiting(
                    "Orrery has not taken up generation 3 yet (it last reported on 2)".into(),
                ),
            ),
            (
                with_status(&format!(
                    "  observedGeneration: 3\n  phase: Provisioning\n  conditions:\n{}{}{}",
                    cond(CERTIFICATES_READY, "True", "Issued", "certificates valid"),
                    cond(
                        CONTROL_PLANE_AVAILABLE,
                        "False",
                        "Unavailable",
                        "0/2 control-plane replicas available"
                    ),
                    cond(
                        READY,
                        "False",
                        "NotReady",
                        "waiting for ControlPlaneAvailable"
                    ),
                )),
                goal.clone(),
                Verdict::Waiting(
                    "Provisioning, v1.34.4: waiting for ControlPlaneAvailable \
                     (ControlPlaneAvailable Unavailable: 0/2 control-plane replicas available)"
                        .into(),
                ),
            ),
            (
                with_status(&format!(
                    "  observedGeneration: 3\n  phase: Upgrading\n  version: v1.33.2\n  conditions:\n{ready}{}",
                    cond(
                        CONTROL_PLANE_AVAILABLE,
                        "True",
                        "Available",
                        "2/2 control-plane replicas available"
                    ),
                )),
                goal.clone(),
                Verdict::Waiting(
                    "Upgrading, v1.33.2 → v1.34.4: the tenant control plane is available \
                     (ControlPlaneAvailable Available: 2/2 control-plane replicas available)"
                        .into(),
                ),
            ),
            (
                with_status(&format!(
                    "  observedGeneration: 3\n  phase: NotReady\n  version: v1.34.4\n  conditions:\n{}{}",
                    cond(
                        DEGRADED,
                        "True",
                        "DataStore",
                        "reconcile failed: etcd is down"
                    ),
                    cond(
                        READY,
                        "False",
                        "ReconcileFailed",
                        "reconcile failed: etcd is down"
                    ),
                )),
                goal.clone(),
                Verdict::Waiting(
                    "NotReady, v1.34.4: reconcile failed: etcd is down \
                     (Degraded DataStore: reconcile failed: etcd is down)"
                        .into(),
                ),
            ),
            (
                with_status(&format!(
                    "  observedGeneration: 3\n  phase: Ready\n  version: v1.34.4\n  endpoint: 10.96.0.7:6443\n  conditions:\n{ready}"
                )),
                goal.clone(),
                Verdict::Done("Ready, v1.34.4 at 10.96.0.7:6443".into()),
            ),
            // Ready, but not at the version an upgrade asked for.
            (
                with_status(&format!(
                    "  observedGeneration: 3\n  phase: Ready\n  version: v1.34.4\n  conditions:\n{ready}"
                )),
                Goal {
                    generation: Some(3),
                    version: Some("v1.34.5".into()),
                },
                Verdict::Waiting(
                    "Ready, v1.34.4 → v1.34.5: the tenant control plane is available".into(),
                ),
            ),
        ];
        for (i, (tcp, goal, want)) in cases.into_iter().enumerate() {
            assert_eq!(assess(&tcp, &goal), want, "case {i}");
        }
    }

    #[test]
    fn summary_lists_what_is_not_as_it_should_be() {
        let tcp = with_status(&format!(
            "  phase: Provisioning\n  conditions:\n{}{}{}",
            cond(CERTIFICATES_READY, "True", "Issued", "certificates valid"),
            cond(DEGRADED, "False", "NoErrors", "none"),
            cond(
                DATASTORE_READY,
                "False",
                "DataStoreNotFound",
                "no DataStore x"
            ),
        ));
        assert_eq!(
            summary(&tcp),
            "phase Provisioning; DataStoreReady=False (DataStoreNotFound): no DataStore x"
        );
    }
}
