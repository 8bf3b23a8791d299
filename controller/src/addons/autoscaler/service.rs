//! The `CloudProvider` service: each call names its caller by the client certificate, reads the
//! [`Index`], and writes through the NodePool's scale subresource and its VMs' annotations. The
//! decisions are the pure functions of [`groups`], [`machines`] and [`template`].

use super::identity::Tenant;
use super::index::Index;
use super::proto::*;
use super::{groups, machines, template};
use crate::api::{Autoscaling, NodePool};
use crate::nodepool::build::DELETE_ANNOTATION;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// How long a write waits for the index to show it.
const SEEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a replicas change that another writer keeps overtaking.
const CONFLICT_ATTEMPTS: usize = 4;

/// The service: the index it reads and the client it writes with.
pub struct Provider {
    client: kube::Client,
    index: Arc<Index>,
    /// The architecture of template Nodes.
    arch: &'static str,
}

impl Provider {
    pub fn new(client: kube::Client, index: Arc<Index>) -> Self {
        Self {
            client,
            index,
            arch: template::architecture(),
        }
    }

    /// The caller's pool behind group `id`, with its bounds.
    fn group(&self, id: &str, caller: &Tenant) -> Result<(Arc<NodePool>, Autoscaling), Status> {
        self.index.pools_ready()?;
        let name = groups::pool_name(id, caller)?;
        let found = self.index.pool(&caller.namespace, name);
        let (_, bounds) = groups::check(found.as_deref(), id, caller)?;
        let bounds = bounds.clone();
        Ok((found.expect("checked above"), bounds))
    }

    /// Sets the replicas of `pool` to what `decide` makes of the current number, through the
    /// scale subresource with the resourceVersion read (a concurrent change is read again).
    /// Returns the (current, new) numbers once the index shows the new one.
    async fn scale(
        &self,
        pool: &NodePool,
        decide: impl Fn(i32) -> Result<i32, Status>,
    ) -> Result<(i32, i32), Status> {
        let (ns, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
        let api = Api::<NodePool>::namespaced(self.client.clone(), &ns);
        for _ in 0..CONFLICT_ATTEMPTS {
            let current: Scale = api.get_scale(&name).await.map_err(kube_status)?;
            let replicas = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let wanted = decide(replicas)?;
            if wanted == replicas {
                return Ok((replicas, wanted));
            }
            let scale = Scale {
                spec: Some(ScaleSpec {
                    replicas: Some(wanted),
                }),
                ..current
            };
            match api
                .replace_scale(&name, &PostParams::default(), &scale)
                .await
            {
                Ok(_) => {
                    let seen = |i: &Index| {
                        i.pool(&ns, &name)
                            .is_some_and(|p| p.spec.replicas == wanted)
                    };
                    if !self.index.until(SEEN_TIMEOUT, seen).await {
                        warn!(pool = %name, namespace = %ns, "the new replicas did not show in the watch in time");
                    }
                    return Ok((replicas, wanted));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(kube_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "NodePool {ns}/{name} kept changing while its replicas were set; try again"
        )))
    }

    /// Marks VMs `names` of `pool` for removal, and waits for the index to show it.
    async fn mark(&self, pool: &NodePool, names: &[String]) -> Result<(), Status> {
        let ns = pool.namespace().unwrap_or_default();
        let api =
            Api::<crate::nodepool::kubevirt::VirtualMachine>::namespaced(self.client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"annotations": {
            DELETE_ANNOTATION: "cluster-autoscaler",
        }}});
        for name in names {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_status)?;
        }
        let seen = |i: &Index| {
            names.iter().all(|n| {
                i.vm(&ns, n).is_some_and(|vm| {
                    vm.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(DELETE_ANNOTATION))
                })
            })
        };
        if !self.index.until(SEEN_TIMEOUT, seen).await {
            warn!(namespace = %ns, "the removal marks did not show in the watch in time");
        }
        Ok(())
    }
}

/// The tenant named by the caller's client certificate. The TLS layer has checked that the
/// certificate comes from the API's CA; without one the connection never gets here.
fn caller<T>(request: &Request<T>) -> Result<Tenant, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    certs
        .first()
        .and_then(|leaf| Tenant::from_certificate(leaf.as_ref()))
        .ok_or_else(|| {
            Status::unauthenticated(
                "the client certificate names no tenant (common name <namespace>/<name>)",
            )
        })
}

