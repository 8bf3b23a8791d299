//! Benchmark of what the tenants' cloud controllers cost the operator: for 100 (or N) tenants,
//! the process's memory, CPU time while idle and open sockets, before and after every tenant's
//! cloud controller runs, and how long each took from its tenant's creation to running. Prints
//! figures; asserts nothing.
//!
//!   cargo build --release -p orrery-e2e --bin bench_addons
//!   target/release/bench_addons [TENANTS] [csi]   # default: 100; csi: with the CSI driver
//!
//! With `csi`, every tenant also has `spec.addons.csi` on: its task then runs the CSI driver's
//! controllers too, which watch the tenant's claims, volumes, attachments and StorageClasses.
//!
//! Needs a running ground (`e2e/ground up`). Nothing there runs tenant apiservers, so the tenants
//! are stand-ins as in `bench_nodepool`: TenantControlPlanes whose status (written here) says
//! bootstrapped and names the ground's apiserver and admin kubeconfig. Each tenant's cloud
//! controller then works against the ground's apiserver as a real one works against its tenant's:
//! it lists and watches all Nodes and Services there (the kwok nodes are no VMs of Orrery's, so
//! nothing is patched). The controller runs in this process (`orrery::addons::cloud::run`, fed the
//! tenants by a reflector as in the operator), so its memory is this process's RSS and a tenant's
//! controller is running once it reports so. RUST_LOG (default `orrery=warn`) shows its log.
//!
//! Not measured here: the cluster-autoscaler add-on's cost is the upstream autoscaler's own pod
//! (its Deployment requests 100m CPU and 256Mi), and the operator's autoscaler API serves every
//! tenant from one set of watches (NodePools and VM metadata, as `bench_nodepool` measures).

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use orrery::addons::health::CloudReport;
use orrery::api::TenantControlPlane;
use orrery::context::{Context, Settings};
use orrery::metrics::Metrics;
use orrery_e2e::bench::{
    Memory, TICKS_PER_SECOND, cpu_ticks, feed_tenants, log_to_stderr, open_sockets, stand_in_tenant,
};
use orrery_e2e::{
    Ground, eventually, has_real_kubevirt, install_crds, install_kubevirt_stand_ins,
    remove_kubevirt_stand_ins, unique_name,
};
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long after the last controller reported running the memory and sockets are read.
const SETTLE: Duration = Duration::from_secs(15);
/// The idle window over which CPU time is measured.
const IDLE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    let tenants: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("TENANTS is a number")?,
        None => 100,
    };
    let csi = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("csi") => true,
        Some(other) => bail!("the second argument is `csi` or nothing, not {other:?}"),
    };
    log_to_stderr();

    let ground = Ground::get()?;
    ground.ensure_running()?;
    install_crds(&ground);
    // The cloud controller reads VMIs of the management cluster: KubeVirt's CRDs or stand-ins.
    let stand_ins = !has_real_kubevirt(&ground);
    if stand_ins {
        install_kubevirt_stand_ins(&ground);
    }
    let client = ground.client().await?;
    // Every tenant on the ground gets a cloud controller here: only the benchmark's may count.
    let others = Api::<TenantControlPlane>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?;
    if !others.items.is_empty() {
        bail!(
            "the ground has {} TenantControlPlanes already (an earlier run's namespace may still \
             be going): the benchmark needs a ground without tenants",
            others.items.len()
        );
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let reporter = Reporter {
        controller: "orrery".into(),
        instance: Some("bench".into()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        reporter,
        Settings::default(),
    ));
    let shutdown = CancellationToken::new();
    let controller = tokio::spawn(run_controller(ctx.clone(), shutdown.clone()));
    ctx.stores.tenants_listed().await?;

    let ns = unique_name("bench-addons");
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {
        "name": ns, "labels": {"orrery.dev/e2e": "true"}
    }}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let result = measure(&ground, &client, &ctx, &ns, tenants, csi).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), controller).await;
    orrery_e2e::delete_namespace(&client, &ns).await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    eventually("the namespace gone", Duration::from_secs(300), || async {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await?;
    if stand_ins {
        remove_kubevirt_stand_ins(&ground);
    }
    result
}

async fn measure(
    ground: &Ground,
    client: &kube::Client,
    ctx: &Context,
    ns: &str,
    tenants: usize,
    csi: bool,
) -> Result<()> {
    // The tenants' watch lists (nothing yet) and settles first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (memory, sockets, ticks) = (Memory::now()?, open_sockets()?, cpu_ticks()?);
    tokio::time::sleep(IDLE).await;
    let idle_before = cpu_ticks()? - ticks;

    let kubeconfig = std::fs::read_to_string(ground.kubeconfig())?;
    let api_url = ground.var("ORRERY_GROUND_API");
    let endpoint = api_url.trim_start_matches("https://");
    let start = Instant::now();
    let mut created = Vec::with_capacity(tenants);
    let addons = json!({"csi": {"enabled": csi}});
    for i in 0..tenants {
        stand_in_tenant(client, ns, &format!("t{i}"), &kubeconfig, endpoint, &addons).await?;
        created.push(start.elapsed());
    }
    // Each tenant's time from its creation until its controller reported running.
    let mut took: Vec<Option<Duration>> = vec![None; tenants];
    let deadline = start + Duration::from_secs(300);
    while took.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            let running = took.iter().filter(|t| t.is_some()).count();
            bail!("only {running} of {tenants} cloud controllers running after 300 s");
        }
        for (i, t) in took.iter_mut().enumerate() {
            let key = ObjectRef::<TenantControlPlane>::new(&format!("t{i}")).within(ns);
            if t.is_none() && ctx.addons.cloud(&key) == Some(CloudReport::Running) {
                *t = Some(start.elapsed().saturating_sub(created[i]));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_running = start.elapsed();
    tokio::time::sleep(SETTLE).await;
    let (after, sockets_after, ticks) = (Memory::now()?, open_sockets()?, cpu_ticks()?);
    tokio::time::sleep(IDLE).await;
    let idle_after = cpu_ticks()? - ticks;

    let mut took: Vec<Duration> = took.into_iter().flatten().collect();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ms_per_minute =
        |ticks: u64| ticks as f64 * 1000.0 / TICKS_PER_SECOND as f64 * 60.0 / IDLE.as_secs_f64();
    let (idle_before, idle_after) = (ms_per_minute(idle_before), ms_per_minute(idle_after));
    let what = if csi {
        "cloud controllers with their CSI drivers' controllers"
    } else {
        "cloud controllers"
    };
    println!("{tenants} tenants' {what}, tenants created one after another:");
    println!(
        "  all running {:.2} s after the first tenant was created; tenant created → its \
         controller running: p50 {:.2} s, p90 {:.2} s, max {:.2} s",
        all_running.as_secs_f64(),
        at(0.5),
        at(0.9),
        at(1.0),
    );
    println!(
        "  RSS (VmRSS) {:.1} MiB before → {:.1} MiB with them, {} s later: +{:.1} MiB ({:.0} KiB \
         per tenant); peak (VmHWM) {:.1} MiB",
        mib(memory.rss_kib),
        mib(after.rss_kib),
        SETTLE.as_secs(),
        mib(after.rss_kib.saturating_sub(memory.rss_kib)),
        after.rss_kib.saturating_sub(memory.rss_kib) as f64 / tenants as f64,
        mib(after.hwm_kib),
    );
    println!(
        "  open sockets {sockets} before → {sockets_after} with them ({:.1} per tenant)",
        (sockets_after.saturating_sub(sockets)) as f64 / tenants as f64,
    );
    println!(
        "  CPU time while idle, over {} s: {idle_before:.0} ms per minute before → \
         {idle_after:.0} ms per minute with them ({:.2} ms per tenant per minute)",
        IDLE.as_secs(),
        (idle_after - idle_before).max(0.0) / tenants as f64,
    );
    Ok(())
}

/// The tenants' reflector, as the operator's TenantControlPlane controller feeds it, and the
/// cloud controller.
async fn run_controller(ctx: Arc<Context>, shutdown: CancellationToken) {
    tokio::select! {
        () = feed_tenants(ctx.clone()) => {}
        () = orrery::addons::cloud::run(ctx, shutdown) => {}
    }
}
