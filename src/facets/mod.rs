//! One module per facet: pure desired-state builders (spec + observed -> objects), no I/O.

pub mod network;
pub mod tls;
