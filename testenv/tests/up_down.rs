//! `bulwark-testenv up/down` manages a detached cluster that survives the command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bulwark-testenv");
const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

fn testenv(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn pids(dir: &Path) -> Vec<i32> {
    BINARIES
        .iter()
        .map(|b| {
            let text = std::fs::read_to_string(dir.join(format!("{b}.pid")))
                .unwrap_or_else(|e| panic!("{b}.pid: {e}"));
            text.trim().parse().unwrap()
        })
        .collect()
}

/// Gone, or a zombie nobody has reaped yet (it holds no ports and runs no code).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Brings the cluster down even when an assertion fails midway.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = testenv(&["down"], &self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn up_is_idempotent_and_down_leaves_nothing_running() {
    let dir = std::env::temp_dir().join(format!("bulwark-updown-test-{}", std::process::id()));
    let cluster = Cluster(dir.clone());

    let started = Instant::now();
    let up = testenv(&["up"], &cluster.0);
    let cold = started.elapsed();
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = String::from_utf8_lossy(&up.stdout).trim().to_string();
    assert_eq!(PathBuf::from(&kubeconfig), dir.join("kubeconfig"));
    let first_pids = pids(&dir);
    println!("cold up took {cold:.1?}");

    let started = Instant::now();
    let again = testenv(&["up"], &cluster.0);
    let warm = started.elapsed();
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), kubeconfig);
    assert_eq!(pids(&dir), first_pids, "second up restarted the cluster");
    assert!(warm < Duration::from_secs(5), "second up took {warm:?}");

    let ns = Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "get", "ns", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        ns.status.success(),
        "{}",
        String::from_utf8_lossy(&ns.stderr)
    );
    let names = String::from_utf8_lossy(&ns.stdout);
    assert!(
        names.lines().any(|l| l == "namespace/kube-system"),
        "{names}"
    );

    assert!(testenv(&["status"], &cluster.0).status.success());

    let down = testenv(&["down"], &cluster.0);
    assert!(
        down.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    for pid in &first_pids {
        assert!(process_gone(*pid), "pid {pid} still running after down");
    }
    for b in BINARIES {
        assert!(
            !dir.join(format!("{b}.pid")).exists(),
            "{b}.pid left behind"
        );
    }
    assert_eq!(testenv(&["status"], &cluster.0).status.code(), Some(3));
}
