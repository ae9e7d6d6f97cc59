//! One module per facet: pure desired-state builders (spec + observed -> objects), no I/O.

pub mod jwt;
pub mod network;
pub mod postgres;
pub mod tls;
