//! The generated CSI (`csi.v1`) and kubelet plugin-registration APIs, servers and clients, from
//! `controller/proto/` (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The Container Storage Interface, as far as the driver serves it (`proto/csi.proto`).
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// The kubelet's plugin registration (`proto/pluginregistration.proto`).
pub mod registration {
    tonic::include_proto!("pluginregistration");
}
