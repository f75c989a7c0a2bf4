//! The web dashboard in real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `cargo xtask setup` installs), driven through chromedriver: a replayer over TLS with
//! a twin in memory (`vm::fake`) and a simulated daemon streaming batches.
//!
//! Screenshots of each page are kept in `target/tmp/dashboard/` (the README shows one).
//! Without chromedriver the tests say so and pass, unless `SAFETYTWIN_BROWSER_REQUIRED=1`
//! (`cargo xtask test` sets it after installing the browser).

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Running, Stream, Tls};
use fantoccini::{Client, ClientBuilder, Locator};
use safetytwin_model::{Batch, BatchHeader, DeltaBatch, fixtures};
use safetytwin_proto::{convert, v1};
use safetytwin_services::server::Security;
use safetytwin_store::Store;
use safetytwin_twin::{
    applier::{Applier, ApplierConfig},
    vm::fake::FakeTwin,
};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest a page may take to show what a step waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// Whether the browser is here; `false` (after saying why) when the test may skip.
fn browser_present() -> bool {
    if std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var_os("SAFETYTWIN_BROWSER_REQUIRED").is_none(),
        "{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver, \
         or cargo xtask setup)"
    );
    eprintln!("skipped: no {CHROMEDRIVER} / {CHROMIUM} (cargo xtask setup installs them)");
    false
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = common::scratch("chromedriver");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", dir.path().join("log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            port,
            _dir: dir,
        }
    }

    /// A headless Chromium with a fresh profile, which accepts the test CA's certificate.
    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        caps.insert("acceptInsecureCerts".into(), json!(true));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    let path = artifacts().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
}

/// Clicks `css` once it is there.
async fn click(c: &Client, css: &str) {
    wait_for(c, css).await.click().await.unwrap();
}

async fn text(c: &Client, css: &str) -> String {
    wait_for(c, css).await.text().await.unwrap()
}

