//! The operator's HTTP API against an in-process replayer without a twin: status, a host's
//! state at two seqs, error codes and bodies, the metrics exposition, and the bearer token
//! over TLS.

mod common;

use std::collections::BTreeSet;

use common::{Running, Stream, Tls, batch, within};
use reqwest::{Client, StatusCode};
use safetytwin_services::server::Security;
use serde_json::Value;

async fn get(client: &Client, url: String) -> (StatusCode, Value) {
    let r = within(client.get(url).send()).await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The text of the only file of a state answer.
fn text(state: &Value) -> &str {
    state["files"][0]["content"].as_str().unwrap()
}

/// Checks every line is a comment or `name{labels} value`, and every sample's family was
/// typed; returns the samples.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut typed = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line:?}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no # TYPE");
        samples.push((series.to_owned(), value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_state_errors_and_metrics_without_a_twin() {
    let server = Running::start_http("http-api", Security::Insecure).await;
    let base = format!("http://{}", server.http.unwrap());
    let client = Client::new();

    let (mut ingest, _) = Stream::open(server.addr, "web-1").await;
    assert_eq!(ingest.send(batch("web-1", 1, "one")).await, Ok(1));
    assert_eq!(ingest.send(batch("web-1", 2, "two")).await, Ok(2));
    assert_eq!(
        ingest.send(batch("web-1", 2, "two")).await,
        Ok(2),
        "a duplicate is acked"
    );

    let (code, status) = get(&client, format!("{base}/api/v1/status")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["hosts"], 1);
    assert_eq!(status["batches"], 2);
    assert_eq!(status["twin_backend"], "none");
    assert_eq!(status["twins"], Value::Array(Vec::new()));
    assert!(status["uptime_s"].is_i64(), "{status}");

    let (code, latest) = get(&client, format!("{base}/api/v1/hosts/web-1/state")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (&latest["host"], &latest["seq"]),
        (&"web-1".into(), &2.into())
    );
    assert_eq!(latest["files"][0]["path"], "/etc/app.conf");
    assert_eq!(text(&latest), "two");
    let (code, first) = get(&client, format!("{base}/api/v1/hosts/web-1/state?seq=1")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!((first["seq"].as_u64(), text(&first)), (Some(1), "one"));

    for (url, want) in [
        ("/api/v1/hosts/nope/state", StatusCode::NOT_FOUND),
        ("/api/v1/hosts/web-1/state?seq=9", StatusCode::NOT_FOUND),
        ("/api/v1/hosts/web-1/state?seq=x", StatusCode::BAD_REQUEST),
        ("/api/v1/snapshots", StatusCode::CONFLICT),
        ("/api/v1/snapshots?host=web-1", StatusCode::CONFLICT),
        ("/api/v1/nope", StatusCode::NOT_FOUND),
    ] {
        let (code, body) = get(&client, format!("{base}{url}")).await;
        assert_eq!(code, want, "{url}: {body}");
        assert!(body["error"].is_string(), "{url}: {body}");
    }
    let r = within(
        client
            .post(format!("{base}/api/v1/snapshots/safetytwin-web-1-1"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "revert without a twin");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("--twin none"));

    let r = within(client.get(format!("{base}/metrics")).send())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = parse_exposition(&r.text().await.unwrap());
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
            .1
    };
    assert_eq!(
        value(r#"safetytwin_replayer_batches_stored_total{host="web-1"}"#),
        2.0
    );
    assert_eq!(
        value(r#"safetytwin_replayer_batches_duplicate_total{host="web-1"}"#),
        1.0
    );
    assert_eq!(value("safetytwin_replayer_daemons_connected"), 1.0);
    assert_eq!(
        value("safetytwin_replayer_ingest_append_seconds_count"),
        3.0
    );
    assert_eq!(
        value(r#"safetytwin_replayer_batch_size_bytes_bucket{le="+Inf"}"#),
        3.0
    );

    // The dashboard's reads: hosts, the timeline (newest, after, before), one batch, a diff.
    assert_eq!(ingest.send(batch("web-1", 3, "three")).await, Ok(3));
    let (code, hosts) = get(&client, format!("{base}/api/v1/hosts")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(hosts["hosts"][0]["host"], "web-1");
    assert_eq!(hosts["hosts"][0]["last_seq"], 3);
    assert!(hosts["hosts"][0]["twin"].is_null());
    let seqs = |v: &Value| -> Vec<u64> {
        v["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["seq"].as_u64().unwrap())
            .collect()
    };
    let timeline = |q: &str| get(&client, format!("{base}/api/v1/hosts/web-1/batches{q}"));
    assert_eq!(seqs(&timeline("").await.1), [1, 2, 3]);
    assert_eq!(seqs(&timeline("?limit=2").await.1), [2, 3]);
    assert_eq!(seqs(&timeline("?after=1").await.1), [2, 3]);
    assert_eq!(seqs(&timeline("?after=3").await.1), Vec::<u64>::new());
    let huge = format!("?after={}&limit=500", u64::MAX);
    assert_eq!(seqs(&timeline(&huge).await.1), Vec::<u64>::new());
    assert_eq!(seqs(&timeline("?before=3&limit=1").await.1), [2]);
    assert_eq!(seqs(&timeline("?before=1").await.1), Vec::<u64>::new());
    assert_eq!(timeline("?limit=x").await.0, StatusCode::BAD_REQUEST);
    let line = &timeline("").await.1["batches"][1];
    assert_eq!(
        (
            line["counts"]["files"].as_u64(),
            line["counts"]["total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (code, one) = get(&client, format!("{base}/api/v1/hosts/web-1/batches/2")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(one["files"][0]["content"], "two");
    let (code, _) = get(&client, format!("{base}/api/v1/hosts/web-1/batches/9")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, diff) = get(
        &client,
        format!("{base}/api/v1/hosts/web-1/diff?from=1&to=3"),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let unified = diff["diffs"]["/etc/app.conf"]["unified"].as_str().unwrap();
    assert!(
        unified.contains("-one") && unified.contains("+three"),
        "{unified}"
    );
    for (q, want) in [
        ("?from=1", StatusCode::BAD_REQUEST),
        ("?from=1&to=x", StatusCode::BAD_REQUEST),
        ("?from=1&to=9", StatusCode::NOT_FOUND),
    ] {
        let (code, body) = get(&client, format!("{base}/api/v1/hosts/web-1/diff{q}")).await;
        assert_eq!(code, want, "{q}: {body}");
    }
    let (code, _) = get(&client, format!("{base}/api/v1/hosts/web-1/twin")).await;
    assert_eq!(code, StatusCode::CONFLICT, "no twin backend");

    // A gap ends the stream: the refusal is counted by its code, the daemon no longer.
    assert!(ingest.send(batch("web-1", 5, "five")).await.is_err());
    drop(ingest);
    let metrics = within(async {
        loop {
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("safetytwin_replayer_daemons_connected 0") {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        metrics
            .contains(r#"safetytwin_replayer_batches_refused_total{code="FailedPrecondition"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_every_request_needs_the_bearer_token() {
    let tls = Tls::new("http-tls-certs");
    let (files, token) = (&tls.files, tls.token.clone());
    let read = |p: &std::path::Path| tls.read(p);
    let server = Running::start_http("http-tls", tls.security()).await;
    let port = server.http.unwrap().port();
    let client = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&files.ca)).unwrap())
        .build()
        .unwrap();

    for path in [
        "/api/v1/status",
        "/metrics",
        "/api/v1/hosts/web-1/state",
        "/api/v1/hosts",
        "/api/v1/hosts/web-1/batches",
        "/api/v1/hosts/web-1/batches/1",
        "/api/v1/hosts/web-1/diff?from=0&to=1",
    ] {
        let url = format!("https://localhost:{port}{path}");
        let r = within(client.get(&url).send()).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without a token"
        );
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("missing"),
            "{body}"
        );

        let wrong = format!("{}x", &token[..token.len() - 1]);
        let r = within(client.get(&url).bearer_auth(wrong).send())
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
    }
    let r = within(
        client
            .get(format!("https://localhost:{port}/api/v1/status"))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["hosts"], 0);
    let r = within(
        client
            .get(format!("https://localhost:{port}/metrics"))
            .bearer_auth(&token)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    parse_exposition(&r.text().await.unwrap());

    // The dashboard's page needs no token (it holds no data; it asks the API with one), and
    // its policy allows only this server's script, style and API.
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = within(client.get(format!("https://localhost:{port}{path}")).send())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = h["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
            "{policy}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(!r.text().await.unwrap().contains("web-1"));
    }

    // Plaintext to the TLS listener gets no answer.
    assert!(
        within(
            Client::new()
                .get(format!("http://localhost:{port}/metrics"))
                .send()
        )
        .await
        .is_err()
    );
    drop(client);
    server.stop().await;
}

/// A page in the operator's browser attacks the loopback API: through DNS rebinding
/// (evil.example resolving to 127.0.0.1, so the browser sends `Host: evil.example`) and through
/// cross-site requests (`Origin: http://evil.example`). Both are refused before any handler
/// runs; curl-style requests, without Origin, still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dns_rebinding_and_csrf_are_refused() {
    use reqwest::header::{HOST, ORIGIN};
    let server = Running::start_http("local-http-guard", Security::Insecure).await;
    let addr = server.http.unwrap();
    let port = addr.port();
    let curl = Client::new();
    for base in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ] {
        let (code, _) = get(&curl, format!("{base}/api/v1/status")).await;
        assert_eq!(code, StatusCode::OK, "{base}");
    }

    // DNS rebinding, as the browser does it: the name resolves to the listener.
    let rebound = Client::builder()
        .resolve("evil.example", addr)
        .build()
        .unwrap();
    for path in ["/api/v1/status", "/metrics", "/api/v1/nope"] {
        let (code, body) = get(&rebound, format!("http://evil.example:{port}{path}")).await;
        assert_eq!(code, StatusCode::MISDIRECTED_REQUEST, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("Host"), "{body}");
    }
    let r = within(
        rebound
            .post(format!(
                "http://evil.example:{port}/api/v1/snapshots/safetytwin-web-1-1"
            ))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    // The right name on another port is another origin too.
    let base = format!("http://127.0.0.1:{port}");
    let r = within(
        curl.get(format!("{base}/api/v1/status"))
            .header(HOST, "localhost:1")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);

    // CSRF: a foreign Origin is refused on every method; without a twin the revert would
    // answer 409, so 403 shows the handler never ran.
    let revert = format!("{base}/api/v1/snapshots/safetytwin-web-1-1");
    for origin in [
        "http://evil.example",
        &format!("http://evil.example:{port}"),
        &format!("https://localhost:{port}"),
        &format!("http://localhost:{}", port.wrapping_add(1)),
        "null",
    ] {
        let r = within(curl.post(&revert).header(ORIGIN, origin).send())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST from {origin}");
        let r = within(
            curl.get(format!("{base}/api/v1/status"))
                .header(ORIGIN, origin)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "GET from {origin}");
    }
    // A cross-site form post the browser sends without Origin is told by Fetch Metadata.
    let r = within(
        curl.post(&revert)
            .header("sec-fetch-site", "cross-site")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The API's own origin, and curl without Origin, reach the handler.
    let r = within(
        curl.get(format!("{base}/api/v1/status"))
            .header(ORIGIN, format!("http://localhost:{port}"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = within(curl.post(&revert).send()).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "curl's revert reaches the handler"
    );
    server.stop().await;
}

/// With TLS the API answers only to the certificate's names (a client that skips certificate
/// checks does not change that), and a foreign Origin is refused even with the right token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_tls_answers_only_the_certificate_names() {
    use reqwest::header::{HOST, ORIGIN};
    let tls = Tls::new("local-http-tls-certs");
    let server = Running::start_http("local-http-tls", tls.security()).await;
    let addr = server.http.unwrap();
    let port = addr.port();
    let ca = reqwest::Certificate::from_pem(&tls.read(&tls.files.ca)).unwrap();
    let client = Client::builder().add_root_certificate(ca).build().unwrap();
    let status = format!("https://localhost:{port}/api/v1/status");
    let r = within(client.get(&status).bearer_auth(&tls.token).send())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = within(
        client
            .get(&status)
            .bearer_auth(&tls.token)
            .header(HOST, "evil.example")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let careless = Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("evil.example", addr)
        .build()
        .unwrap();
    let r = within(
        careless
            .get(format!("https://evil.example:{port}/api/v1/status"))
            .bearer_auth(&tls.token)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    let r = within(
        client
            .post(format!(
                "https://localhost:{port}/api/v1/snapshots/safetytwin-web-1-1"
            ))
            .bearer_auth(&tls.token)
            .header(ORIGIN, "https://evil.example")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    drop((client, careless));
    server.stop().await;
}

/// `serve --http-host NAME`: a reverse proxy's name is answered, others still are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_http_host_adds_a_name() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(safetytwin_store::Store::open(dir.join("h.redb")).unwrap());
    let server = safetytwin_services::server::Server::bind("127.0.0.1:0".parse().unwrap(), store)
        .await
        .unwrap()
        .http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .http_names(vec!["proxy.example".into()]);
    let addr = server.http_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = Client::builder()
        .resolve("proxy.example", addr)
        .resolve("evil.example", addr)
        .build()
        .unwrap();
    let port = addr.port();
    let (code, _) = get(
        &client,
        format!("http://proxy.example:{port}/api/v1/status"),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = get(&client, format!("http://evil.example:{port}/api/v1/status")).await;
    assert_eq!(code, StatusCode::MISDIRECTED_REQUEST);
    stop.send(()).unwrap();
    within(task).await.unwrap().unwrap();
}
