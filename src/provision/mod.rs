//! What the Jobs run inside the cluster (`bulwark provision ...`): apply a plan the operator
//! computed to a system outside Kubernetes. The only I/O here is to that system.

pub mod postgres;
