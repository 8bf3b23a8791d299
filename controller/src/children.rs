//! Apply that remembers and prunes: every child a reconcile applies is recorded, and afterwards
//! the children of each managed kind that carry the owner's labels (and, in the management
//! cluster, its uid) but were not applied this time are deleted. So a child that stops being
//! desired (an add-on switched off, a VM scaled away) goes, in the management cluster and inside
//! a tenant alike.

use crate::Result;
use crate::apply::apply;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;
use tracing::info;

/// A kind Orrery manages as children, and how to address its objects.
pub trait Child:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The API for objects in `namespace`; for `None`, every namespace (or the cluster).
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self>;
}

macro_rules! namespaced_children {
    ($($kind:ty),*) => {$(
        impl Child for $kind {
            fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self> {
                match namespace {
                    Some(ns) => Api::namespaced(client, ns),
                    None => Api::all(client),
                }
            }
        }
    )*};
}

macro_rules! cluster_children {
    ($($kind:ty),*) => {$(
        impl Child for $kind {
            fn api(client: kube::Client, _namespace: Option<&str>) -> Api<Self> {
                Api::all(client)
            }
        }
    )*};
}

namespaced_children!(
    ConfigMap,
    Secret,
    Service,
    ServiceAccount,
    Deployment,
    DaemonSet,
    StatefulSet,
    PodDisruptionBudget,
    Role,
    RoleBinding
);
cluster_children!(ClusterRole, ClusterRoleBinding, CSIDriver, StorageClass);

/// The children applied in one reconcile of one owner, in one cluster.
pub struct Children {
    client: kube::Client,
    /// Label selector that every child of this owner carries.
    selector: String,
    /// Only objects with a controller owner reference to this uid are pruned (management
    /// cluster); inside a tenant there are no owner references and the labels decide.
    owner_uid: Option<String>,
    /// (kind, namespace, name) of everything applied.
    applied: BTreeSet<(String, String, String)>,
}

fn key<K: Resource<DynamicType = ()>>(
    namespace: Option<&str>,
    name: &str,
) -> (String, String, String) {
    (
        K::kind(&()).into_owned(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

impl Children {
    pub fn new(client: kube::Client, selector: String, owner_uid: Option<String>) -> Self {
        Self {
            client,
            selector,
            owner_uid,
            applied: BTreeSet::new(),
        }
    }

    /// Server-side applies `obj` into its namespace (or cluster-wide) and records it.
    pub async fn apply<K: Child>(&mut self, obj: &K) -> Result<K> {
        let namespace = obj.meta().namespace.clone();
        let applied = apply(&K::api(self.client.clone(), namespace.as_deref()), obj).await?;
        self.applied
            .insert(key::<K>(namespace.as_deref(), &applied.name_any()));
        Ok(applied)
    }

    /// Applies every object of a list, all at once.
    pub async fn apply_all<K: Child>(&mut self, objs: &[K]) -> Result<()> {
        let client = &self.client;
        let applies = objs.iter().map(|obj| async move {
            let namespace = obj.meta().namespace.clone();
            apply(&K::api(client.clone(), namespace.as_deref()), obj).await?;
            Ok::<_, crate::Error>(key::<K>(namespace.as_deref(), &obj.name_any()))
        });
        let keys = futures::future::try_join_all(applies).await?;
        self.applied.extend(keys);
        Ok(())
    }

    /// Deletes the objects of kind `K` (in `namespace`, or in every namespace and cluster-wide
    /// for `None`) that carry the selector and this owner's uid but were not applied. A LIST
    /// that is forbidden means none of them can be ours. Returns the names deleted.
    pub async fn prune<K: Child>(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        let api = K::api(self.client.clone(), namespace);
        let listed = match api
            .list_metadata(&ListParams::default().labels(&self.selector))
            .await
        {
            Ok(list) => list,
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut deleted = Vec::new();
        for obj in listed {
            let ns = obj.namespace();
            let name = obj.name_any();
            if !self.is_stale::<K>(&obj.metadata, ns.as_deref(), &name) {
                continue;
            }
            match K::api(self.client.clone(), ns.as_deref())
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    info!(kind = %K::kind(&()), namespace = ns.as_deref().unwrap_or(""), %name, "pruned a child no longer wanted");
                    deleted.push(name);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    fn is_stale<K: Resource<DynamicType = ()>>(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        if meta.deletion_timestamp.is_some() || self.applied.contains(&key::<K>(namespace, name)) {
            return false;
        }
        match &self.owner_uid {
            Some(uid) => meta
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && &o.uid == uid),
            None => true,
        }
    }

    /// How many objects were applied.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn children(owner: Option<&str>) -> Children {
        // The client is never used by is_stale; any URL will do.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Children::new(client, "a=b".into(), owner.map(Into::into))
    }

    fn owned_by(uid: &str) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_unapplied_objects_of_this_owner_are_stale() {
        let mut c = children(Some("u1"));
        c.applied.insert(key::<ConfigMap>(Some("ns"), "kept"));
        assert!(!c.is_stale::<ConfigMap>(&owned_by("u1"), Some("ns"), "kept"));
        assert!(c.is_stale::<ConfigMap>(&owned_by("u1"), Some("ns"), "gone"));
        assert!(!c.is_stale::<ConfigMap>(&owned_by("u2"), Some("ns"), "other-owner"));
        assert!(!c.is_stale::<ConfigMap>(&ObjectMeta::default(), Some("ns"), "no-owner"));
        let deleting = ObjectMeta {
            deletion_timestamp: Some(Time(jiff::Timestamp::UNIX_EPOCH)),
            ..owned_by("u1")
        };
        assert!(!c.is_stale::<ConfigMap>(&deleting, Some("ns"), "deleting"));

        // Inside a tenant the labels alone decide.
        let mut t = children(None);
        t.applied
            .insert(key::<ConfigMap>(Some("kube-system"), "coredns"));
        assert!(!t.is_stale::<ConfigMap>(&ObjectMeta::default(), Some("kube-system"), "coredns"));
        assert!(t.is_stale::<ConfigMap>(&ObjectMeta::default(), Some("kube-system"), "kube-proxy"));
        assert!(t.is_stale::<ConfigMap>(&ObjectMeta::default(), Some("other"), "coredns"));
    }
}
