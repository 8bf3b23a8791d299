//! The API over real mutual TLS, without a cluster: the server of [`super::server`] on a local
//! port, its index fed by hand (as watches would feed it), and clients generated from the same
//! `.proto` holding certificates of the API's CA. Writes need an apiserver and are proved by the
//! end-to-end test (`e2e/tests/autoscaler.rs`).

use super::authority::{client_profile, server_profile};
use super::fixtures::pool;
use super::identity::Tenant;
use super::index::{Index, VmMeta};
use super::proto::instance_status::InstanceState;
use super::proto::*;
use super::service::Provider;
use super::{ApiEndpoint, server};
use crate::api::NodePool;
use crate::nodepool::build::POOL_LABEL;
use crate::pki::{self, CertProfile, KeyPairPem};
use futures::StreamExt;
use kube::runtime::watcher::Event;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SCALED: &str = "replicas: 2\nautoscaling: {minReplicas: 1, maxReplicas: 4}\n";

fn vm(ns: &str, name: &str, pool: &str) -> VmMeta {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": ns, "labels": {POOL_LABEL: pool}}
    }))
    .unwrap()
}

/// The events of a first list of `items`.
fn listed<K>(
    items: Vec<K>,
) -> impl futures::Stream<Item = kube::runtime::watcher::Result<Event<K>>> {
    let mut all = vec![Ok(Event::Init)];
    all.extend(items.into_iter().map(|i| Ok(Event::InitApply(i))));
    all.push(Ok(Event::InitDone));
    futures::stream::iter(all)
}

/// An index holding `pools` and `vms`, both listed.
async fn index(pools: Vec<NodePool>, vms: Vec<VmMeta>) -> Arc<Index> {
    let (index, feeds) = Index::new();
    feeds.pools.reflect(listed(pools)).collect::<Vec<_>>().await;
    feeds.vms.reflect(listed(vms)).collect::<Vec<_>>().await;
    Arc::new(index)
}

struct Running {
    port: u16,
    ca: KeyPairPem,
    api: ApiEndpoint,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The server on a local port, with a fresh CA and server certificate.
async fn start(index: Arc<Index>) -> Running {
    let api = ApiEndpoint {
        service: "orrery-autoscaler".into(),
        namespace: "orrery-system".into(),
        port: 0,
    };
    let ca = pki::generate_ca("test API CA", Duration::from_secs(3600)).unwrap();
    let cert = pki::issue(&ca, &server_profile(&api), SystemTime::now()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Writes are not called here: the client points at a closed port.
    let kube =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
    let provider = Arc::new(Provider::new(kube, index));
    let stop = CancellationToken::new();
    let incoming = server::incoming(Arc::new(listener));
    let stopped = stop.clone().cancelled_owned();
    let pki = (ca.clone(), cert);
    tokio::spawn(async move { server::serve_tls(provider, &pki, incoming, stopped).await });
    Running {
        port,
        ca,
        api,
        stop,
    }
}

/// A client presenting `identity` (none: no certificate).
async fn client(
    r: &Running,
    identity: Option<&KeyPairPem>,
) -> Result<CloudProviderClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .domain_name(r.api.host())
        .ca_certificate(Certificate::from_pem(&r.ca.cert));
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", r.port))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(CloudProviderClient::new(channel))
}

fn issued(r: &Running, profile: &CertProfile) -> KeyPairPem {
    pki::issue(&r.ca, profile, SystemTime::now()).unwrap()
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |s| s.code())
}

