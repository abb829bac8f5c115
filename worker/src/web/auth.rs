//! Who may use the console, and proof that a form was posted by the console itself.
//!
//! - **Authentication** ([`decide`], pure and table-tested): with neither `web.token` nor
//!   `web.basic_auth` set, everyone is let in (the listener is loopback by default, or behind a
//!   login proxy). Otherwise a request needs `Authorization: Bearer TOKEN`, a session cookie
//!   from the login form (which takes the token), or `Authorization: Basic` with the configured
//!   user and password. Anything else gets a 401 and no data.
//! - **CSRF**: every page sets a random `jobq_csrf` cookie (SameSite=Strict, HttpOnly) once, and
//!   every form carries the same value; a POST whose field does not equal its cookie is refused,
//!   as is one whose `Origin` names another site. A page elsewhere can neither read the cookie
//!   nor make the browser send it.
//!
//! Secrets are compared in constant time; sessions live in this process's memory for
//! [`SESSION_TTL`] (a restart signs everyone out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use base64::Engine;
use rand::RngCore;

/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "jobq_session";
/// The CSRF cookie (and the form field `csrf`).
pub(crate) const CSRF_COOKIE: &str = "jobq_csrf";

/// Who a request is, once let in. Recorded (as [`Who::actor`]) with every act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    /// No authentication is configured.
    Anyone,
    /// The bearer token, sent as a header.
    Token,
    /// A session from the login form.
    Session,
    /// Basic auth as this user.
    User(String),
}

impl Who {
    /// The `actor` written with the transitions this request causes.
    pub(crate) fn actor(&self) -> String {
        match self {
            Who::Anyone => "web".to_owned(),
            Who::Token | Who::Session => "web:token".to_owned(),
            Who::User(u) => format!("web:{u}"),
        }
    }

    /// Whether a sign-out button makes sense.
    pub(crate) fn has_session(&self) -> bool {
        matches!(self, Who::Session)
    }
}

/// What a request presented, read from its headers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Presented<'a> {
    pub(crate) bearer: Option<&'a str>,
    pub(crate) basic: Option<(&'a str, &'a str)>,
    pub(crate) session: bool,
}

/// The configured credentials.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials {
    pub(crate) token: Option<String>,
    pub(crate) basic: Option<(String, String)>,
}

impl Credentials {
    pub(crate) fn from_settings(w: &jobq_config::WebSettings) -> Self {
        Credentials {
            token: w.token.clone(),
            basic: w
                .basic_auth
                .as_deref()
                .and_then(|b| b.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))),
        }
    }

    /// Whether any authentication is on.
    pub(crate) fn required(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }
}

/// Whether a request presenting `p` is let in, and as whom. `None`: answer 401.
pub(crate) fn decide(c: &Credentials, p: &Presented<'_>) -> Option<Who> {
    if !c.required() {
        return Some(Who::Anyone);
    }
    // An empty secret (possible only in an unvalidated configuration) never matches.
    if let Some(token) = c.token.as_ref().filter(|t| !t.is_empty()) {
        if p.bearer.is_some_and(|b| same(b, token)) {
            return Some(Who::Token);
        }
        if p.session {
            return Some(Who::Session);
        }
    }
    if let (Some((user, password)), Some((u, pw))) = (&c.basic, p.basic) {
        if user.is_empty() || password.is_empty() {
            return None;
        }
        // Both compared, always, so the time taken does not tell which was wrong.
        if same(u, user) & same(pw, password) {
            return Some(Who::User(user.clone()));
        }
    }
    None
}

/// Constant-time equality (for equal lengths; a length difference is not secret).
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes as hex: session ids and CSRF tokens.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
/// Read byte-wise: another application's non-ASCII cookie on the same host does not hide
/// ours.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            let key = std::str::from_utf8(&kv[..eq]).ok()?.trim();
            let value = std::str::from_utf8(&kv[eq + 1..]).ok()?.trim();
            (key == name).then_some(value)
        })
        .next()
}

