//! The PostgreSQL harness runs a real server with real authentication and TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulwark_testenv::tls::test_pki;
use bulwark_testenv::{PgTls, Postgres};

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "bulwark-testenv-test-{}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

fn psql_conninfo(pg: &Postgres, conninfo: &str, password: &str) -> Output {
    Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-q", "-c"])
        .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

fn conninfo(pg: &Postgres, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} dbname=postgres {extra}",
        pg.port(),
        pg.superuser()
    )
}

fn tls_server() -> (Postgres, PathBuf) {
    let pki = test_pki(&["localhost"], &["127.0.0.1"]);
    // Tests run in parallel, each with its own CA: the file name must be as unique as the CA.
    static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ca_file = write_temp(&format!("ca-{n}.crt"), &pki.ca_pem);
    let pg = Postgres::start(Some(PgTls {
        cert_pem: pki.cert_pem,
        key_pem: pki.key_pem,
        ca_pem: pki.ca_pem,
    }))
    .unwrap();
    (pg, ca_file)
}

#[test]
fn tls_server_accepts_verified_tls_and_rejects_plaintext() {
    let (pg, ca_file) = tls_server();

    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .unwrap()
        .trim(),
        "t"
    );

    let verified = psql_conninfo(
        &pg,
        &conninfo(
            &pg,
            &format!("sslmode=verify-full sslrootcert={}", ca_file.display()),
        ),
        pg.superuser_password(),
    );
    assert!(
        verified.status.success(),
        "verify-full failed: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&verified.stdout).trim(), "t");

    let plaintext = psql_conninfo(
        &pg,
        &conninfo(&pg, "sslmode=disable"),
        pg.superuser_password(),
    );
    assert!(
        !plaintext.status.success(),
        "plaintext connection was accepted"
    );
    let stderr = String::from_utf8_lossy(&plaintext.stderr);
    assert!(stderr.contains("no pg_hba.conf entry"), "{stderr}");

    let _ = std::fs::remove_file(ca_file);
}

#[test]
fn verify_full_rejects_a_server_signed_by_another_ca() {
    let (pg, own_ca) = tls_server();
    let other = test_pki(&["localhost"], &["127.0.0.1"]);
    let other_ca = write_temp("other-ca.crt", &other.ca_pem);

    let out = psql_conninfo(
        &pg,
        &conninfo(
            &pg,
            &format!("sslmode=verify-full sslrootcert={}", other_ca.display()),
        ),
        pg.superuser_password(),
    );
    assert!(!out.status.success(), "connected with the wrong CA");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    let _ = std::fs::remove_file(own_ca);
    let _ = std::fs::remove_file(other_ca);
}

#[test]
fn plain_server_checks_the_password_and_drop_stops_it() {
    let pg = Postgres::start(None).unwrap();
    assert_eq!(pg.psql("postgres", "SELECT 40 + 2").unwrap().trim(), "42");
    assert_eq!(
        pg.psql("postgres", "SHOW listen_addresses").unwrap().trim(),
        "127.0.0.1"
    );

    let wrong = psql_conninfo(&pg, &conninfo(&pg, "sslmode=disable"), "not-the-password");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    let err = pg
        .psql("postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");

    let port = pg.port();
    let dir: PathBuf = pg.state_dir().to_path_buf();
    drop(pg);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!Path::new(&dir).exists(), "{} left behind", dir.display());
}