/// An apiserver error as the caller should see it.
fn kube_status(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) if s.code == 404 => Status::not_found(s.message),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            Status::failed_precondition(s.message)
        }
        kube::Error::Api(s) if s.code == 403 => {
            Status::internal(format!("the operator may not do this: {}", s.message))
        }
        other => Status::unavailable(format!("the Kubernetes API: {other}")),
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("Orrery has no {what}"))
}

#[tonic::async_trait]
impl CloudProvider for Provider {
    async fn node_groups(
        &self,
        request: Request<NodeGroupsRequest>,
    ) -> Result<Response<NodeGroupsResponse>, Status> {
        let caller = caller(&request)?;
        self.index.pools_ready()?;
        let pools = self.index.pools();
        let node_groups = groups::node_groups(pools.iter().map(|p| &**p), &caller);
        Ok(Response::new(NodeGroupsResponse { node_groups }))
    }

    async fn node_group_for_node(
        &self,
        request: Request<NodeGroupForNodeRequest>,
    ) -> Result<Response<NodeGroupForNodeResponse>, Status> {
        let caller = caller(&request)?;
        self.index.pools_ready()?;
        self.index.vms_ready()?;
        let node = request.into_inner().node.unwrap_or_default();
        let ns = &caller.namespace;
        let group = machines::vm_name(&node)
            .and_then(|vm| self.index.vm(ns, vm))
            .and_then(|vm| machines::pool_of(&vm.metadata).map(String::from))
            .and_then(|pool| self.index.pool(ns, &pool))
            .filter(|pool| groups::belongs_to(pool, &caller))
            .and_then(|pool| groups::node_group(&pool));
        Ok(Response::new(NodeGroupForNodeResponse {
            // A node of no group: an empty id, which the autoscaler leaves alone.
            node_group: Some(group.unwrap_or_default()),
        }))
    }

    async fn pricing_node_price(
        &self,
        request: Request<PricingNodePriceRequest>,
    ) -> Result<Response<PricingNodePriceResponse>, Status> {
        caller(&request)?;
        Err(unimplemented("prices"))
    }

    async fn pricing_pod_price(
        &self,
        request: Request<PricingPodPriceRequest>,
    ) -> Result<Response<PricingPodPriceResponse>, Status> {
        caller(&request)?;
        Err(unimplemented("prices"))
    }

    async fn gpu_label(
        &self,
        request: Request<GpuLabelRequest>,
    ) -> Result<Response<GpuLabelResponse>, Status> {
        caller(&request)?;
        Err(unimplemented("GPU machines"))
    }

    async fn get_available_gpu_types(
        &self,
        request: Request<GetAvailableGpuTypesRequest>,
    ) -> Result<Response<GetAvailableGpuTypesResponse>, Status> {
        caller(&request)?;
        Err(unimplemented("GPU machines"))
    }

    async fn cleanup(
        &self,
        request: Request<CleanupRequest>,
    ) -> Result<Response<CleanupResponse>, Status> {
        caller(&request)?;
        Ok(Response::new(CleanupResponse {}))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        // The index is always current: nothing to refresh.
        caller(&request)?;
        Ok(Response::new(RefreshResponse {}))
    }

    async fn node_group_target_size(
        &self,
        request: Request<NodeGroupTargetSizeRequest>,
    ) -> Result<Response<NodeGroupTargetSizeResponse>, Status> {
        let caller = caller(&request)?;
        let (pool, _) = self.group(&request.get_ref().id, &caller)?;
        Ok(Response::new(NodeGroupTargetSizeResponse {
            target_size: pool.spec.replicas,
        }))
    }