/// Whether `v` is a token [`random_token`] made (64 hex digits): anything else in the CSRF
/// cookie is treated as no cookie, and replaced.
pub(crate) fn well_formed(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where a login may send the browser: a path of this console only. Refused: anything not
/// starting with one `/`, a second `/` or a `\` (browsers read `/\host` as `//host`), and
/// control characters (browsers drop tabs and newlines, which could make `/<TAB>/host`).
pub(crate) fn safe_next(next: &str) -> Option<&str> {
    let mut bytes = next.bytes();
    let ok = bytes.next() == Some(b'/')
        && !matches!(bytes.next(), Some(b'/' | b'\\'))
        && !next.bytes().any(|b| b == b'\\' || b.is_ascii_control());
    ok.then_some(next)
}

/// Whether a request's `Host` may be served without authentication: the loopback names, the
/// address the console listens on, and `web.allowed_hosts`. Refusing the rest keeps a page
/// elsewhere from reaching an unauthenticated console by rebinding its own name to 127.0.0.1.
/// Requests without a `Host` (not from a browser) pass.
pub(crate) fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // Without the port: `[::1]:9188` → `[::1]`, `localhost:9188` → `localhost`.
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ["localhost", "127.0.0.1", "::1"]
        .iter()
        .any(|l| name.eq_ignore_ascii_case(l))
        || allowed.iter().any(|a| name.eq_ignore_ascii_case(a))
}

/// The bearer token and basic credentials of an `Authorization` header. The decoded basic
/// credentials are returned owned (they are base64 in the header).
pub(crate) fn authorization(headers: &HeaderMap) -> (Option<&str>, Option<(String, String)>) {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return (Some(rest.trim()), None);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return (None, Some((u.to_owned(), p.to_owned())));
        }
    }
    (None, None)
}

