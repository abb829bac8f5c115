//! The slow integration tests: real worker processes killed with `kill -9`, SIGTERM, killed
//! connections, a private MariaDB server crashed and restarted, contention between many
//! claimers, many `jobq lock run` processes contending for locks, and the dashboards against a real Prometheus. `cargo test --test slow`.

#[path = "../support/common.rs"]
mod common;
#[path = "../support/http.rs"]
mod http;
#[path = "../support/mariadb.rs"]
mod mariadb;
#[path = "../support/procs.rs"]
mod procs;

mod contention;
mod crash;
mod endpoint;
mod limits;
mod locks;
mod pause;
mod prom;
mod restart;
mod schedules;
mod wakeup;
