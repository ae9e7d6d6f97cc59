//! Test environment for Bulwark: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager), a real PostgreSQL server and a real Kafka broker, all on loopback
//! only.
//!
//! Processes started here die with the test binary: they are forked by one long-lived thread
//! with `PR_SET_PDEATHSIG(SIGKILL)`, and an `atexit` hook stops them and removes their state.

mod controlplane;
pub mod detached;
pub mod kafka;
mod postgres;
mod process;
pub mod tls;

pub use controlplane::{
    ControlPlane, ControlPlaneOptions, DEFAULT_K8S_VERSION, assets_dir, k8s_version,
};
pub use postgres::{PgTls, Postgres, postgres_bin_dir};
pub use process::spawn_with_parent;
