//! Servers die with the test binary even when Drop never runs (statics, panics, SIGKILL).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_testenv::{ControlPlane, Postgres};

const MODE_VAR: &str = "BULWARK_TESTENV_HELPER_MODE";

/// Runs one ignored helper test of this binary in a child process; returns (port, state dir).
fn run_helper(name: &str, mode: &str) -> (u16, PathBuf) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_VAR, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("LEAKED ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "helper printed no LEAKED line ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (port, dir) = line.split_once(' ').unwrap();
    (port.parse().unwrap(), PathBuf::from(dir))
}

fn finish_helper(port: u16, dir: &std::path::Path) {
    println!("LEAKED {port} {}", dir.display());
    match std::env::var(MODE_VAR).as_deref() {
        Ok("panic") => panic!("helper panics on purpose"),
        // SAFETY: plain syscall; simulates the test binary being killed.
        Ok("sigkill") => unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        },
        _ => {}
    }
}

fn port_closes(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
#[ignore = "helper: run in a child process by the tests below"]
fn helper_leak_postgres() {
    let pg = Postgres::start(None).unwrap();
    finish_helper(pg.port(), pg.state_dir());
    std::mem::forget(pg);
}

#[test]
#[ignore = "helper: run in a child process by the tests below"]
fn helper_shared_control_plane() {
    let cp = ControlPlane::shared();
    let port: u16 = cp.server_url().rsplit(':').next().unwrap().parse().unwrap();
    finish_helper(port, cp.state_dir());
}

#[test]
fn leaked_postgres_is_stopped_and_removed_at_exit() {
    let (port, dir) = run_helper("helper_leak_postgres", "exit");
    assert!(port_closes(port), "postgres still listening on {port}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn leaked_postgres_dies_with_a_killed_test_binary() {
    let (port, dir) = run_helper("helper_leak_postgres", "sigkill");
    assert!(port_closes(port), "postgres still listening on {port}");
    // atexit cannot run on SIGKILL; the next harness start sweeps the orphaned dir.
    drop(Postgres::start(None).unwrap());
    assert!(!dir.exists(), "{} not swept", dir.display());
}

#[test]
fn shared_control_plane_is_torn_down_after_a_panicking_test() {
    let (port, dir) = run_helper("helper_shared_control_plane", "panic");
    assert!(
        port_closes(port),
        "kube-apiserver still listening on {port}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}
