//! The generated externalgrpc API: messages, the server trait and the client, from
//! `controller/proto/` (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The cut-down Kubernetes types the API embeds (`proto/kubernetes.proto`).
pub mod kubernetes {
    tonic::include_proto!("orrery.kubernetes");
}

tonic::include_proto!("clusterautoscaler.cloudprovider.v1.externalgrpc");

pub use cloud_provider_client::CloudProviderClient;
pub use cloud_provider_server::{CloudProvider, CloudProviderServer};

/// The full name of the service, as gRPC addresses it.
pub const SERVICE: &str = "clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider";