/// A batch of `host` changing `/etc/app.conf` to `conf`, with `extra` files.
fn batch(host: &str, seq: u64, conf: &str, extra: &[(&str, &str)]) -> v1::DeltaBatch {
    let mut files = vec![fixtures::upsert("/etc/app.conf", fixtures::text(conf))];
    files.extend(
        extra
            .iter()
            .map(|(p, t)| fixtures::upsert(p, fixtures::text(t))),
    );
    let mut b = fixtures::batch(
        host,
        seq,
        DeltaBatch {
            files,
            ..DeltaBatch::default()
        },
    );
    b.header.window_end_unix_ns = now_ns();
    b.header.window_start_unix_ns = b.header.window_end_unix_ns - 10_000_000_000;
    convert::batch_to_wire(&b)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn fake_twin(store: Arc<Store>) -> Applier {
    Applier::new(
        store,
        Arc::new(FakeTwin::default()),
        ApplierConfig::default(),
    )
}

/// GETs `path` with the token; the JSON answer.
async fn get(api: &reqwest::Client, base: &str, path: &str, token: &str) -> Value {
    let r = api
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Waits until the twin of web-1 stands at `seq`.
async fn twin_at(api: &reqwest::Client, base: &str, token: &str, seq: u64) {
    let until = Instant::now() + PAGE_WAIT;
    loop {
        let v = get(api, base, "/api/v1/hosts/web-1/twin", token).await;
        if v["twin"]["applied_seq"] == seq {
            return;
        }
        assert!(Instant::now() < until, "twin not at {seq}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_hosts_live_changes_diffs_and_reverts_a_twin() {
    if !browser_present() {
        return;
    }
    let tls = Tls::new("dashboard");
    let server = Running::start_twin_http("dashboard", tls.security(), fake_twin).await;
    let http = server.http.unwrap();
    let base = format!("https://localhost:{}", http.port());
    let api = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&tls.read(&tls.files.ca)).unwrap())
        .build()
        .unwrap();

    // The simulated daemon: two batches, one of them carrying markup in a file.
    let hostile = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">\n";
    let (mut daemon, _) = Stream::open_tls(server.addr, "web-1", &tls).await;
    assert_eq!(
        daemon
            .send(batch("web-1", 1, "one\ntwo\n", &[("/etc/motd", hostile)]))
            .await,
        Ok(1)
    );
    assert_eq!(
        daemon.send(batch("web-1", 2, "one\ntwo\n2b\n", &[])).await,
        Ok(2)
    );
    twin_at(&api, &base, &tls.token, 2).await;

    // Without the token the API gives nothing and changes nothing.
    for (method, path) in [
        ("GET", "/api/v1/hosts"),
        ("GET", "/api/v1/hosts/web-1/batches"),
        ("GET", "/api/v1/hosts/web-1/diff?from=0&to=2"),
        ("POST", "/api/v1/snapshots/safetytwin-web-1-1"),
        ("POST", "/api/v1/hosts/web-1/resume"),
    ] {
        let r = api
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }

    let driver = Driver::start();
    let profile = common::scratch("chromium-profile");
    let c = driver.browser(profile.path()).await;

    // Without the token: a login form and nothing of the history.
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(&c, "#token").await;
    let source = c.source().await.unwrap();
    assert!(
        !source.contains("web-1") && !source.contains("app.conf"),
        "{source}"
    );
    screenshot(&c, "0-login").await;

    // A wrong token is refused and said so.
    wait_for(&c, "#token")
        .await
        .send_keys("not-the-token")
        .await
        .unwrap();
    click(&c, "#login-submit").await;
    assert!(text(&c, "#login-error").await.contains("refused"));
    assert!(!c.source().await.unwrap().contains("web-1"));

    // The right one: the hosts page.
    wait_for(&c, "#token")
        .await
        .send_keys(&tls.token)
        .await
        .unwrap();
    click(&c, "#login-submit").await;
    let row = text(&c, "#hosts tr[data-host='web-1']").await;
    assert!(row.contains("web-1") && row.contains("in sync"), "{row}");
    screenshot(&c, "1-hosts").await;

    // A host's timeline, and a batch arriving while it is open.
    click(&c, "#hosts tr[data-host='web-1'] a").await;
    wait_for(&c, "#batches tr[data-seq='2']").await;
    wait_for(&c, "svg#sizes rect.bar").await;
    assert_eq!(
        daemon
            .send(batch("web-1", 3, "one\nthree\n2b\n", &[]))
            .await,
        Ok(3)
    );
    let live = text(&c, "#batches tr[data-seq='3']").await;
    assert!(live.starts_with('3'), "{live}");
    click(&c, "#batches tr[data-seq='3']").await;
    assert!(text(&c, "#batch-detail").await.contains("/etc/app.conf"));
    screenshot(&c, "2-timeline").await;

    // The diff of that batch: a unified text diff.
    click(&c, "#batches tr[data-seq='3'] a").await;
    let unified = text(&c, "#diff div[data-path='/etc/app.conf'] pre.unified").await;
    assert!(
        unified.contains("-two") && unified.contains("+three") && unified.contains(" one"),
        "{unified}"
    );
    screenshot(&c, "3-diff").await;

    // The whole history from nothing: the hostile file is shown as text and runs nothing.
    c.goto(&format!("{base}/#/host/web-1/diff/0/3"))
        .await
        .unwrap();
    let motd = text(&c, "#diff div[data-path='/etc/motd'] pre.unified").await;
    assert!(motd.contains("<script>window.pwned=1</script>"), "{motd}");
    let pwned = c
        .execute("return typeof window.pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!("undefined"));
    assert!(c.find(Locator::Css("#diff img")).await.is_err());

    // The twin: revert to the first snapshot (confirmed first); it is held there.
    twin_at(&api, &base, &tls.token, 3).await;
    c.goto(&format!("{base}/#/host/web-1/twin")).await.unwrap();
    wait_for(&c, "#twin-state[data-applied='3']").await;
    wait_for(&c, "svg#applies rect.bar").await;
    click(&c, "#snapshots tr[data-seq='1'] button.revert").await;
    assert!(
        text(&c, "#confirm-text")
            .await
            .contains("safetytwin-web-1-1")
    );
    click(&c, "#confirm-yes").await;
    wait_for(&c, "#twin-state[data-held='yes'][data-applied='1']").await;
    screenshot(&c, "4-twin-held").await;

    // Held: a new batch is stored but not applied.
    assert_eq!(daemon.send(batch("web-1", 4, "four\n", &[])).await, Ok(4));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let twin = get(&api, &base, "/api/v1/hosts/web-1/twin", &tls.token).await;
    assert_eq!(
        (&twin["twin"]["held"], &twin["twin"]["applied_seq"]),
        (&json!(true), &json!(1))
    );

    // Resume (confirmed): the twin follows the history again.
    click(&c, "#resume").await;
    click(&c, "#confirm-yes").await;
    twin_at(&api, &base, &tls.token, 4).await;
    wait_for(&c, "#twin-state[data-held='no'][data-applied='4']").await;

    // Logging out forgets the token.
    click(&c, "#logout").await;
    wait_for(&c, "#token").await;
    c.refresh().await.unwrap();
    wait_for(&c, "#token").await;

    c.close().await.unwrap();
    drop(daemon);
    server.stop().await;
}

/// 1,000 hosts and 10,000 batches (one host has 9,001 of them): the hosts page, its filter,
/// the long timeline and a diff across it still render. Prints the times for the README and
/// the note; asserts only what the pages show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hosts_and_ten_thousand_batches() {
    if !browser_present() {
        return;
    }
    let server = Running::start_twin_http("dashboard-scale", Security::Insecure, fake_twin).await;
    let base = format!("http://localhost:{}", server.http.unwrap().port());
    let store = server.store.clone();
    let filled = Instant::now();
    tokio::task::spawn_blocking(move || {
        let put = |host: &str, seq: u64, text: &str| {
            let delta = DeltaBatch {
                files: vec![
                    fixtures::upsert("/etc/app.conf", fixtures::text(text)),
                    fixtures::upsert(
                        &format!("/etc/app.d/{}.conf", seq % 50),
                        fixtures::text(text),
                    ),
                ],
                ..DeltaBatch::default()
            };
            let header = BatchHeader {
                host_id: host.into(),
                seq,
                window_end_unix_ns: now_ns() - (10_000 - seq as i64) * 10_000_000_000,
                ..BatchHeader::default()
            };
            store.append(&Batch { header, delta }).unwrap();
        };
        for seq in 1..=9_001 {
            put("host-0000", seq, &format!("seq {seq}\n"));
        }
        for h in 1..1_000 {
            put(&format!("host-{h:04}"), 1, "one\n");
        }
    })
    .await
    .unwrap();
    eprintln!(
        "stored 10,000 batches of 1,000 hosts in {:?}",
        filled.elapsed()
    );

    let api = reqwest::Client::new();
    let timed = |path: &'static str| {
        let (api, url) = (api.clone(), format!("{base}{path}"));
        async move {
            let t = Instant::now();
            let r = api.get(url).send().await.unwrap();
            assert!(r.status().is_success(), "{path}");
            let body = r.bytes().await.unwrap();
            eprintln!("GET {path}: {:?}, {} KiB", t.elapsed(), body.len() / 1024);
        }
    };
    timed("/api/v1/hosts").await;
    timed("/api/v1/hosts/host-0000/batches?limit=200").await;
    timed("/api/v1/hosts/host-0000/batches?limit=200&before=201").await;
    timed("/api/v1/hosts/host-0000/diff?from=1&to=9001").await;

    let driver = Driver::start();
    let profile = common::scratch("chromium-profile");
    let c = driver.browser(profile.path()).await;
    let t = Instant::now();
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(&c, "#hosts tr[data-host='host-0999']").await;
    let shown = t.elapsed();
    let rows = c
        .find_all(Locator::Css("#hosts tbody tr"))
        .await
        .unwrap()
        .len();
    assert_eq!(rows, 1_000);
    let table = wait_for(&c, "#hosts").await;
    eprintln!(
        "hosts page: 1,000 rows shown {shown:?} after navigation (API {} ms, rendering {} ms)",
        table
            .attr("data-load-ms")
            .await
            .unwrap()
            .unwrap_or_default(),
        table
            .attr("data-render-ms")
            .await
            .unwrap()
            .unwrap_or_default(),
    );
    screenshot(&c, "5-thousand-hosts").await;

    let t = Instant::now();
    wait_for(&c, "#filter")
        .await
        .send_keys("host-0999")
        .await
        .unwrap();
    assert_eq!(text(&c, "#host-count").await, "1 of 1000 hosts");
    eprintln!(
        "filter to one host: {:?} (rendering {} ms)",
        t.elapsed(),
        table
            .attr("data-render-ms")
            .await
            .unwrap()
            .unwrap_or_default()
    );

    let t = Instant::now();
    c.goto(&format!("{base}/#/host/host-0000")).await.unwrap();
    wait_for(&c, "#batches tr[data-seq='8802']").await;
    eprintln!(
        "timeline of 9,001 batches, newest 200 shown: {:?}",
        t.elapsed()
    );
    assert!(
        c.find(Locator::Css("#batches tr[data-seq='8801']"))
            .await
            .is_err()
    );
    let t = Instant::now();
    click(&c, "#older").await;
    wait_for(&c, "#batches tr[data-seq='8602']").await;
    eprintln!("200 older batches: {:?}", t.elapsed());

    let t = Instant::now();
    c.goto(&format!("{base}/#/host/host-0000/diff/1/9001"))
        .await
        .unwrap();
    wait_for(&c, "#diff div[data-path='/etc/app.conf'] pre.unified").await;
    eprintln!("diff across 9,000 batches: {:?}", t.elapsed());

    c.close().await.unwrap();
    server.stop().await;
}
