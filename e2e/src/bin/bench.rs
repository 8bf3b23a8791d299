//! Benchmark: time to Ready for 1, 10 and 100 tenants (or any counts) on the kwok ground, the
//! operator's reconciles and API requests per tenant, writes per idle tenant over a quiet window
//! after the last round, PKI CPU time per tenant, and the operator's peak memory. Prints
//! figures; asserts nothing.
//!
//!   cargo build --release -p orrery -p orrery-e2e && target/release/bench [COUNTS [IDLE_SECONDS]]
//!   target/release/bench 100,1000 300
//!
//! Needs a running ground (`e2e/ground up`). The operator runs as its own process (the release
//! `orrery controller` binary) so its peak RSS can be read from /proc.

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PostParams};
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

/// Tenants are created in batches of this many; each batch is waited on before the next.
const BATCH: usize = 100;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts: Vec<usize> = args
        .first()
        .map_or("1,10,100", String::as_str)
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .context("tenant counts are comma-separated numbers")
        })
        .collect::<Result<_>>()?;
    let idle = Duration::from_secs(
        args.get(1)
            .map(|s| s.parse().context("the idle window is a number of seconds"))
            .transpose()?
            .unwrap_or(300),
    );
    pki_cpu_time()?;

    let ground = Ground::get()?;
    install_crds(&ground);
    let client = ground.client().await?;
    ensure_datastore(&ground)?;
    let operator = Operator::start(&ground)?;
    println!("\ntime to Ready (replicas 2 each, created in batches of {BATCH}, kwok nodes)");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "tenants", "all ready", "p50", "p90", "max", "reconciles/t", "requests/t"
    );
    for (round, &n) in counts.iter().enumerate() {
        let ns = format!("{NAMESPACE_PREFIX}-{round}-{n}");
        ground.kubectl(&["create", "namespace", &ns]);
        let before = operator.metrics()?;
        let started = Instant::now();
        let result = time_to_ready(&client, &ns, n).await;
        let all_ready = started.elapsed();
        let after = operator.metrics()?;
        let mut times = match result {
            Ok(times) => times,
            Err(e) => {
                ground.kubectl(&["delete", "namespace", &ns, "--wait=true", "--timeout=600s"]);
                return Err(e);
            }
        };
        times.sort();
        let pct = |p: f64| {
            times[((times.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(times.len() - 1)]
        };
        let per_tenant = |f: fn(&Scrape) -> f64| (f(&after) - f(&before)) / n as f64;
        println!(
            "{n:>8} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s {:>14.1} {:>14.1}",
            all_ready.as_secs_f64(),
            pct(0.5).as_secs_f64(),
            pct(0.9).as_secs_f64(),
            times.last().unwrap().as_secs_f64(),
            per_tenant(Scrape::tenant_reconciles),
            per_tenant(Scrape::requests),
        );
        if round + 1 == counts.len() && !idle.is_zero() {
            idle_window(&client, &operator, &ns, n, idle).await?;
        }
        ground.kubectl(&["delete", "namespace", &ns, "--wait=true", "--timeout=600s"]);
    }
    let peak = peak_rss_kib(operator.child.id())?;
    println!(
        "\noperator peak RSS (VmHWM): {:.1} MiB",
        peak as f64 / 1024.0
    );
    Ok(())
}

/// Watches every object of the tenants in `ns` for `window` while nothing changes and counts
/// the writes (each new resourceVersion) and the operator's API requests.
async fn idle_window(
    client: &Client,
    operator: &Operator,
    ns: &str,
    n: usize,
    window: Duration,
) -> Result<()> {
    let before = operator.metrics()?;
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = |kind: &'static str| {
        let writes = writes.clone();
        let stream = match kind {
            "TenantControlPlane" => count_writes::<TenantControlPlane>(client, ns),
            "Secret" => count_writes::<Secret>(client, ns),
            "ConfigMap" => count_writes::<ConfigMap>(client, ns),
            "Service" => count_writes::<Service>(client, ns),
            "Deployment" => count_writes::<Deployment>(client, ns),
            _ => count_writes::<PodDisruptionBudget>(client, ns),
        };
        tokio::spawn(async move {
            let mut stream = stream;
            let mut listed = false;
            while let Some(seen) = stream.next().await {
                match seen {
                    Seen::Listed => listed = true,
                    Seen::Write if listed => {
                        writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    let tasks: Vec<_> = [
        "TenantControlPlane",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    .into_iter()
    .map(watch)
    .collect();
    tokio::time::sleep(window).await;
    tasks.iter().for_each(|t| t.abort());
    let after = operator.metrics()?;
    let writes = writes.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "idle {n} tenants for {} s: {:.2} writes per tenant ({writes} in all), {:.1} API requests per tenant ({:.1} of them reads), {:.2} reconciles per tenant",
        window.as_secs(),
        writes as f64 / n as f64,
        (after.requests() - before.requests()) / n as f64,
        (after.reads() - before.reads()) / n as f64,
        (after.tenant_reconciles() - before.tenant_reconciles()) / n as f64,
    );
    Ok(())
}

/// What a watch saw: the end of its initial list, or a write.
enum Seen {
    Listed,
    Write,
    Other,
}

/// A watch on kind `K` in `ns` that only says what it saw.
fn count_writes<K>(client: &Client, ns: &str) -> futures::stream::BoxStream<'static, Seen>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher(
        Api::<K>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .map(|e| match e {
        Ok(watcher::Event::InitDone) => Seen::Listed,
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Seen::Write,
        _ => Seen::Other,
    })
    .boxed()
}

/// Creates `n` tenants in batches of [`BATCH`], each batch at once, and returns each one's time
/// from creation to Ready.
async fn time_to_ready(client: &Client, ns: &str, n: usize) -> Result<Vec<Duration>> {
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), ns);
    let watch = watcher(api.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);
    let start = Instant::now();
    let mut created = HashMap::new();
    let mut ready = HashMap::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        for i in batch {
            let name = format!("t{i}");
            let tcp: TenantControlPlane = serde_json::from_value(json!({
                "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
                "metadata": {"name": name}, "spec": {"version": "v1.34.4", "dataStore": "bench-etcd"}
            }))?;
            api.create(&PostParams::default(), &tcp).await?;
            created.insert(name, start.elapsed());
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while ready.len() < created.len() {
            let next = tokio::time::timeout_at(deadline.into(), watch.next()).await;
            let Ok(Some(event)) = next else {
                bail!(
                    "only {} of {} tenants became Ready within 300 s",
                    ready.len(),
                    created.len()
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
    }
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
struct Operator {
    child: Child,
    metrics_port: u16,
}

impl Operator {
    fn start(ground: &Ground) -> Result<Self> {
        let bin = repo_root().join("target/release/orrery");
        if !bin.exists() {
            bail!("build the operator first: cargo build --release -p orrery");
        }
        // A free port for the metrics server, which the benchmark scrapes.
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args([
                "controller",
                "--leader-election=false",
                "--tenant-access=false",
                &format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            ])
            .args(["--log-format=text"])
            .env("KUBECONFIG", ground.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let mut operator = Operator {
            child,
            metrics_port,
        };
        std::thread::sleep(Duration::from_secs(1));
        if let Some(status) = operator.child.try_wait()? {
            bail!("the operator exited at once: {status}");
        }
        Ok(operator)
    }

    /// The operator's metrics, scraped from its /metrics endpoint.
    fn metrics(&self) -> Result<Scrape> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(Scrape(text))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scrape of the operator's Prometheus metrics.
struct Scrape(String);

impl Scrape {
    /// Sum of the samples of `metric` whose labels satisfy `keep`.
    fn sum(&self, metric: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(metric)?;
                let (labels, value) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once("} ")?,
                    None => ("", rest.strip_prefix(' ')?),
                };
                keep(labels).then(|| value.trim().parse::<f64>().ok())?
            })
            .sum()
    }

    fn requests(&self) -> f64 {
        self.sum("orrery_kube_requests_total", |_| true)
    }

    fn reads(&self) -> f64 {
        self.sum("orrery_kube_requests_total", |l| {
            ["get", "list", "watch"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
    }

    fn tenant_reconciles(&self) -> f64 {
        self.sum("orrery_reconcile_total", |l| {
            l.contains("controller=\"tenantcontrolplane\"")
        })
    }
}
