//! Tests of host lists and failover (`failover.rs`).

use super::*;

#[test]
fn host_lists() {
    let table: [(&str, Option<&[&str]>); 7] = [
        (
            "mysql://root@127.0.0.1:3306/jobq",
            Some(&["mysql://root@127.0.0.1:3306/jobq"]),
        ),
        (
            "mysql://u:p@a:1,b:2,c:3/db?ssl-mode=disabled",
            Some(&[
                "mysql://u:p@a:1/db?ssl-mode=disabled",
                "mysql://u:p@b:2/db?ssl-mode=disabled",
                "mysql://u:p@c:3/db?ssl-mode=disabled",
            ]),
        ),
        // An '@' in the password: the hosts follow the last one.
        (
            "mysql://u:p@ss@a,b/db",
            Some(&["mysql://u:p@ss@a/db", "mysql://u:p@ss@b/db"]),
        ),
        ("mysql://a:1, b:2", Some(&["mysql://a:1", "mysql://b:2"])),
        ("mysql://u@a,,b/db", None),
        ("mysql://u@a,/db", None),
        ("a,b", None),
    ];
    for (url, want) in table {
        let got = split_hosts(url).ok();
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{url}");
    }
}

#[test]
fn server_names_leave_out_credentials_and_options() {
    for (url, want) in [
        ("mysql://root@127.0.0.1:3306/jobq", "127.0.0.1:3306/jobq"),
        ("mysql://u:p@ss@b:2,a:1/db?ssl-mode=disabled", "a:1,b:2/db"),
        ("mysql://h", "h:3306"),
        ("mariadb://other@h:3306/jobq", "h:3306/jobq"),
        ("nonsense", "unknown"),
    ] {
        assert_eq!(server_name(url), want, "{url}");
    }
    assert!(same_server(
        "mysql://u@h/jobq",
        "mariadb://v:p@h:3306/jobq?x=y"
    ));
    assert!(!same_server("mysql://u@h/jobq", "mysql://u@h/jobq2"));
}

#[test]
fn rotated_host_lists() {
    let url = "mysql://u:p@a:1,b:2,c:3/db?x=y";
    assert_eq!(rotate_hosts(url, 0).unwrap(), url);
    assert_eq!(
        rotate_hosts(url, 1).unwrap(),
        "mysql://u:p@b:2,c:3,a:1/db?x=y"
    );
    assert_eq!(
        rotate_hosts(url, 5).unwrap(),
        "mysql://u:p@c:3,a:1,b:2/db?x=y"
    );
    assert_eq!(rotate_hosts("mysql://h/db", 3).unwrap(), "mysql://h/db");
    assert!(rotate_hosts("mysql://a,,b/db", 1).is_err());
}

#[test]
fn server_urls() {
    assert_eq!(
        server_url("mysql://root@127.0.0.1:3306/jobq"),
        "mysql://root@127.0.0.1:3306/"
    );
    assert_eq!(
        server_url("mysql://u:p@h/db?ssl-mode=disabled"),
        "mysql://u:p@h/?ssl-mode=disabled"
    );
    assert_eq!(server_url("mysql://h"), "mysql://h/");
}

/// (probes as (host, healthy, at seconds), current host after each decision).
#[test]
fn choosing_a_host() {
    type Step = (usize, bool, u64, usize);
    let table: [(&str, &[Step]); 6] = [
        (
            "one failed probe is not enough to leave",
            &[(0, true, 0, 0), (1, true, 0, 0), (0, false, 1, 0)],
        ),
        (
            "two failed probes in a row leave for the first healthy host",
            &[
                (1, false, 0, 0),
                (2, true, 0, 0),
                (0, false, 1, 0),
                (0, false, 2, 2),
            ],
        ),
        (
            "no healthy host: stay",
            &[
                (1, false, 0, 0),
                (0, false, 1, 0),
                (0, false, 2, 0),
                (2, false, 2, 0),
            ],
        ),
        (
            "back to an earlier host only after it answered for SETTLE",
            &[
                (1, true, 0, 0),
                (0, false, 0, 0),
                (0, false, 1, 1),
                (0, true, 2, 1),
                (0, true, 4, 1),
                (1, true, 5, 0),
            ],
        ),
        (
            "a failure restarts the settling time",
            &[
                (1, true, 0, 0),
                (0, false, 0, 0),
                (0, false, 1, 1),
                (0, true, 2, 1),
                (0, false, 3, 1),
                (0, true, 4, 1),
                (0, true, 6, 1),
                (0, true, 7, 0),
            ],
        ),
        (
            "a later host never pulls the pool while its host answers",
            &[(0, true, 0, 0), (1, true, 0, 0), (1, true, 10, 0)],
        ),
    ];
    let base = Instant::now();
    for (name, steps) in table {
        let mut c = Chooser::new(3, 0);
        for (n, &(host, ok, at, want)) in steps.iter().enumerate() {
            let now = base + Duration::from_secs(at);
            c.observe(host, ok, now);
            if let Some(to) = c.decide(now) {
                c.moved(to);
            }
            assert_eq!(c.current, want, "{name}: step {n}");
        }
    }
}
