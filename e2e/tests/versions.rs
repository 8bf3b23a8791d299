//! The ground builds images for the Kubernetes versions and add-on releases Orrery's tables name:
//! `e2e/versions.env` and the operator must agree, or a supported minor would have no images on
//! the live tier (or images nobody asks for would be built).

use orrery::api::{SUPPORTED_MINORS, minor_of};
use orrery::controlplane::build::KONNECTIVITY_RELEASES;
use orrery::tenant::COREDNS_RELEASES;
use orrery_e2e::{repo_root, versions_env};

#[test]
fn the_ground_builds_one_version_per_supported_minor() {
    let versions = versions_env("TENANT_KUBERNETES_VERSIONS");
    let minors: Vec<u32> = versions
        .split_whitespace()
        .map(|v| minor_of(v).unwrap_or_else(|| panic!("not vMAJOR.MINOR.PATCH: {v}")))
        .collect();
    assert_eq!(minors, SUPPORTED_MINORS.collect::<Vec<_>>(), "{versions}");
    // The ground's own version is a tenant version: its build serves both.
    let ground = versions_env("KUBERNETES_VERSION");
    assert!(versions.split_whitespace().any(|v| v == ground), "{ground}");
    for worker in versions_env("WORKER_KUBERNETES_VERSIONS").split_whitespace() {
        assert!(
            versions.split_whitespace().any(|v| v == worker),
            "worker version {worker} is not a tenant version"
        );
    }
}

#[test]
fn the_ground_builds_the_addon_releases_the_operator_picks() {
    let mut expected = Vec::new();
    for minor in SUPPORTED_MINORS {
        let pick = |table: &[(u32, &str)]| {
            table
                .iter()
                .find(|(m, _)| *m == minor)
                .map(|(_, r)| r.to_string())
                .unwrap_or_else(|| panic!("no release for minor {minor}"))
        };
        expected.push(format!(
            "{minor}:{}:{}",
            pick(&KONNECTIVITY_RELEASES),
            pick(&COREDNS_RELEASES)
        ));
    }
    let built = versions_env("TENANT_ADDON_RELEASES");
    assert_eq!(
        built.split_whitespace().collect::<Vec<_>>(),
        expected,
        "TENANT_ADDON_RELEASES in {}",
        repo_root().join("e2e/versions.env").display()
    );
    // The ground's own add-ons are the releases of its own minor.
    let ground_minor = minor_of(&versions_env("KUBERNETES_VERSION")).unwrap();
    let own = format!(
        "{ground_minor}:{}:{}",
        versions_env("KONNECTIVITY_VERSION"),
        versions_env("COREDNS_VERSION")
    );
    assert!(expected.contains(&own), "{own}");
}
