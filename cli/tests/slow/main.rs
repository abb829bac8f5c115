//! The slow integration tests: real worker processes killed with `kill -9`, SIGTERM, killed
//! connections, a private MariaDB server crashed and restarted, contention between many
//! claimers, many `jobq lock run` processes contending for locks, the dashboards against a real Prometheus, and the web console in headless Chromium. `cargo test --test slow`.

#[path = "../support/browser.rs"]
mod browser;
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
mod demo;
mod endpoint;
mod failover;
mod history;
mod limits;
mod locks;
mod pause;
mod prefetch;
mod prom;
mod restart;
mod schedules;
mod servers;
mod tls;
mod wakeup;
mod web;
mod workflows;
