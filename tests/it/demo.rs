//! `bookrec demo` end to end in headless Chromium: the demo runs on a small Book-Crossing
//! shaped fixture (the real data set's format, two clusters of books by publisher); the
//! page lists books and recommendations; a click goes through /tracker.js to the collector,
//! and the page's recommendations change from the realtime features. The test drives
//! Chromium through ChromeDriver's W3C WebDriver protocol and saves a screenshot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// A Book-Crossing shaped fixture: 12 "Tor" (fantasy) and 12 "Penguin" (history) books,
/// 60 users who each read 6 books of one kind.
pub fn write_fixture(dir: &Path) {
    let mut books = String::from("isbn,title,author,year,publisher\n");
    for i in 0..12 {
        books.push_str(&format!("F{i:03},Fantasy {i},A. Writer,1999,Tor\n"));
        books.push_str(&format!("H{i:03},History {i},B. Writer,2001,Penguin\n"));
    }
    std::fs::write(dir.join("books.csv"), books).expect("books.csv");
    let mut ratings = String::from("user_id,isbn,rating\n");
    for u in 0..60usize {
        let kind = if u % 2 == 0 { 'F' } else { 'H' };
        for j in 0..6 {
            let i = (u * 5 + j * 7) % 12;
            ratings.push_str(&format!("{u},{kind}{i:03},{}\n", [0, 8, 9][j % 3]));
        }
    }
    std::fs::write(dir.join("ratings.csv"), ratings).expect("ratings.csv");
}

/// A child process killed when dropped (a failing assertion must not leave it running).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bookrec demo` in `cwd` on free ports; returns the child and the page URL.
pub fn start_demo(cwd: &Path, data: &Path) -> (Killed, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bookrec"))
        .args(["demo", "--data"])
        .arg(data)
        .current_dir(cwd)
        .env("BOOKREC__COLLECT__LISTEN", "127.0.0.1:0")
        .env("BOOKREC__SERVE__LISTEN", "127.0.0.1:0")
        .env("BOOKREC__BATCH__QUERIES_DIR", root.join("queries/batch"))
        .env(
            "BOOKREC__STREAM__QUERIES_DIR",
            root.join("queries/realtime"),
        )
        .env("BOOKREC__LAKE__SOURCES_DIR", root.join("queries/sources"))
        .env("BOOKREC__LOG__FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bookrec demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut page = None;
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        if let Some(url) = line.strip_prefix("demo page:") {
            page = Some(url.trim().to_owned());
            break;
        }
    }
    // keep draining so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    let child = Killed(child);
    (child, page.expect("the demo printed its page URL"))
}

