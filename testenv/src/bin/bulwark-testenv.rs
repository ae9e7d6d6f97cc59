//! `bulwark-testenv up|down|status --dir DIR`: a control plane that outlives the command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulwark_testenv::ControlPlaneOptions;
use bulwark_testenv::detached;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Run a local etcd + kube-apiserver + kube-controller-manager")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a detached cluster (no-op when already up); prints the kubeconfig path.
    Up {
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
        /// Seconds to wait for readiness.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Stop the cluster started in DIR.
    Down {
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
    /// Show pids and readiness; exit status 0 only when the cluster is up.
    Status {
        #[arg(long, default_value = ".cluster")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulwark-testenv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Up { dir, timeout } => {
            let started = Instant::now();
            let opts = ControlPlaneOptions {
                start_timeout: Duration::from_secs(timeout),
                ..ControlPlaneOptions::default()
            };
            let kubeconfig = detached::up(&dir, &opts)?;
            eprintln!("cluster up in {:.1?}", started.elapsed());
            println!("{}", kubeconfig.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { dir } => {
            detached::down(&dir)?;
            eprintln!("cluster down");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { dir } => {
            let status = detached::status(&dir)?;
            for c in &status.components {
                let pid = c.pid.map_or("-".to_string(), |p| p.to_string());
                let state = if c.running { "running" } else { "stopped" };
                println!("{:<24} pid {pid:<8} {state}", c.name);
            }
            println!("readyz {}", if status.ready { "ok" } else { "failing" });
            println!("kubeconfig {}", status.kubeconfig.display());
            Ok(if status.is_up() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}
