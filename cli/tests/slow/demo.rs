//! The README's first command on a machine where MariaDB is installed but no server answers at
//! the default URL: `jobq demo` starts a throwaway server itself, says so, runs, and deletes it,
//! also when its output is cut short (`| head -1`). The test runs the demo in a network
//! namespace of its own (`unshare -n`, loopback only), where nothing listens on 127.0.0.1:3306
//! although the machine's server runs outside.

use std::process::{Command, Output};

/// `jobq demo --jobs 300` in a fresh network namespace, through `sh -c` with `tail` appended
/// to the command line.
fn demo_alone(tail: &str) -> Output {
    let jobq = env!("CARGO_BIN_EXE_jobq");
    // As root a network namespace needs no user namespace; otherwise map ourselves to root.
    let flags = if rustix::process::geteuid().is_root() {
        "-n"
    } else {
        "-rn"
    };
    Command::new("unshare")
        .args([
            flags,
            "sh",
            "-c",
            &format!("ip link set lo up && {jobq} demo --jobs 300 {tail}"),
        ])
        .env_remove("JOBQ_DATABASE_URL")
        .env("JOBQ_LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running unshare (util-linux) with ip (iproute2)")
}

/// The data directory the demo named on stderr.
fn data_dir(stderr: &str) -> std::path::PathBuf {
    stderr
        .split("(data in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the data directory named")
        .into()
}

#[test]
fn demo_without_a_server_starts_a_throwaway_one() {
    let out = demo_alone("");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("starting a throwaway MariaDB"),
        "the demo did not say it started a server: {stderr}"
    );
    // Built-in kinds run on any queue: no default-queue warning.
    assert!(!stderr.contains("does not work"), "{stderr}");
    assert!(
        stdout.contains("all 300 jobs reached a final state"),
        "{stdout}"
    );
    assert!(
        stdout.contains("throwaway server and its jobs are deleted"),
        "{stdout}"
    );
    let dir = data_dir(&stderr);
    assert!(!dir.exists(), "{} was left behind", dir.display());

    // Its reader gone after one line, the demo still stops the server and deletes its data.
    let out = demo_alone("| head -1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let dir = data_dir(&stderr);
    assert!(
        !dir.exists(),
        "{} was left behind after a closed pipe",
        dir.display()
    );
    let servers = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        servers.stdout.is_empty(),
        "a throwaway mariadbd still runs: {}",
        String::from_utf8_lossy(&servers.stdout)
    );
}
