//! Getting each outbox row to its peer exactly once, in order per citizen.
//!
//! [`machine`] decides (what to send, when to retry, when to give up) as a
//! plain function of state, event and time; [`driver`] runs one machine per
//! peer and performs its decisions with sockets and the store.

pub mod driver;
pub mod machine;

use std::hash::{BuildHasher, RandomState};

use tvaers_proto::cpr::Cpr;

/// Turns a CPR number into the key that orders notices per citizen. The key
/// is seeded per process and never stored, so it reveals nothing outside
/// this process; after a restart keys are recomputed from the outbox.
#[derive(Debug, Clone, Default)]
pub struct CitizenKeys(RandomState);

impl CitizenKeys {
    pub fn key(&self, cpr: &Cpr) -> u64 {
        self.0.hash_one(cpr.digits())
    }
}
