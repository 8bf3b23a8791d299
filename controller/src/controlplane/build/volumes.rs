//! Volumes of the control-plane pod: each container gets a projected volume with exactly the files
//! it needs.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, ProjectedVolumeSource,
    SecretProjection, Volume, VolumeProjection,
};

/// Keys of Secret `name`, each mounted as the file named in the pair.
pub(super) fn secret_projection(name: String, keys: &[(&str, &str)]) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name,
            items: Some(
                keys.iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        mode: None,
                    })
                    .collect(),
            ),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// Keys of Secret `name`, each mounted as a file of the same name.
pub(super) fn secret_files(name: String, keys: &[&str]) -> VolumeProjection {
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (*k, *k)).collect();
    secret_projection(name, &pairs)
}

/// A projected volume that gives one container exactly the files it needs, readable by the
/// pod's group only.
pub(super) fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Default::default()
    }
}

/// A memory-backed scratch directory shared by containers of the pod.
pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn config_map(name: &str, config_map: String) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            ..Default::default()
        }),
        ..Default::default()
    }
}
