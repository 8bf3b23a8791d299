//! The volumes a service is working on: a second call on a volume meanwhile gets ABORTED, as
//! the CSI spec asks, instead of racing the first.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use tonic::Status;

/// The set of busy volume ids.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<Mutex<HashSet<String>>>);

impl Busy {
    /// Marks `volume_id` busy until the claim drops; ABORTED when it is busy already.
    pub fn claim(&self, volume_id: &str) -> Result<Claim, Status> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !set.insert(volume_id.to_owned()) {
            return Err(Status::aborted(format!(
                "an operation on volume {volume_id} is in progress"
            )));
        }
        Ok(Claim {
            busy: self.clone(),
            volume_id: volume_id.to_owned(),
        })
    }
}

/// A volume a call is working on, released when dropped.
#[derive(Debug)]
pub struct Claim {
    busy: Busy,
    volume_id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.volume_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_volume_is_refused_until_its_claim_drops() {
        let busy = Busy::default();
        let first = busy.claim("a").unwrap();
        assert_eq!(busy.claim("a").unwrap_err().code(), tonic::Code::Aborted);
        assert!(busy.claim("b").is_ok(), "other volumes are free");
        drop(first);
        assert!(busy.claim("a").is_ok());
    }
}
