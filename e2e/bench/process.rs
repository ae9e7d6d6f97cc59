//! A process under measurement: `bulwark run` or cert-manager's controller, its memory and CPU
//! read from /proc, and the operator's metrics endpoint.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A child process, SIGKILLed when dropped or when the benchmark dies.
pub struct Measured {
    child: Child,
    pub metrics_port: Option<u16>,
    sampler: Sampler,
}

impl Measured {
    /// `bulwark run` against `kubeconfig`, cluster-wide, logging JSON to `log`.
    pub fn bulwark(bin: &Path, kubeconfig: &Path, log: &Path, extra: &[String]) -> Measured {
        let port = free_port();
        let log = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("operator log");
        let mut cmd = Command::new(bin);
        // BULWARK_BENCH_RUST_LOG: the operator's log filter (to see why it reconciles).
        if let Ok(filter) = std::env::var("BULWARK_BENCH_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        } else {
            cmd.env_remove("RUST_LOG");
        }
        cmd.args(["run", "--log-format", "json"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .args(operator_args())
            .env("KUBECONFIG", kubeconfig)
            .env_remove("BULWARK_NAMESPACES")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child = bulwark_testenv::spawn_with_parent(&mut cmd).expect("start bulwark run");
        Measured::watch(child, Some(port))
    }

    /// Any other command, its output to `log`.
    pub fn command(mut cmd: Command, log: &Path) -> Measured {
        let log = File::create(log).expect("process log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let child =
            bulwark_testenv::spawn_with_parent(&mut cmd).expect("start the measured process");
        Measured::watch(child, None)
    }

    fn watch(child: Child, metrics_port: Option<u16>) -> Measured {
        let sampler = Sampler::start(child.id());
        Measured {
            child,
            metrics_port,
            sampler,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait on child").is_none()
    }

    /// Peak resident set since start (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:").map_or(0.0, kib_to_mib)
    }

    /// Resident set now (VmRSS), MiB.
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmRSS:").map_or(0.0, kib_to_mib)
    }

    /// Largest VmRSS sampled (every 20 ms) since the last call, MiB; starts a new window.
    pub fn take_sampled_peak_mib(&self) -> f64 {
        kib_to_mib(self.sampler.peak_kib.swap(0, Ordering::Relaxed))
    }

    /// CPU time used so far (utime + stime), seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// SIGTERM, then wait up to 30 s, then SIGKILL.
    pub async fn terminate(&mut self) {
        if !self.running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// GET on the operator's metrics address: (status code, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.metrics_port?;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    /// Sum of a metric's samples whose line contains `label` (empty: all).
    pub async fn metric(&self, name: &str, label: &str) -> f64 {
        let Some((200, body)) = self.get("/metrics").await else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(self.running(), "the operator exited during start");
            if matches!(self.get("/readyz").await, Some((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "operator not ready in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `reconciles_total{result="success"}` reaches `at_least` and then stays put for
    /// `quiet`: the operator has nothing left to do. Returns when it went quiet.
    pub async fn wait_quiet(&self, at_least: f64, quiet: Duration, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut last = -1.0;
        let mut since = Instant::now();
        loop {
            let all = self.metric("bulwark_reconciles_total", "").await;
            let ok = self
                .metric("bulwark_reconciles_total", "result=\"success\"")
                .await;
            if all != last {
                last = all;
                since = Instant::now();
            } else if ok >= at_least && since.elapsed() >= quiet {
                return since;
            }
            assert!(
                Instant::now() < deadline,
                "operator still busy after {timeout:?} ({ok} successful reconciles, {at_least} expected)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.sampler.stop.store(true, Ordering::Relaxed);
        self.kill();
    }
}

/// Samples VmRSS every 20 ms on a thread of its own.
struct Sampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, stopped) = (peak_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match status_kib(pid, "VmRSS:") {
                    Some(kib) => {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler { peak_kib, stop }
    }
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// utime + stime of `pid`, seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Extra `bulwark run` flags from `BULWARK_BENCH_OPERATOR_ARGS` (space-separated), to compare
/// settings without a rebuild.
fn operator_args() -> Vec<String> {
    std::env::var("BULWARK_BENCH_OPERATOR_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}