/// Whether a POST may act: its form's `csrf` equals its CSRF cookie, and its `Origin` (when
/// the browser sends one) is this console's own `Host`.
pub(crate) fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    let Some(cookie) = cookie(headers, CSRF_COOKIE) else {
        return false;
    };
    if form_token.is_empty() || !same(cookie, form_token) {
        return false;
    }
    let header = |h| headers.get(h).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|s| s == "cross-site") {
        return false;
    }
    match (
        header(header::ORIGIN.as_str()),
        header(header::HOST.as_str()),
    ) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The logins of this process.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session id, valid for [`SESSION_TTL`].
    pub(crate) fn open(&self) -> String {
        let id = random_token();
        let mut live = self.live.lock().expect("sessions lock");
        let now = Instant::now();
        live.retain(|_, until| *until > now);
        live.insert(id.clone(), now + SESSION_TTL);
        id
    }

    /// Whether `id` names a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let live = self.live.lock().expect("sessions lock");
        live.get(id).is_some_and(|until| *until > Instant::now())
    }

    /// Ends session `id`.
    pub(crate) fn close(&self, id: &str) {
        self.live.lock().expect("sessions lock").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef";

    fn creds(token: bool, basic: bool) -> Credentials {
        Credentials {
            token: token.then(|| TOKEN.to_owned()),
            basic: basic.then(|| ("ops".to_owned(), "pw".to_owned())),
        }
    }

    #[test]
    fn who_gets_in() {
        let none = Presented::default();
        let bearer = |b| Presented {
            bearer: Some(b),
            ..none
        };
        let basic = |u, p| Presented {
            basic: Some((u, p)),
            ..none
        };
        let session = Presented {
            session: true,
            ..none
        };
        let user = Some(Who::User("ops".into()));
        // (token configured, basic configured, presented, expected)
        let table: Vec<(bool, bool, Presented, Option<Who>)> = vec![
            (false, false, none, Some(Who::Anyone)),
            (false, false, bearer("x"), Some(Who::Anyone)),
            (true, false, none, None),
            (true, false, bearer(TOKEN), Some(Who::Token)),
            (true, false, bearer("0123456789abcdeF"), None),
            (true, false, bearer("0123456789abcde"), None),
            (true, false, session, Some(Who::Session)),
            (true, false, basic("ops", "pw"), None),
            (false, true, basic("ops", "pw"), user.clone()),
            (false, true, basic("ops", "PW"), None),
            (false, true, basic("root", "pw"), None),
            (false, true, bearer(TOKEN), None),
            (false, true, session, None),
            (true, true, basic("ops", "pw"), user),
            (true, true, bearer(TOKEN), Some(Who::Token)),
            (true, true, none, None),
        ];
        for (t, b, p, want) in table {
            assert_eq!(decide(&creds(t, b), &p), want, "token={t} basic={b} {p:?}");
        }
    }

    #[test]
    fn actors_name_the_way_in() {
        assert_eq!(Who::Anyone.actor(), "web");
        assert_eq!(Who::Token.actor(), "web:token");
        assert_eq!(Who::Session.actor(), "web:token");
        assert_eq!(Who::User("ops".into()).actor(), "web:ops");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_cookies_and_authorization() {
        let h = headers(&[("cookie", "a=1; jobq_csrf=abc"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "jobq_csrf"), Some("abc"));
        // Another application's cookie with non-ASCII bytes does not hide ours.
        let mut h2 = HeaderMap::new();
        h2.append(
            "cookie",
            HeaderValue::from_bytes(b"x=\xc3\xa9t\xc3\xa9; jobq_csrf=abc").unwrap(),
        );
        assert_eq!(cookie(&h2, "jobq_csrf"), Some("abc"));
        assert!(well_formed(&random_token()));
        assert!(!well_formed("abc") && !well_formed(""));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let h = headers(&[("authorization", "Bearer  tok ")]);
        assert_eq!(authorization(&h).0, Some("tok"));
        // "ops:p:w" (a password may contain ':').
        let h = headers(&[("authorization", "Basic b3BzOnA6dw==")]);
        assert_eq!(authorization(&h).1, Some(("ops".into(), "p:w".into())));
        let h = headers(&[("authorization", "Basic !!!")]);
        assert_eq!(authorization(&h), (None, None));
    }

    #[test]
    fn csrf_needs_the_cookie_the_field_and_our_origin() {
        let ok = [("cookie", "jobq_csrf=t1"), ("host", "127.0.0.1:9188")];
        assert!(csrf_ok(&headers(&ok), "t1"));
        assert!(!csrf_ok(&headers(&ok), "t2"));
        assert!(!csrf_ok(&headers(&ok), ""));
        assert!(!csrf_ok(&headers(&[("host", "h")]), "t1"));
        let mut same_origin = ok.to_vec();
        same_origin.push(("origin", "http://127.0.0.1:9188"));
        assert!(csrf_ok(&headers(&same_origin), "t1"));
        let mut other = ok.to_vec();
        other.push(("origin", "https://evil.example"));
        assert!(!csrf_ok(&headers(&other), "t1"));
        let mut cross = ok.to_vec();
        cross.push(("sec-fetch-site", "cross-site"));
        assert!(!csrf_ok(&headers(&cross), "t1"));
    }

    #[test]
    fn logins_only_go_to_our_own_paths() {
        for ok in ["/", "/jobs?state=discarded&queue=a", "/jobs/12"] {
            assert_eq!(safe_next(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "jobs",
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/a\nb",
            "https://evil.example",
            "/x\\y",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_without_auth_are_loopback_or_listed() {
        let allowed = vec!["console.internal".to_owned(), "10.0.0.5".to_owned()];
        for (host, ok) in [
            ("127.0.0.1:9188", true),
            ("localhost:9188", true),
            ("LOCALHOST", true),
            ("[::1]:9188", true),
            ("console.internal", true),
            ("10.0.0.5:9188", true),
            ("attacker.example:9188", false),
            ("127.0.0.1.attacker.example", false),
            ("evil", false),
        ] {
            assert_eq!(
                host_allowed(&headers(&[("host", host)]), &allowed),
                ok,
                "{host}"
            );
        }
        assert!(
            host_allowed(&HeaderMap::new(), &allowed),
            "no Host: not a browser"
        );
    }

    #[test]
    fn empty_secrets_never_match() {
        let c = Credentials {
            token: Some(String::new()),
            basic: Some((String::new(), String::new())),
        };
        let p = Presented {
            bearer: Some(""),
            basic: Some(("", "")),
            session: false,
        };
        assert_eq!(decide(&c, &p), None);
    }

    #[test]
    fn sessions_open_check_and_close() {
        let s = Sessions::default();
        let id = s.open();
        assert_eq!(id.len(), 64);
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        s.close(&id);
        assert!(!s.valid(&id));
    }
}
