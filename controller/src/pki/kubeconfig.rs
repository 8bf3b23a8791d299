//! Kubeconfig files with embedded credentials, built as kube's own [`Kubeconfig`] so that the
//! same inputs always give the same bytes (a re-apply of an unchanged Secret is then a no-op).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use super::PkiError;

/// What goes into one kubeconfig.
pub(super) struct KubeconfigInput<'a> {
    pub cluster: &'a str,
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub user: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Renders a kubeconfig the way kubeadm lays it out: one cluster named after the tenant, one
/// user, one context `<user>@<cluster>` that is current.
pub(super) fn render(input: &KubeconfigInput<'_>) -> Result<String, PkiError> {
    let context = format!("{}@{}", input.user, input.cluster);
    let config = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: input.cluster.into(),
            cluster: Some(Cluster {
                server: Some(input.server.into()),
                certificate_authority_data: Some(STANDARD.encode(input.ca_pem)),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Some(Context {
                cluster: input.cluster.into(),
                user: Some(input.user.into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(context),
        auth_infos: vec![NamedAuthInfo {
            name: input.user.into(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(STANDARD.encode(input.cert_pem)),
                // kube serialises the secret in the clear: that is what a kubeconfig carries.
                client_key_data: Some(STANDARD.encode(input.key_pem).into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        ..Kubeconfig::default()
    };
    serde_yaml_ng::to_string(&config).map_err(|e| PkiError::Kubeconfig {
        user: input.user.to_string(),
        reason: e.to_string(),
    })
}
