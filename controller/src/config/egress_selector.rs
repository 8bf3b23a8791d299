//! The apiserver's `EgressSelectorConfiguration` (apiserver.k8s.io/v1beta1): which proxy the
//! apiserver uses for each kind of outgoing traffic.

use super::ComponentConfig;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSelectorConfiguration {
    pub egress_selections: Vec<EgressSelection>,
}

impl ComponentConfig for EgressSelectorConfiguration {
    const API_VERSION: &'static str = "apiserver.k8s.io/v1beta1";
    const KIND: &'static str = "EgressSelectorConfiguration";
}

/// The proxy for one kind of traffic: `cluster`, `controlplane` or `etcd`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSelection {
    pub name: String,
    pub connection: Connection,
}

impl EgressSelection {
    /// Traffic `name` goes through a gRPC proxy listening on the Unix socket `socket`.
    pub fn grpc_over_uds(name: &str, socket: &str) -> Self {
        Self {
            name: name.into(),
            connection: Connection {
                proxy_protocol: ProxyProtocol::Grpc,
                transport: Transport {
                    uds: Uds {
                        uds_name: socket.into(),
                    },
                },
            },
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub proxy_protocol: ProxyProtocol,
    pub transport: Transport,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ProxyProtocol {
    #[default]
    Direct,
    #[serde(rename = "HTTPConnect")]
    HttpConnect,
    #[serde(rename = "GRPC")]
    Grpc,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transport {
    pub uds: Uds,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uds {
    pub uds_name: String,
}
