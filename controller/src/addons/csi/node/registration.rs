//! The kubelet's plugin registration: the kubelet finds the driver's socket in its
//! `plugins_registry` directory, asks what it is (GetInfo), dials the CSI socket it names, and
//! reports whether it took the driver.

use crate::addons::csi::DRIVER;
use crate::addons::csi::proto::registration::registration_server::Registration;
use crate::addons::csi::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info};

/// The CSI versions the driver speaks, as the kubelet reads them.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// Where to register with the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationOptions {
    /// The registration socket, in the kubelet's `plugins_registry` directory.
    pub socket: PathBuf,
    /// The CSI socket as the kubelet sees it (the host's path, which may differ from the
    /// plugin's own view of it inside its container).
    pub endpoint: PathBuf,
}

/// Answers the kubelet's plugin watcher.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    endpoint: String,
    refused: CancellationToken,
}

impl RegistrationService {
    /// Names `endpoint` as the CSI socket, and cancels `refused` when the kubelet refuses the
    /// driver: the plugin then stops, and its pod restarts and registers again.
    pub fn new(endpoint: &std::path::Path, refused: CancellationToken) -> Self {
        Self {
            endpoint: endpoint.to_string_lossy().into_owned(),
            refused,
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).into()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(endpoint = %self.endpoint, "registered with the kubelet");
        } else {
            error!(error = %status.error, "the kubelet refused the driver; stopping");
            self.refused.cancel();
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn info_names_the_driver_and_a_refusal_stops_the_plugin() {
        let refused = CancellationToken::new();
        let service =
            RegistrationService::new(Path::new("/var/lib/kubelet/x.sock"), refused.clone());
        let info = service
            .get_info(Request::new(InfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "csi.orrery.dev");
        assert_eq!(info.endpoint, "/var/lib/kubelet/x.sock");
        assert_eq!(info.supported_versions, ["1.0.0"]);

        let notify = |plugin_registered| {
            service.notify_registration_status(Request::new(RegistrationStatus {
                plugin_registered,
                error: "no".into(),
            }))
        };
        notify(true).await.unwrap();
        assert!(!refused.is_cancelled());
        notify(false).await.unwrap();
        assert!(refused.is_cancelled());
    }
}