pub struct Driver {
    base: String,
    session: String,
    http: reqwest::Client,
    process: Child,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    pub async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Driver {
            base,
            session,
            http,
            process,
            _profile: profile,
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver json");
        assert!(r["value"]["error"].is_null(), "webdriver {path}: {r}");
        r["value"].clone()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn click(&self, css: &str) {
        let e = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = e[ELEMENT].as_str().expect("element id").to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("png");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // end the session (Chromium quits with it), then stop chromedriver
        use std::io::{Read as _, Write as _};
        let addr = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The recommendation list as shown: (book id, reasons) per row.
async fn shown(d: &Driver) -> Vec<(String, String)> {
    let v = d
        .script(
            "return [...document.querySelectorAll('#recs li')].map(li => \
             [li.dataset.book, li.querySelector('.why').textContent]);",
        )
        .await;
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap_or_default().to_owned(),
                        r[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_follows_a_click_within_a_second() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    write_fixture(&data);
    let (demo, page) = start_demo(work.path(), &data);
    let driver = Driver::start().await;
    driver
        .call(reqwest::Method::POST, "/url", Some(json!({"url": page})))
        .await;
    // the page lists books and (cold start: popular) recommendations
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let books = driver
            .script("return document.querySelectorAll('#books li').length;")
            .await;
        let recs = shown(&driver).await;
        if books.as_u64().unwrap_or(0) >= 20 && !recs.is_empty() {
            break recs;
        }
        assert!(Instant::now() < deadline, "the page did not fill: {recs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        before.iter().all(|(_, why)| !why.contains("similar_to")),
        "{before:?}"
    );
    // the page shows the user's variant of the demo's experiment, and each recommended
    // book knows its response and slot (a click on it carries them)
    let variant = driver
        .script("return document.getElementById('variant').textContent;")
        .await;
    let variant = variant.as_str().unwrap_or_default();
    assert!(
        variant == "experiments · demo: control" || variant == "experiments · demo: no-trending",
        "{variant}"
    );
    let slots = driver
        .script(
            "return [...document.querySelectorAll('#recs li')].map(li => \
             [li.dataset.requestId, li.dataset.position]);",
        )
        .await;
    let slots = slots.as_array().cloned().unwrap_or_default();
    assert!(!slots.is_empty());
    for (n, s) in slots.iter().enumerate() {
        assert!(s[0].as_str().is_some_and(|r| r.len() == 36), "{slots:?}");
        assert_eq!(s[1], json!((n + 1).to_string()), "{slots:?}");
    }

    // a click on a history book: the list changes, led by books similar to it. Three
    // clicks on three books: each must show; the fastest within a second (the machine is
    // shared and the other tests run beside this one: the best of three is the pipeline's
    // latency, not the neighbours')
    let mut times = Vec::new();
    let mut previous = before;
    for book in ["H003", "H007", "H010"] {
        driver
            .click(&format!("#books li[data-book='{book}']"))
            .await;
        let clicked = Instant::now();
        let reason = format!("similar_to:{book}");
        let after = loop {
            let now = shown(&driver).await;
            if now.first().is_some_and(|(_, why)| why.contains(&reason)) {
                break now;
            }
            assert!(
                clicked.elapsed() < Duration::from_secs(10),
                "no {reason} leading {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        times.push(clicked.elapsed());
        assert_ne!(previous, after);
        assert!(after[0].0.starts_with('H'), "{after:?}");
        assert!(
            after.iter().all(|(b, _)| b != book),
            "the clicked book itself is not recommended: {after:?}"
        );
        previous = after;
    }
    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png");
    driver.screenshot(&shot).await;
    eprintln!(
        "demo page: recommendations changed {times:?} after the clicks; screenshot {}",
        shot.display()
    );
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 1000);
    let fastest = times.iter().min().copied().unwrap_or_default();
    assert!(
        fastest <= Duration::from_secs(1),
        "the page took {times:?} to show the clicks"
    );
    drop(demo);
}

/// Stored XSS: a book whose id, title and publisher are HTML, made popular so the page shows
/// it among the recommendations, goes through the whole pipeline (replay → collector → lake
/// → batch → API) and is shown as typed: no element is created from it, no script runs. The
/// page is served under a Content-Security-Policy without inline script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_in_ids_and_titles_shows_as_text_and_never_runs() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    write_fixture(&data);
    let (id, title, publisher) = (
        "X<img src=x onerror=window.__xss=1>",
        "<img src=x onerror=window.__xss=2>",
        "<script>window.__xss=3</script>",
    );
    let mut books = std::fs::read_to_string(data.join("books.csv")).expect("books");
    books.push_str(&format!("{id},{title},Mallory,2020,{publisher}\n"));
    std::fs::write(data.join("books.csv"), books).expect("books.csv");
    let mut ratings = std::fs::read_to_string(data.join("ratings.csv")).expect("ratings");
    for u in 0..60 {
        ratings.push_str(&format!("{u},{id},9\n"));
    }
    std::fs::write(data.join("ratings.csv"), ratings).expect("ratings.csv");
    let (demo, page) = start_demo(work.path(), &data);

    let resp = reqwest::get(&page).await.expect("page");
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.split(';')
            .any(|d| d.trim().starts_with("script-src") && d.contains("unsafe")),
        "{csp}"
    );
    let html = resp.text().await.expect("html");
    assert!(!html.contains("<script>"), "inline script in the page");

    let driver = Driver::start().await;
    driver
        .call(reqwest::Method::POST, "/url", Some(json!({"url": page})))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs = shown(&driver).await;
        let books = driver
            .script(
                "return [...document.querySelectorAll('#books li')].map(li => li.dataset.book);",
            )
            .await;
        let listed = books
            .as_array()
            .is_some_and(|b| b.iter().any(|v| v.as_str() == Some(id)));
        if listed && recs.iter().any(|(b, _)| b == id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the book was not shown: {recs:?} {books}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // shown as typed, nothing ran, no element was made from the data
    let page_text = driver.script("return document.body.innerText;").await;
    let page_text = page_text.as_str().unwrap_or_default();
    assert!(
        page_text.contains(title) && page_text.contains(publisher),
        "{page_text}"
    );
    assert_eq!(
        driver.script("return window.__xss === undefined;").await,
        json!(true)
    );
    assert_eq!(
        driver
            .script("return document.querySelectorAll('img, #recs script, #books script').length;")
            .await,
        json!(0)
    );
    drop(driver);
    drop(demo);
}
