//! A headless Chromium driven over WebDriver (`chromedriver` from Debian's `chromium-driver`,
//! installed by `scripts/test`), for the console's end-to-end test. Missing binaries fail the test
//! with what to install; nothing is skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// A chromedriver process; killed on drop.
pub(crate) struct Driver {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` on PATH, or in /usr/bin and /usr/lib/chromium (where Debian puts them).
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .map(|d: PathBuf| d.join(name))
        .find(|p| p.is_file())
}

/// Starts chromedriver on a free port and waits until it answers.
pub(crate) fn start_driver() -> Driver {
    let exe = find("chromedriver").expect(
        "chromedriver not found: install Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver; scripts/test does this)",
    );
    let port = crate::http::free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port }
}

/// A headless browser session through `driver`.
pub(crate) async fn browser(driver: &Driver) -> Client {
    let mut options = serde_json::json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--disable-extensions"],
    });
    let chromium = find("chromium").expect(
        "chromium not found: install Debian's chromium (apt-get install chromium; scripts/test does this)",
    );
    options["binary"] = chromium.to_string_lossy().into_owned().into();
    let mut caps = Capabilities::new();
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// Where the screenshots go: `target/tmp/web-screenshots/` (not committed).
pub(crate) fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the page as `name.png` for a person to look at.
pub(crate) async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}
