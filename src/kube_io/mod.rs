//! Writes to the API server: apply-if-changed, ownership and conflict checks, label and owner helpers.

mod apply;
mod meta;
mod observed;
mod repair;

pub use apply::{Applier, ApplyError, ApplyOutcome, Contested, desired_hash, is_subset};
pub use meta::*;
pub(crate) use observed::hash_of;
pub use observed::{Kind, Look, Observed, SETTLED_FOR, Settled, status_digest};
pub use repair::{FREE_REPAIRS, RepairBudget};
