//! What the benchmarks share: stand-in tenants on the kwok tier, and this process's memory, CPU
//! time and open sockets.

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use orrery::api::TenantControlPlane;
use orrery::context::Context;
use serde_json::json;
use std::sync::Arc;

/// The version of the stand-in tenants.
pub const TENANT_VERSION: &str = "v1.34.4";

/// A TenantControlPlane `name` in `ns` standing for a running, bootstrapped tenant served by the
/// ground's apiserver at `endpoint`, with `kubeconfig` as its admin kubeconfig. No
/// TenantControlPlane controller runs: the status is written here.
pub async fn stand_in_tenant(
    client: &Client,
    ns: &str,
    name: &str,
    kubeconfig: &str,
    endpoint: &str,
    addons: &serde_json::Value,
) -> Result<()> {
    let secret_name = format!("{name}-admin-kubeconfig");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret_name, "namespace": ns},
        "stringData": {"kubeconfig": kubeconfig}
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let tcp: TenantControlPlane = serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"version": TENANT_VERSION, "addons": addons}
    }))?;
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), ns);
    let tcp = api.create(&PostParams::default(), &tcp).await?;
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {
        "observedGeneration": tcp.meta().generation,
        "phase": "Ready",
        "version": TENANT_VERSION,
        "endpoint": endpoint,
        "kubeconfigSecretRef": {"name": secret_name, "key": "kubeconfig"},
        "conditions": [{
            "type": "TenantBootstrapped", "status": "True", "reason": "Applied",
            "message": "stand-in: the ground's apiserver serves this tenant",
            "lastTransitionTime": now, "observedGeneration": tcp.meta().generation
        }]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Logs to stderr as RUST_LOG says (default `orrery=warn`), keeping stdout for the figures.
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("orrery=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Keeps `ctx`'s tenant store filled, as the operator's TenantControlPlane controller does, for
/// a controller under test that reads it (none of them runs the TenantControlPlane controller).
pub async fn feed_tenants(ctx: Arc<Context>) {
    ctx.stores
        .take_tenants_feed()
        .reflect(watcher(
            Api::<TenantControlPlane>::all(ctx.client.clone()),
            watcher::Config::default(),
        ))
        .default_backoff()
        .applied_objects()
        .for_each(|_| async {})
        .await;
}

/// This process's resident memory, now and at its peak.
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Memory {
    pub fn now() -> Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} in /proc/self/status"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

/// CPU time this process has used (user and system), in clock ticks.
pub fn cpu_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("utime and stime in /proc/self/stat")
    };
    Ok(tick(11)? + tick(12)?)
}

/// Clock ticks per second of [`cpu_ticks`] (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: u64 = 100;

/// How many sockets this process holds open (its connections and listeners).
pub fn open_sockets() -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let target = std::fs::read_link(entry?.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with("socket:") {
            n += 1;
        }
    }
    Ok(n)
}
