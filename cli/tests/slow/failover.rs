//! Host-list failover between two private MariaDB servers (no Galera): a primary and a
//! read-only replica. When the primary dies the pool does not move to the replica (a write
//! there would be refused, or worse, diverge); once that server is made writable (promoted),
//! the pool moves to it.

use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, Executor, MySqlPool};

use crate::mariadb::PrivateMariaDb;

/// The port of the server the pool's statements go to, or `None` when none answers.
async fn port_of(pool: &MySqlPool) -> Option<u16> {
    let q = sqlx::query_scalar::<_, i64>("SELECT CAST(@@port AS SIGNED)").fetch_one(pool);
    match tokio::time::timeout(Duration::from_secs(2), q).await {
        Ok(Ok(p)) => Some(p as u16),
        Ok(Err(e)) => {
            eprintln!("no answer: {e}");
            None
        }
        Err(_) => None,
    }
}

#[tokio::test]
async fn failover_moves_only_to_a_writable_primary() {
    let mut primary = PrivateMariaDb::start().await;
    let replica = PrivateMariaDb::start_with(vec!["--read-only".into()], "").await;
    for server in [&primary, &replica] {
        let mut c = sqlx::MySqlConnection::connect(&server.url("mysql"))
            .await
            .unwrap();
        c.execute("CREATE DATABASE jobq_fo").await.unwrap();
    }
    let url = format!(
        "mysql://root@127.0.0.1:{},127.0.0.1:{}/jobq_fo",
        primary.port(),
        replica.port()
    );
    let pool = jobq_producer::connect_cluster(
        &url,
        MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(1)),
        |o| o,
    )
    .await
    .unwrap();
    assert_eq!(port_of(&pool).await, Some(primary.port()));

    primary.kill9();
    // Long past the two failed probes after which the pool leaves a dead host.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_ne!(
            port_of(&pool).await,
            Some(replica.port()),
            "the pool moved to a read-only replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Promoted: the pool moves there.
    let mut c = sqlx::MySqlConnection::connect(&replica.url("mysql"))
        .await
        .unwrap();
    c.execute("SET GLOBAL read_only = 0").await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if port_of(&pool).await == Some(replica.port()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the pool did not move to the promoted server"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
}
