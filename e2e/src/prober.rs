//! A client that keeps asking a tenant apiserver while it changes: every interval it reads
//! `/readyz` and creates a ConfigMap, and it counts what failed.
//!
//! It reads `/readyz` as a health checker does (a load balancer, the kubelet): on a new
//! connection each time, so through the Service to a replica that is ready. A replica that is
//! stopping answers its own `/readyz` with 500 by design, and a connection kept open to it would
//! report that. It writes as kubectl and client-go do: HTTP/2 over one connection, which a
//! replica going away closes gracefully (GOAWAY), the next request taking a new one.

use anyhow::{Context as _, Result, anyhow};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tonic::codegen::http::{Method, Request};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// What a probe run saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub readyz_ok: u64,
    pub writes_ok: u64,
    /// Every failed request: when (since the start), what, and why.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl ProbeReport {
    pub fn requests(&self) -> u64 {
        self.readyz_ok + self.writes_ok + self.failures.len() as u64
    }
}

/// A running prober; [`Prober::stop`] ends it and returns its report.
pub struct Prober {
    stop: Arc<AtomicBool>,
    task: JoinHandle<ProbeReport>,
}

/// The CA, client certificate and key of an admin kubeconfig (its `*-data` fields), as PEM.
pub struct Credentials {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Credentials {
    pub fn from_kubeconfig(text: &str) -> Result<Self> {
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        let field = |list: &str, item: &str, key: &str| -> Result<Vec<u8>> {
            let value = config[list][0][item][key]
                .as_str()
                .with_context(|| format!("kubeconfig has no {list}[0].{item}.{key}"))?;
            Ok(base64::engine::general_purpose::STANDARD.decode(value)?)
        };
        Ok(Self {
            ca: field("clusters", "cluster", "certificate-authority-data")?,
            cert: field("users", "user", "client-certificate-data")?,
            key: field("users", "user", "client-key-data")?,
        })
    }
}

impl Prober {
    /// Connects to `https://<endpoint>` and starts probing every `interval`, creating
    /// ConfigMaps `<prefix>-N` in `namespace`.
    pub async fn start(
        endpoint: &str,
        credentials: &Credentials,
        namespace: &str,
        prefix: &str,
        interval: Duration,
    ) -> Result<Self> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&credentials.ca))
            .identity(Identity::from_pem(&credentials.cert, &credentials.key));
        let target = Channel::from_shared(format!("https://{endpoint}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let channel = target
            .connect()
            .await
            .with_context(|| format!("connect to {endpoint}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/api/v1/namespaces/{namespace}/configmaps");
        let (flag, prefix) = (stop.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut report = ProbeReport::default();
            let mut tick = tokio::time::interval(interval);
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let at = start.elapsed().as_secs_f64();
                let readyz = async {
                    let fresh = target.connect().await?;
                    send(&fresh, Method::GET, "/readyz", None, 200).await
                };
                match readyz.await {
                    Ok(()) => report.readyz_ok += 1,
                    Err(e) => report
                        .failures
                        .push(format!("{at:.1} s GET /readyz: {e:#}")),
                }
                n += 1;
                let body = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{prefix}-{n}")},
                    "data": {"n": n.to_string()}
                })
                .to_string();
                match send(&channel, Method::POST, &path, Some(body), 201).await {
                    Ok(()) => report.writes_ok += 1,
                    Err(e) => report
                        .failures
                        .push(format!("{at:.1} s POST {prefix}-{n}: {e:#}")),
                }
            }
            report.elapsed = start.elapsed();
            report
        });
        Ok(Self { stop, task })
    }

    pub async fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the prober task")
    }
}

/// One request; Ok when it answered `expected`.
async fn send(
    channel: &Channel,
    method: Method,
    path: &str,
    json: Option<String>,
    expected: u16,
) -> Result<()> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    let body = match json {
        Some(text) => {
            request = request.header("content-type", "application/json");
            Body::new(text)
        }
        None => Body::empty(),
    };
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    let response = channel.call(request.body(body)?).await?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    if status == expected {
        Ok(())
    } else {
        Err(anyhow!("answered {status}: {}", text.trim()))
    }
}
