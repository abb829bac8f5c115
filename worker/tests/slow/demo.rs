//! The README's first command on a machine where MariaDB is installed but no server answers at
//! the default URL: `jobq demo` starts a throwaway server itself, says so, runs, and deletes it.
//! The test runs the demo in a network namespace of its own (`unshare -n`, loopback only), where
//! nothing listens on 127.0.0.1:3306 although the machine's server runs outside.

use std::process::Command;

#[test]
fn demo_without_a_server_starts_a_throwaway_one() {
    let jobq = env!("CARGO_BIN_EXE_jobq");
    let root = rustix::process::geteuid().is_root();
    // As root a network namespace needs no user namespace; otherwise map ourselves to root.
    let unshare_flags = if root { "-n" } else { "-rn" };
    let out = Command::new("unshare")
        .args([
            unshare_flags,
            "sh",
            "-c",
            &format!("ip link set lo up && exec {jobq} demo --jobs 300"),
        ])
        .env_remove("JOBQ_DATABASE_URL")
        .env("JOBQ_LOG__LEVEL", "error")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running unshare (util-linux) with ip (iproute2)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("starting a throwaway MariaDB"),
        "the demo did not say it started a server: {stderr}"
    );
    assert!(
        stdout.contains("all 300 jobs reached a final state"),
        "{stdout}"
    );
    assert!(
        stdout.contains("throwaway server and its jobs are deleted"),
        "{stdout}"
    );
    let dir = stderr
        .split("(data in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the data directory named");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}