    async fn node_group_increase_size(
        &self,
        request: Request<NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<NodeGroupIncreaseSizeResponse>, Status> {
        let caller = caller(&request)?;
        let NodeGroupIncreaseSizeRequest { id, delta } = request.into_inner();
        let (pool, bounds) = self.group(&id, &caller)?;
        let (from, to) = self
            .scale(&pool, |n| groups::increased(&id, &bounds, n, delta))
            .await?;
        info!(tenant = %caller, group = %id, from, to, "node group increased");
        Ok(Response::new(NodeGroupIncreaseSizeResponse {}))
    }

    async fn node_group_delete_nodes(
        &self,
        request: Request<NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<NodeGroupDeleteNodesResponse>, Status> {
        let caller = caller(&request)?;
        let NodeGroupDeleteNodesRequest { nodes, id } = request.into_inner();
        let (pool, bounds) = self.group(&id, &caller)?;
        self.index.vms_ready()?;
        let vms = self.index.vms_of(&pool);
        let vms: Vec<_> = vms.iter().collect();
        let marked = machines::to_remove(&id, &nodes, &vms)?;
        if marked.is_empty() {
            return Ok(Response::new(NodeGroupDeleteNodesResponse {}));
        }
        // Refused before anything is marked when the group would fall below its minimum.
        let replicas = Api::<NodePool>::namespaced(self.client.clone(), &caller.namespace)
            .get_scale(&pool.name_any())
            .await
            .map_err(kube_status)?
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        groups::after_deleting(&id, &bounds, replicas, marked.len())?;
        // Marks first, then the smaller number: the pool controller removes the marked machines
        // first, so the lower replicas can never take another one. Should it run in between, it
        // does not replace the marked machines while they leave (see nodepool::plan).
        self.mark(&pool, &marked).await?;
        let (from, to) = self
            .scale(&pool, |n| {
                groups::after_deleting(&id, &bounds, n, marked.len())
            })
            .await?;
        info!(tenant = %caller, group = %id, from, to, machines = ?marked, "node group nodes deleted");
        Ok(Response::new(NodeGroupDeleteNodesResponse {}))
    }

    async fn node_group_decrease_target_size(
        &self,
        request: Request<NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<NodeGroupDecreaseTargetSizeResponse>, Status> {
        let caller = caller(&request)?;
        let NodeGroupDecreaseTargetSizeRequest { delta, id } = request.into_inner();
        let (pool, bounds) = self.group(&id, &caller)?;
        self.index.vms_ready()?;
        let vms = self.index.vms_of(&pool);
        let existing = machines::existing(&vms.iter().collect::<Vec<_>>());
        let (from, to) = self
            .scale(&pool, |n| {
                groups::decreased_target(&id, &bounds, n, delta, existing)
            })
            .await?;
        info!(tenant = %caller, group = %id, from, to, "node group target decreased");
        Ok(Response::new(NodeGroupDecreaseTargetSizeResponse {}))
    }

    async fn node_group_nodes(
        &self,
        request: Request<NodeGroupNodesRequest>,
    ) -> Result<Response<NodeGroupNodesResponse>, Status> {
        let caller = caller(&request)?;
        let (pool, _) = self.group(&request.get_ref().id, &caller)?;
        self.index.vms_ready()?;
        let vms = self.index.vms_of(&pool);
        let status = pool.status.clone().unwrap_or_default();
        let instances = machines::instances(&vms.iter().collect::<Vec<_>>(), &status.machines);
        Ok(Response::new(NodeGroupNodesResponse { instances }))
    }

    async fn node_group_template_node_info(
        &self,
        request: Request<NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<NodeGroupTemplateNodeInfoResponse>, Status> {
        let caller = caller(&request)?;
        let (pool, _) = self.group(&request.get_ref().id, &caller)?;
        let node = template::template_node(&pool, self.arch)?;
        // Both fields: autoscalers up to v1.34 read the message, later ones the bytes.
        #[allow(deprecated)]
        let response = NodeGroupTemplateNodeInfoResponse {
            node_bytes: node.encode_to_vec(),
            node_info: Some(node),
            resource_slice_bytes: Vec::new(),
        };
        Ok(Response::new(response))
    }

    async fn node_group_get_options(
        &self,
        request: Request<NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<NodeGroupAutoscalingOptionsResponse>, Status> {
        // Options given back replace all of the autoscaler's defaults, including those this
        // version of the API cannot carry; Unimplemented keeps them all.
        caller(&request)?;
        Err(unimplemented("per-group autoscaling options"))
    }
}
