//! The committed CRD YAML must be exactly what `orrery crds` prints: the source in `crds/` and the
//! chart's copy in `charts/orrery/files/`, which the chart's `templates/crds.yaml` renders.
//! Regenerate both with `cargo run -p orrery -- crds > crds/orrery.dev.yaml` and
//! `cp crds/orrery.dev.yaml charts/orrery/files/crds.yaml`.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = orrery::crdgen::crds_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for file in ["crds/orrery.dev.yaml", "charts/orrery/files/crds.yaml"] {
        let committed =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == generated,
            "{file} differs from `orrery crds`; regenerate it: cargo run -p orrery -- crds > {file}"
        );
    }
}
