//! Writes to the API server: apply-if-changed, ownership and conflict checks, label and owner helpers.

mod apply;
mod meta;

pub use apply::{Applier, ApplyError, ApplyOutcome, desired_hash, is_subset};
pub use meta::*;
