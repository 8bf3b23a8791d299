//! Generates, from `proto/`, the cluster-autoscaler's externalgrpc API and the CSI driver's APIs
//! (CSI itself and the kubelet's plugin registration), each with server and client.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fail = |e: std::io::Error| panic!("compiling proto/ (needs protoc: e2e/install-deps): {e}");
    // Maps in a fixed order, so labels and resources serialise the same every time.
    tonic_prost_build::configure()
        .btree_map(".")
        .build_client(false)
        .build_server(false)
        .compile_protos(&["proto/kubernetes.proto"], &["proto"])
        .unwrap_or_else(fail);
    tonic_prost_build::configure()
        .btree_map(".")
        .extern_path(
            ".orrery.kubernetes",
            "crate::addons::autoscaler::proto::kubernetes",
        )
        .compile_protos(&["proto/externalgrpc.proto"], &["proto"])
        .unwrap_or_else(fail);
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_protos(
            &["proto/csi.proto", "proto/pluginregistration.proto"],
            &["proto"],
        )
        .unwrap_or_else(fail);
}