#[tokio::test]
async fn a_tenant_reads_its_own_node_groups_over_mutual_tls() {
    let pools = vec![
        pool("ns", "workers", "alpha", SCALED),
        pool(
            "ns",
            "zero",
            "alpha",
            "replicas: 0\nautoscaling: {minReplicas: 0, maxReplicas: 3}\ntemplate: {cores: 2, memory: 4Gi}",
        ),
        pool("ns", "theirs", "beta", SCALED),
    ];
    let vms = vec![
        vm("ns", "workers-a", "workers"),
        vm("ns", "theirs-b", "theirs"),
    ];
    let r = start(index(pools, vms).await).await;
    let alpha = issued(&r, &client_profile(&Tenant::new("ns", "alpha")));
    let mut c = client(&r, Some(&alpha)).await.unwrap();

    c.refresh(RefreshRequest {}).await.unwrap();
    let groups = c
        .node_groups(NodeGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = groups.node_groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["ns/workers", "ns/zero"]);

    let group_of = |name: &str| NodeGroupForNodeRequest {
        node: Some(ExternalGrpcNode {
            provider_id: format!("kubevirt://{name}"),
            name: name.into(),
            ..Default::default()
        }),
    };
    let mine = c.node_group_for_node(group_of("workers-a")).await.unwrap();
    assert_eq!(mine.into_inner().node_group.unwrap().id, "ns/workers");
    let theirs = c.node_group_for_node(group_of("theirs-b")).await.unwrap();
    assert_eq!(
        theirs.into_inner().node_group.unwrap().id,
        "",
        "another tenant's node"
    );

    let size = c
        .node_group_target_size(NodeGroupTargetSizeRequest {
            id: "ns/workers".into(),
        })
        .await
        .unwrap();
    assert_eq!(size.into_inner().target_size, 2);
    let nodes = c
        .node_group_nodes(NodeGroupNodesRequest {
            id: "ns/workers".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nodes.instances.len(), 1);
    assert_eq!(nodes.instances[0].id, "kubevirt://workers-a");
    assert_eq!(
        nodes.instances[0].status.as_ref().unwrap().instance_state(),
        InstanceState::InstanceCreating
    );

    let template = c
        .node_group_template_node_info(NodeGroupTemplateNodeInfoRequest {
            id: "ns/zero".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let node =
        <kubernetes::Node as prost::Message>::decode(template.node_bytes.as_slice()).unwrap();
    #[allow(deprecated)]
    let embedded = template.node_info.unwrap();
    assert_eq!(node, embedded);
    assert_eq!(node.status.unwrap().capacity["cpu"].string, "2");

    for id in ["ns/theirs", "other/workers"] {
        let denied = c
            .node_group_target_size(NodeGroupTargetSizeRequest { id: id.into() })
            .await;
        assert_eq!(code(denied), Code::PermissionDenied, "{id}");
        let denied = c
            .node_group_increase_size(NodeGroupIncreaseSizeRequest {
                id: id.into(),
                delta: 1,
            })
            .await;
        assert_eq!(code(denied), Code::PermissionDenied, "{id}");
    }
    assert_eq!(
        code(c.gpu_label(GpuLabelRequest {}).await),
        Code::Unimplemented
    );
}

#[tokio::test]
async fn a_caller_without_a_tenant_certificate_is_refused() {
    let r = start(index(vec![pool("ns", "workers", "alpha", SCALED)], vec![]).await).await;
    // No certificate, or one of another CA: the handshake fails or no call gets an answer.
    let other_ca = pki::generate_ca("another CA", Duration::from_secs(3600)).unwrap();
    let profile = client_profile(&Tenant::new("ns", "alpha"));
    let forged = pki::issue(&other_ca, &profile, SystemTime::now()).unwrap();
    for identity in [None, Some(&forged)] {
        let answered = match client(&r, identity).await {
            Err(_) => false,
            Ok(mut c) => c.refresh(RefreshRequest {}).await.is_ok(),
        };
        assert!(!answered, "identity {:?}", identity.map(|p| &p.cert));
    }
    // A certificate of the API's CA that names no tenant.
    let nameless = issued(
        &r,
        &CertProfile::client("system:admin", &[], Duration::from_secs(600)),
    );
    let mut c = client(&r, Some(&nameless)).await.unwrap();
    assert_eq!(
        code(c.node_groups(NodeGroupsRequest {}).await),
        Code::Unauthenticated
    );
}
