//! The tenant phase of a reconcile: once a control-plane pod is available and the tenant
//! apiserver answers /readyz, the bootstrap and add-ons are applied inside the tenant and the
//! parts switched off are removed from it.

use super::status::Tracker;
use crate::api::TenantControlPlane;
use crate::conditions::{TENANT_API_READY, TENANT_BOOTSTRAPPED};
use crate::context::Context;
use crate::pki::{self, DesiredPki};
use crate::stop::{Blocked, Stop};
use crate::tenant::{self, BootstrapInputs};

pub async fn bootstrap(
    tcp: &TenantControlPlane,
    ctx: &Context,
    pki: &DesiredPki,
    endpoint: &str,
    available: bool,
    st: &mut Tracker,
) -> Result<(), Stop> {
    if !available {
        return Err(Blocked::waiting(
            TENANT_API_READY,
            "WaitingForControlPlane",
            "no control-plane pod is available yet",
        )
        .into());
    }
    let kubeconfig = pki
        .admin_kubeconfig
        .get(pki::ADMIN_KUBECONFIG)
        .cloned()
        .unwrap_or_default();
    let client = tenant::apply::client(&kubeconfig).await?;
    let readyz = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    if let Err(e) = client.request_text(readyz).await {
        let message = format!("the tenant apiserver at {endpoint} does not answer /readyz: {e}");
        return Err(Blocked::waiting(TENANT_API_READY, "TenantAPINotReady", message).into());
    }
    st.set(
        TENANT_API_READY,
        true,
        "Answering",
        format!("the tenant apiserver answers /readyz at {endpoint}"),
    );
    let inputs = BootstrapInputs {
        endpoint: endpoint.to_string(),
        ca_pem: pki.certs.get(pki::CA_CRT).cloned().unwrap_or_default(),
        image_registry: ctx.settings.image_registry.clone(),
        csi_node_image: ctx.settings.csi_node_image.clone(),
        running_version: st
            .status
            .version
            .clone()
            .unwrap_or_else(|| tcp.spec.version.clone()),
    };
    let objects = tenant::build(tcp, &inputs)?;
    match tenant::apply::apply_and_prune(&client, &objects).await {
        Ok((applied, pruned)) => {
            let mut message = format!("{applied} bootstrap and add-on objects in place");
            if pruned > 0 {
                message.push_str(&format!("; removed {pruned} of parts switched off"));
            }
            st.set(TENANT_BOOTSTRAPPED, true, "Applied", message);
            Ok(())
        }
        Err(e) => {
            let message = format!("applying the tenant bootstrap failed: {e}");
            Err(Blocked::waiting(TENANT_BOOTSTRAPPED, "BootstrapFailed", message).into())
        }
    }
}
