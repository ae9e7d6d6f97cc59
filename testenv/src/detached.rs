//! A long-lived control plane in a directory of the caller's choosing (`bulwark-testenv up`).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::config::Kubeconfig;

use crate::controlplane::{
    self, Component, ControlPlaneOptions, Layout, Lifetime, Prepared, assets_dir,
};
use crate::process;

/// One component as seen from its pid file.
#[derive(Debug, Clone)]
pub struct ComponentStatus {
    pub name: &'static str,
    pub pid: Option<i32>,
    pub running: bool,
}

/// What `status` reports about a cluster directory.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub components: Vec<ComponentStatus>,
    /// `/readyz` answered `ok` with the directory's kubeconfig.
    pub ready: bool,
    pub kubeconfig: PathBuf,
}

impl ClusterStatus {
    pub fn is_up(&self) -> bool {
        self.ready && self.components.iter().all(|c| c.running)
    }
}

fn layout(dir: &Path) -> anyhow::Result<Layout> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(Layout { dir })
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Pid files, liveness of each pid, and a `/readyz` probe.
pub fn status(dir: &Path) -> anyhow::Result<ClusterStatus> {
    let layout = layout(dir)?;
    let components: Vec<ComponentStatus> = Component::ALL
        .iter()
        .map(|&c| {
            let pid = read_pid(&layout.pid_file(c));
            ComponentStatus {
                name: c.binary(),
                pid,
                running: pid.is_some_and(|p| process::pid_runs(p, c.binary())),
            }
        })
        .collect();
    let ready = components.iter().any(|c| c.running)
        && Kubeconfig::read_from(layout.kubeconfig()).is_ok_and(|kc| {
            process::block_on(async move {
                match controlplane::client_for(&kc).await {
                    Ok(client) => controlplane::readyz(&client).await.is_ok(),
                    Err(_) => false,
                }
            })
        });
    Ok(ClusterStatus {
        components,
        ready,
        kubeconfig: layout.kubeconfig(),
    })
}

/// Starts a detached cluster in `dir` and returns its kubeconfig path; a no-op when already up.
pub fn up(dir: &Path, opts: &ControlPlaneOptions) -> anyhow::Result<PathBuf> {
    let current = status(dir)?;
    if current.is_up() {
        return Ok(current.kubeconfig);
    }
    // Half-alive leftovers (one component crashed) are replaced by a fresh cluster.
    down(dir)?;
    let layout = layout(dir)?;
    for stale in ["etcd", "pki", "logs"] {
        let path = layout.dir.join(stale);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for stale in [layout.audit_log(), layout.kubeconfig()] {
        let _ = fs::remove_file(stale);
    }
    fs::create_dir_all(&layout.dir)?;
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => assets_dir()?,
    };
    let prepared = Prepared::new(&layout.dir, bin_dir)?;
    if let Err(e) = controlplane::launch(&prepared, opts, Lifetime::Detached) {
        remove_pid_files(&layout);
        return Err(e);
    }
    Ok(layout.kubeconfig())
}

/// SIGTERM, then SIGKILL after a grace period; errors if any component is still alive.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let layout = layout(dir)?;
    // Stop in reverse start order so the apiserver does not log etcd errors on its way out.
    let running: Vec<(Component, i32)> = Component::ALL
        .iter()
        .rev()
        .filter_map(|&c| read_pid(&layout.pid_file(c)).map(|p| (c, p)))
        .filter(|&(c, p)| process::pid_runs(p, c.binary()))
        .collect();
    let signal_all = |signal: i32| {
        for &(_, pid) in &running {
            // SAFETY: plain syscalls; each component leads its own process group (setsid).
            unsafe {
                libc::kill(-pid, signal);
                libc::kill(pid, signal);
            }
        }
    };
    let wait_gone = |within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let alive: Vec<&(Component, i32)> = running
                .iter()
                .filter(|(_, p)| !process::pid_exited(*p))
                .collect();
            if alive.is_empty() || Instant::now() >= deadline {
                return alive.into_iter().map(|(c, p)| (*c, *p)).collect::<Vec<_>>();
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    if !running.is_empty() {
        signal_all(libc::SIGTERM);
        if !wait_gone(Duration::from_secs(5)).is_empty() {
            signal_all(libc::SIGKILL);
            let left = wait_gone(Duration::from_secs(5));
            if !left.is_empty() {
                let names: Vec<String> = left
                    .iter()
                    .map(|(c, p)| format!("{} (pid {p})", c.binary()))
                    .collect();
                bail!("still running after SIGKILL: {}", names.join(", "));
            }
        }
    }
    remove_pid_files(&layout);
    Ok(())
}

fn remove_pid_files(layout: &Layout) {
    for c in Component::ALL {
        let _ = fs::remove_file(layout.pid_file(c));
    }
}
