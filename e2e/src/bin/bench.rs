//! Benchmark: time to Ready for 1, 10 and 100 tenants on the kwok ground, PKI CPU time per
//! tenant, and the operator's peak memory. Prints figures; asserts nothing.
//!
//!   cargo build --release -p orrery && cargo run --release -p orrery-e2e --bin bench [-- 1,10,100]
//!
//! Needs a running ground (`e2e/ground up`). The operator runs as its own process (the release
//! `orrery controller` binary) so its peak RSS can be read from /proc.

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use orrery::api::TenantControlPlane;
use orrery::pki::{self, CurrentPki, TenantPkiSpec};
use orrery_e2e::{Ground, ground_etcd_datastore, ground_etcd_secrets, install_crds, repo_root};
use serde_json::json;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const NAMESPACE_PREFIX: &str = "bench";

#[tokio::main]
async fn main() -> Result<()> {
    let counts: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1,10,100".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .context("tenant counts are comma-separated numbers")
        })
        .collect::<Result<_>>()?;
    pki_cpu_time()?;

    let ground = Ground::get()?;
    install_crds(&ground);
    let client = ground.client().await?;
    ensure_datastore(&ground)?;
    let operator = Operator::start(&ground)?;
    println!("\ntime to Ready (replicas 2 each, all created at once, kwok nodes)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "tenants", "all ready", "p50", "p90", "max"
    );
    for (round, &n) in counts.iter().enumerate() {
        let ns = format!("{NAMESPACE_PREFIX}-{round}-{n}");
        ground.kubectl(&["create", "namespace", &ns]);
        let result = time_to_ready(&client, &ns, n).await;
        ground.kubectl(&["delete", "namespace", &ns, "--wait=true", "--timeout=300s"]);
        let mut times = result?;
        times.sort();
        let pct = |p: f64| {
            times[((times.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(times.len() - 1)]
        };
        println!(
            "{n:>8} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s",
            times.last().unwrap().as_secs_f64(),
            pct(0.5).as_secs_f64(),
            pct(0.9).as_secs_f64(),
            times.last().unwrap().as_secs_f64()
        );
    }
    let peak = peak_rss_kib(operator.0.id())?;
    println!(
        "\noperator peak RSS (VmHWM): {:.1} MiB",
        peak as f64 / 1024.0
    );
    Ok(())
}

/// Creates `n` tenants at once and returns each one's time from creation to Ready.
async fn time_to_ready(client: &Client, ns: &str, n: usize) -> Result<Vec<Duration>> {
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), ns);
    let watch = watcher(api.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);
    let start = Instant::now();
    let mut created = HashMap::new();
    for i in 0..n {
        let name = format!("t{i}");
        let tcp: TenantControlPlane = serde_json::from_value(json!({
            "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name}, "spec": {"version": "v1.34.4", "dataStore": "bench-etcd"}
        }))?;
        api.create(&PostParams::default(), &tcp).await?;
        created.insert(name, start.elapsed());
    }
    let mut ready = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.len() < n {
        let next = tokio::time::timeout_at(deadline.into(), watch.next()).await;
        let Ok(Some(event)) = next else {
            bail!(
                "only {} of {n} tenants became Ready within 300 s",
                ready.len()
            )
        };
        let tcp = event?;
        let is_ready = tcp.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if is_ready && !ready.contains_key(&tcp.name_any()) {
            ready.insert(tcp.name_any(), start.elapsed());
        }
    }
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    Ok(ready.iter().map(|(name, at)| *at - created[name]).collect())
}

/// Thread CPU time spent generating whole tenant PKIs from scratch.
fn pki_cpu_time() -> Result<()> {
    let datastore_ca = pki::generate_ca("bench etcd CA", pki::CA_VALIDITY)?;
    let spec = |i: usize| TenantPkiSpec {
        tenant_name: format!("t{i}"),
        cluster_domain: "cluster.local".into(),
        service_cidr: "10.96.0.0/16".into(),
        api_port: 6443,
        service_dns_names: vec![format!("t{i}.ns.svc")],
        service_ips: vec!["10.96.3.4".parse().unwrap()],
        endpoint: "10.96.3.4:6443".into(),
        cert_sans: vec!["api.example.com".into()],
        validity: Duration::from_secs(365 * 24 * 3600),
        renew_before: Duration::from_secs(30 * 24 * 3600),
        datastore_user: format!("orrery/ns/t{i}"),
    };
    let runs = 200;
    let before = thread_cpu();
    let mut keep = Vec::new();
    for i in 0..runs {
        keep.push(pki::reconcile_pki(
            &spec(i),
            &CurrentPki::default(),
            &datastore_ca,
            SystemTime::now(),
        )?);
    }
    let fresh = (thread_cpu() - before) / runs as u32;
    let before = thread_cpu();
    for (i, desired) in keep.iter().enumerate() {
        let current = CurrentPki {
            ca: Some(desired.ca.clone()),
            front_proxy_ca: Some(desired.front_proxy_ca.clone()),
            service_account: Some(desired.service_account.clone()),
            certs: Some(desired.certs.clone()),
        };
        pki::reconcile_pki(&spec(i), &current, &datastore_ca, SystemTime::now())?;
    }
    let recheck = (thread_cpu() - before) / runs as u32;
    println!(
        "PKI per tenant (CPU, mean of {runs}): issue all {:.2} ms, re-check unchanged {:.2} ms",
        ms(fresh),
        ms(recheck)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time of this thread, from /proc/thread-self/schedstat (nanoseconds on CPU).
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/<pid>/status")
}

/// A DataStore on the ground's own etcd (authentication on).
fn ensure_datastore(ground: &Ground) -> Result<()> {
    ground_etcd_secrets(ground, "orrery-bench");
    ground.kubectl_apply(
        &ground_etcd_datastore(ground, "bench-etcd", "orrery-bench", false).to_string(),
    );
    Ok(())
}

/// The operator process; killed when dropped, whatever way the benchmark ends.
struct Operator(Child);

impl Operator {
    fn start(ground: &Ground) -> Result<Self> {
        let bin = repo_root().join("target/release/orrery");
        if !bin.exists() {
            bail!("build the operator first: cargo build --release -p orrery");
        }
        let child = Command::new(bin)
            .args([
                "controller",
                "--leader-election=false",
                "--tenant-access=false",
                "--metrics-addr=127.0.0.1:0",
            ])
            .args(["--log-format=text"])
            .env("KUBECONFIG", ground.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let mut operator = Operator(child);
        std::thread::sleep(Duration::from_secs(1));
        if let Some(status) = operator.0.try_wait()? {
            bail!("the operator exited at once: {status}");
        }
        Ok(operator)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
