//! A throwaway PostgreSQL server on a free loopback port.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::process::{self, Credentials, StopPolicy};

const SUPERUSER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGQUIT is what `pg_ctl stop -m immediate` sends to the postmaster.
const IMMEDIATE_SHUTDOWN: StopPolicy = StopPolicy {
    signal: libc::SIGQUIT,
    grace: Duration::from_secs(5),
};

/// Server certificate, its key and the CA that signed it, all PEM.
#[derive(Debug, Clone)]
pub struct PgTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// A running PostgreSQL server; Drop shuts it down immediately and removes its files.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    password: String,
    postmaster: Option<Child>,
}

/// Directory with initdb/postgres/psql: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| d.join("initdb").is_file());
    if let Some(dir) = from_pg_config {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no PostgreSQL server binaries (initdb) found; install postgresql"))
}

/// initdb and postgres refuse to run as root, so root drops to `postgres` (or `nobody`).
fn server_user() -> anyhow::Result<Option<Credentials>> {
    if !process::is_root() {
        return Ok(None);
    }
    process::lookup_user("postgres")
        .or_else(|| process::lookup_user("nobody"))
        .map(Some)
        .ok_or_else(|| anyhow!("running as root but neither user postgres nor nobody exists"))
}

impl Postgres {
    /// initdb + start; with `tls`, only TLS connections are accepted.
    pub fn start(tls: Option<PgTls>) -> anyhow::Result<Postgres> {
        let bin_dir = postgres_bin_dir()?;
        let run_as = server_user()?;
        let dir = process::create_state_dir("pg")?;
        let port = process::free_ports(1)?[0];
        let mut pg = Postgres {
            dir,
            bin_dir,
            port,
            password: process::random_hex(16),
            postmaster: None,
        };
        // On error, Drop stops whatever started and removes the dir.
        pg.init_and_run(tls.as_ref(), run_as)?;
        Ok(pg)
    }

    fn init_and_run(
        &mut self,
        tls: Option<&PgTls>,
        run_as: Option<Credentials>,
    ) -> anyhow::Result<()> {
        let own = |path: &Path| match run_as {
            Some(creds) => process::chown(path, creds),
            None => Ok(()),
        };
        own(&self.dir)?;
        let data = self.dir.join("data");
        let pwfile = self.dir.join("pwfile");
        write_owned(&pwfile, &self.password, run_as)?;

        let log = self.dir.join("initdb.log");
        let mut initdb = Command::new(self.bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .arg(format!("--username={SUPERUSER}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&self.dir);
        redirect(&mut initdb, &log)?;
        let status = process::spawn_tied(initdb, run_as)
            .context("starting initdb")?
            .wait()?;
        fs::remove_file(&pwfile)?;
        if !status.success() {
            bail!("initdb failed ({status}):\n{}", process::log_tail(&log, 40));
        }

        let hba = match tls {
            Some(tls) => {
                write_owned(&self.dir.join("server.crt"), &tls.cert_pem, run_as)?;
                write_owned(&self.dir.join("server.key"), &tls.key_pem, run_as)?;
                write_owned(&self.dir.join("ca.crt"), &tls.ca_pem, run_as)?;
                "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            }
            None => "host all all 127.0.0.1/32 scram-sha-256\n",
        };
        write_owned(&data.join("pg_hba.conf"), hba, run_as)?;

        let log = self.dir.join("postgres.log");
        let mut server = Command::new(self.bin_dir.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            // Throwaway data: durability only costs time.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .current_dir(&self.dir);
        if tls.is_some() {
            server
                .args(["-c", "ssl=on"])
                .args([
                    "-c",
                    &format!("ssl_cert_file={}", self.dir.join("server.crt").display()),
                ])
                .args([
                    "-c",
                    &format!("ssl_key_file={}", self.dir.join("server.key").display()),
                ]);
        }
        redirect(&mut server, &log)?;
        let child = process::spawn_tied(server, run_as).context("starting postgres")?;
        process::track_process(child.id(), IMMEDIATE_SHUTDOWN);
        self.postmaster = Some(child);
        self.wait_until_ready(&log)
    }

    fn wait_until_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .postmaster
                .as_mut()
                .and_then(|c| c.try_wait().transpose())
            {
                bail!(
                    "postgres exited ({}):\n{}",
                    status?,
                    process::log_tail(log, 40)
                );
            }
            let ready = Command::new(self.bin_dir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-t", "2", "-q"])
                .args(["-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres not accepting connections after {START_TIMEOUT:?}:\n{}",
                    process::log_tail(log, 40)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The state dir: `data/`, TLS files and `postgres.log`.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// Where initdb/psql live, for tests that run other client tools.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Runs `sql` through psql as the superuser over TCP (TLS when enabled).
    ///
    /// Output is unaligned and tuples-only (`psql -XAtq`), so `SELECT 1` returns `"1\n"`.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", self.host(), "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.postmaster.take() {
            process::untrack_process(child.id());
            process::stop_children(&[(child.id() as i32, IMMEDIATE_SHUTDOWN)]);
        }
        let _ = fs::remove_dir_all(&self.dir);
        process::untrack_dir(&self.dir);
    }
}

fn redirect(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(())
}

/// Writes a 0600 file owned by the server user (postgres insists on this for the TLS key).
fn write_owned(path: &Path, contents: &str, owner: Option<Credentials>) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    if let Some(creds) = owner {
        process::chown(path, creds)?;
    }
    Ok(())
}
