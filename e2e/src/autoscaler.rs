//! A client of Orrery's cluster-autoscaler API, set up the way a tenant's upstream autoscaler
//! sets itself up: from the cloud-config Secret Orrery made for the tenant
//! (`<tenant>-cluster-autoscaler`: `cloud-config` with `address`, and the files it names,
//! `tls.crt`, `tls.key`, `ca.crt`). The client is generated from the same `.proto` as the
//! server (`orrery::addons::autoscaler::proto`).
//!
//! ```text
//! let config = CloudConfig::read(&client, "tenants", "demo").await?;
//! let mut api = config.connect(Some("10.96.0.20:8443")).await?;   // the Service's IP
//! api.node_groups(proto::NodeGroupsRequest {}).await?;
//! ```

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use orrery::addons::autoscaler::deploy::CLOUD_CONFIG;
pub use orrery::addons::autoscaler::proto;
use proto::CloudProviderClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A connected client of the API.
pub type Client = CloudProviderClient<Channel>;

/// What a tenant's autoscaler Secret gives it.
#[derive(Clone)]
pub struct CloudConfig {
    /// `host:port` of the API, as the cloud-config names it.
    pub address: String,
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl CloudConfig {
    /// The cloud-config of tenant `tenant` in `namespace`.
    pub async fn read(client: &kube::Client, namespace: &str, tenant: &str) -> Result<Self> {
        let name = format!("{tenant}-cluster-autoscaler");
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{name}"))?;
        Self::from_secret(&secret)
    }

    /// The cloud-config in `secret`. The key, certificate and CA are taken from the files the
    /// cloud-config names, which are keys of the same Secret (mounted together in the pod).
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &str| -> Result<String> {
            let bytes = data
                .get(key)
                .with_context(|| format!("the Secret has no {key}"))?;
            Ok(String::from_utf8(bytes.0.clone())?)
        };
        let config: serde_json::Value = serde_yaml_ng::from_str(&text(CLOUD_CONFIG)?)
            .context("the cloud-config is not YAML")?;
        let field = |name: &str| -> Result<String> {
            config[name]
                .as_str()
                .map(String::from)
                .with_context(|| format!("the cloud-config has no {name}"))
        };
        let file = |name: &str| -> Result<String> {
            let path = field(name)?;
            let key = path.rsplit('/').next().unwrap_or_default();
            text(key).with_context(|| format!("{name} names {path}"))
        };
        Ok(Self {
            address: field("address")?,
            cert: file("cert")?,
            key: file("key")?,
            ca: file("cacert")?,
        })
    }

    /// The host the server certificate must name: that of `address`.
    pub fn host(&self) -> Result<&str> {
        match self.address.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() => Ok(host),
            _ => bail!("address {:?} is not host:port", self.address),
        }
    }

    /// Connects with the client key pair, checking the server against the CA for the host of
    /// `address`, as the autoscaler does. `dial` (`host:port`) overrides where to connect, for a
    /// client outside the management cluster's DNS (the Service's IP, or a port of this process).
    pub async fn connect(&self, dial: Option<&str>) -> Result<Client> {
        let tls = ClientTlsConfig::new()
            .domain_name(self.host()?)
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key));
        connect(dial.unwrap_or(&self.address), tls).await
    }
}

/// Connects to `address` over TLS as `tls` says, with no retries.
pub async fn connect(address: &str, tls: ClientTlsConfig) -> Result<Client> {
    let channel = Endpoint::from_shared(format!("https://{address}"))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the autoscaler API at {address}"))?;
    Ok(CloudProviderClient::new(channel))
}
