//! Content hashes that go into pod templates, so a change of a mounted Secret or ConfigMap rolls
//! the pods, and into cache keys.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Hash of a sequence of strings (length-prefixed, so ["ab","c"] and ["a","bc"] differ).
pub fn of_strings<S: AsRef<str>>(parts: &[S]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        let p = p.as_ref().as_bytes();
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..16])
}

/// Hash of a Secret's or ConfigMap's data (keys are sorted by the map).
pub fn of_map(map: &BTreeMap<String, String>) -> String {
    let parts: Vec<&str> = map
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    of_strings(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_unambiguous() {
        assert_eq!(of_strings(&["ab", "c"]), of_strings(&["ab", "c"]));
        assert_ne!(of_strings(&["ab", "c"]), of_strings(&["a", "bc"]));
        let m = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let n = BTreeMap::from([("a".to_string(), "2".to_string())]);
        assert_ne!(of_map(&m), of_map(&n));
        assert_eq!(of_map(&m).len(), 32);
    }
}
