//! Server-side apply of child objects, their labels, and pruning of children no longer wanted.

use crate::{FIELD_MANAGER, Result};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Set on every object Orrery creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "orrery");
/// Names the TenantControlPlane an object belongs to.
pub const TENANT_LABEL: &str = "orrery.dev/tenant";
/// Names the DataStore an object belongs to.
pub const DATASTORE_LABEL: &str = "orrery.dev/datastore";

/// The labels of a child of owner `instance`, playing role `component`.
pub fn child_labels(
    owner_label: &str,
    instance: &str,
    component: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "orrery".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            instance.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (owner_label.to_string(), instance.to_string()),
    ])
}

/// The controller owner reference to `owner`.
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    owner
        .controller_owner_ref(&())
        .expect("owner objects come from the API and have a uid")
}

/// Server-side applies `obj` (which must carry its name) with Orrery's field manager, taking
/// ownership of conflicting fields: Orrery is the source of truth for its children, and this is
/// how a hand edit is undone. Applying unchanged content is a no-op on the server (no new
/// resourceVersion).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj
        .meta()
        .name
        .clone()
        .expect("applied objects have a name");
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Deletes the objects of kind `K` in `namespace` that carry `selector` but are not in `keep`.
/// Returns the names deleted.
pub async fn prune<K>(api: &Api<K>, selector: &str, keep: &[String]) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let mut deleted = Vec::new();
    for obj in api
        .list_metadata(&ListParams::default().labels(selector))
        .await?
    {
        let name = obj.name_any();
        if !keep.contains(&name) && obj.metadata.deletion_timestamp.is_none() {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(name),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}
