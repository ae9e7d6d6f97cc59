//! The `SecurityPolicy` API (`bulwark.dev/v1alpha1`): the only place the spec is read raw.

pub mod docs;
mod duration;
mod types;

pub use duration::{GoDuration, ParseDurationError};
pub use types::*;

/// API group of every Bulwark resource.
pub const GROUP: &str = "bulwark.dev";
