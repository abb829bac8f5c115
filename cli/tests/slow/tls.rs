//! TLS to the database: a private MariaDB that refuses plain connections
//! (`require_secure_transport`), with a CA and a server certificate this test generates. jobq
//! connects with `ssl-mode=required`, verifies the server with `ssl-mode=verify_identity` and
//! `ssl-ca`, refuses a server its CA did not sign, and migrates, enqueues and works over it.

use std::path::Path;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use sqlx::{Connection, MySqlConnection};

use crate::mariadb::PrivateMariaDb;

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files in
/// `dir`: `ca.pem`, `server.pem`, `server-key.pem`; and a second CA that signed nothing.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "jobq test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();

    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    other
        .distinguished_name
        .push(DnType::CommonName, "someone else's CA");
    let other = other.self_signed(&other_key).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
}

fn jobq(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(args)
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env("JOBQ_WORKER__POLL_INTERVAL", "20ms")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn tls_required_verified_and_worked() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let path = |f: &str| certs.path().join(f).display().to_string();
    let server = PrivateMariaDb::start_with(
        vec![
            format!("--ssl-ca={}", path("ca.pem")),
            format!("--ssl-cert={}", path("server.pem")),
            format!("--ssl-key={}", path("server-key.pem")),
            "--require-secure-transport=ON".to_owned(),
        ],
        "?ssl-mode=required",
    )
    .await;

    // The server refuses a connection without TLS: what follows really runs over TLS.
    // (MariaDB 10.11 answers 1045 "Access denied"; MySQL 3159 "insecure transport".)
    let plain =
        MySqlConnection::connect(&format!("{}?ssl-mode=disabled", server.url("mysql"))).await;
    assert!(plain.is_err(), "a plain connection was accepted");

    // Verified: the CA signed the server's certificate for 127.0.0.1.
    let verified = format!(
        "{}?ssl-mode=verify_identity&ssl-ca={}",
        server.url("jobq"),
        path("ca.pem")
    );
    let o = jobq(&verified, &["migrate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut conn = MySqlConnection::connect(&verified).await.unwrap();
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!cipher.is_empty(), "no TLS cipher on a verified connection");
    conn.close().await.unwrap();

    // Enqueue and work over TLS (ssl-mode=required: encrypted, not verified).
    let required = format!("{}?ssl-mode=required", server.url("jobq"));
    let o = jobq(&required, &["enqueue", "noop", "--count", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = jobq(&verified, &["work", "--drain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut conn = MySqlConnection::connect(&verified).await.unwrap();
    let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(done, 5);
    conn.close().await.unwrap();

    // A CA that did not sign the server's certificate: refused, and said so.
    let wrong = format!(
        "{}?ssl-mode=verify_ca&ssl-ca={}",
        server.url("jobq"),
        path("other-ca.pem")
    );
    let o = jobq(&wrong, &["stats"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", server.port()))
            && err.contains("check ssl-mode and ssl-ca"),
        "{err}"
    );
}
