//! Every read `describe` makes for one tenant: its children in the management cluster, the
//! NodePools of its namespace and, unless told not to, a look inside the tenant through its admin kubeconfig, bounded by a short
//! timeout. A read that is refused or fails is kept as such, to be shown in its row.

use super::super::error::{code, forbidden};
use crate::api::{DataStore, NodePool, TenantControlPlane};
use crate::controlplane::build::{Names, selector_labels};
use crate::tenant::ADDON_LABEL;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, ListParams, ObjectList};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::Duration;

/// How long the look inside a tenant may take in all.
pub const TENANT_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one read.
#[derive(Clone, Debug)]
pub enum Access<T> {
    Read(T),
    /// RBAC refused the read.
    Forbidden,
    Failed(String),
}

/// What was read inside the tenant, or why nothing was.
#[derive(Clone, Debug)]
pub enum Inside {
    /// Not asked: told not to, or the tenant has no kubeconfig yet.
    Skipped(String),
    /// Asked, and no answer.
    Unreachable(String),
    Read(InTenant),
}

/// The add-on workloads (labelled `orrery.dev/addon`) and the nodes of a tenant.
#[derive(Clone, Debug, Default)]
pub struct InTenant {
    pub deployments: Vec<Deployment>,
    pub daemon_sets: Vec<DaemonSet>,
    pub nodes: Vec<Node>,
}

/// Everything `describe` shows of one tenant.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub tcp: TenantControlPlane,
    pub datastore: Access<Option<DataStore>>,
    pub deployment: Access<Option<Deployment>>,
    pub service: Access<Option<Service>>,
    pub pods: Access<Vec<Pod>>,
    pub certificates: Access<Option<Secret>>,
    /// The NodePools of the tenant's namespace, sorted by name; the tree keeps the tenant's own.
    pub pools: Access<Vec<NodePool>>,
    pub inside: Inside,
}

/// The DataStore the tenant uses, or will use.
pub fn datastore_name(tcp: &TenantControlPlane) -> Option<String> {
    tcp.status
        .as_ref()
        .and_then(|s| s.data_store.clone())
        .or_else(|| tcp.spec.data_store.clone())
}

pub async fn fetch(client: &Client, tcp: TenantControlPlane, look_inside: bool) -> Fetched {
    let ns = tcp.namespace().unwrap_or_default();
    let names = Names::new(&tcp);
    let selector = selector_labels(&tcp)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let datastore = async {
        match datastore_name(&tcp) {
            Some(name) => get(&Api::<DataStore>::all(client.clone()), &name).await,
            None => Access::Read(None),
        }
    };
    let inside = async {
        if look_inside {
            inside(client, &tcp, &ns).await
        } else {
            Inside::Skipped("not asked (--no-tenant)".into())
        }
    };
    let (workload, certs) = (names.workload(), names.certs());
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let pools = Api::<NodePool>::namespaced(client.clone(), &ns);
    let control_plane_pods = ListParams::default().labels(&selector);
    let (datastore, deployment, service, pods, certificates, pools, inside) = tokio::join!(
        datastore,
        get(&deployments, &workload),
        get(&services, &workload),
        list(&pods, &control_plane_pods),
        get(&secrets, &certs),
        node_pools(&pools),
        inside,
    );
    Fetched {
        tcp,
        datastore,
        deployment,
        service,
        pods,
        certificates,
        pools,
        inside,
    }
}

async fn get<K>(api: &Api<K>, name: &str) -> Access<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await {
        Ok(found) => Access::Read(found),
        Err(e) if code(&e) == Some(403) => Access::Forbidden,
        Err(e) => Access::Failed(e.to_string()),
    }
}

async fn list<K>(api: &Api<K>, params: &ListParams) -> Access<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    listed(api.list(params).await)
}

/// The namespace's NodePools; a management cluster whose Orrery predates them has none.
async fn node_pools(api: &Api<NodePool>) -> Access<Vec<NodePool>> {
    match api.list(&ListParams::default()).await {
        Err(e) if code(&e) == Some(404) => Access::Read(Vec::new()),
        result => listed(result),
    }
}

fn listed<K: Resource + Clone>(result: kube::Result<ObjectList<K>>) -> Access<Vec<K>> {
    match result {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(ResourceExt::name_any);
            Access::Read(items)
        }
        Err(e) if code(&e) == Some(403) => Access::Forbidden,
        Err(e) => Access::Failed(e.to_string()),
    }
}

/// The add-on workloads and nodes, read with the tenant's admin kubeconfig.
async fn inside(client: &Client, tcp: &TenantControlPlane, ns: &str) -> Inside {
    let Some(secret_ref) = tcp
        .status
        .as_ref()
        .and_then(|s| s.kubeconfig_secret_ref.clone())
    else {
        return Inside::Skipped("the tenant has no kubeconfig yet".into());
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let secret = match get(&secrets, &secret_ref.name).await {
        Access::Read(Some(secret)) => secret,
        Access::Read(None) => {
            return Inside::Skipped(format!("its Secret {} is not there yet", secret_ref.name));
        }
        Access::Forbidden => {
            let what = format!("Secret {}", secret_ref.name);
            return Inside::Unreachable(forbidden("get", &what, "secrets", Some(ns)));
        }
        Access::Failed(e) => return Inside::Unreachable(e),
    };
    let Some(kubeconfig) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
    else {
        return Inside::Unreachable(format!(
            "Secret {} has no kubeconfig under key {:?}",
            secret_ref.name, secret_ref.key
        ));
    };
    let endpoint = tcp
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .unwrap_or_default();
    match tokio::time::timeout(TENANT_TIMEOUT, read_tenant(&kubeconfig)).await {
        Ok(Ok(read)) => Inside::Read(read),
        Ok(Err(e)) => Inside::Unreachable(format!("the tenant apiserver at {endpoint}: {e}")),
        Err(_) => Inside::Unreachable(format!(
            "the tenant apiserver at {endpoint} did not answer within {}s",
            TENANT_TIMEOUT.as_secs()
        )),
    }
}

async fn read_tenant(kubeconfig: &str) -> crate::Result<InTenant> {
    let tenant = crate::tenant::apply::client(kubeconfig).await?;
    let addons = ListParams::default().labels(ADDON_LABEL);
    let deployments = Api::<Deployment>::namespaced(tenant.clone(), "kube-system");
    let daemon_sets = Api::<DaemonSet>::namespaced(tenant.clone(), "kube-system");
    let nodes = Api::<Node>::all(tenant);
    let all = ListParams::default();
    let (deployments, daemon_sets, nodes) = tokio::try_join!(
        deployments.list(&addons),
        daemon_sets.list(&addons),
        nodes.list(&all),
    )?;
    let mut nodes = nodes.items;
    nodes.sort_by_key(ResourceExt::name_any);
    Ok(InTenant {
        deployments: deployments.items,
        daemon_sets: daemon_sets.items,
        nodes,
    })
}
