//! Server-side apply of child objects, and the labels and owner references they carry.

use crate::{FIELD_MANAGER, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use tracing::warn;

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
///
/// A hand edit can also make the apply invalid: a Service port changed by hand stays owned by the
/// editor, and ours, with the same port name, then collides with it (422). Such an object is
/// repaired by a merge patch, which replaces lists as a whole, and applied again.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj
        .meta()
        .name
        .clone()
        .expect("applied objects have a name");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(obj)).await {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            warn!(%name, error = %e.message, "apply refused; replacing the hand-edited fields");
            let repair = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.patch(&name, &repair, &Patch::Merge(obj)).await?;
            Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
        }
        result => Ok(result?),
    }
}
