//! The operator's HTTP surface (`serve --http ADDR`): a small JSON API and the Prometheus
//! metrics, on a listener of its own.
//!
//! - `GET /api/v1/status`: the replayer and its twins (what `Twin.Status` answers)
//! - `GET /api/v1/snapshots[?host=H]`: the twins' snapshots, oldest first
//! - `POST /api/v1/snapshots/{name}`: revert the twin that has it, and hold it there
//! - `GET /api/v1/hosts/{host}/state[?seq=N]`: a host's model, latest or at a seq
//! - `GET /api/v1/hosts`: every host's freshness, twin, drift and loss counters
//! - `GET /api/v1/hosts/{host}/batches[?after=N|before=N][&limit=L]`: a host's timeline, a
//!   line per batch (counts by kind), oldest first; at most `views::TIMELINE_MAX`
//! - `GET /api/v1/hosts/{host}/batches/{seq}`: one stored batch
//! - `GET /api/v1/hosts/{host}/diff?from=A&to=B`: the net changes from seq A to B, with a
//!   unified text diff of each file
//! - `GET /api/v1/hosts/{host}/twin`: the host's twin, its recent applies and its snapshots
//! - `POST /api/v1/hosts/{host}/resume`: let a held twin follow the history again
//! - `GET /metrics`: the text exposition of `metrics.rs`
//! - `GET /`: the dashboard (`web.rs`), which reads all of the above with the operator's token
//!
//! The answers come from the same calls as the gRPC `Twin` service ([`Queries`], the
//! [`Applier`]) and have the shape of the CLI's `--json` output: both render through
//! `safetytwin_proto::json`.
//! With TLS the listener uses the gRPC listener's certificate and every request needs the
//! consumers' bearer token; [`ApiError`] is the one place errors become HTTP status codes.
//!
//! A page in the operator's browser can reach a loopback listener too: through DNS rebinding
//! (evil.example resolving to 127.0.0.1) or a cross-site request. [`Authority`] therefore
//! answers only requests addressed to one of the server's own names (421 otherwise) and
//! refuses any request that carries a foreign `Origin`, or a state-changing one that the
//! browser marks cross-site (403). Requests without `Origin`, as curl and scripts send them,
//! are not affected.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use safetytwin_proto::{
    contract::{self, Class},
    v1::get_state_request::At,
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinSet};
use tokio_stream::StreamExt;

use safetytwin_store::StoreError;
use safetytwin_twin::applier::{Applier, ApplyError};

use crate::{
    listener::{self, Incoming, Limits},
    metrics::Metrics,
    status,
    token::{BadToken, check_bearer},
    twin::{self, Queries},
    views, web,
};
use tonic::Code;

/// Longest open requests may take to finish once the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// An error answer: a status code and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// A twin call on a replayer without a twin backend: the request may be right, the
    /// replayer is not in the state to answer it.
    fn no_twin() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "this replayer runs without a twin (serve --twin none)",
        )
    }
}

/// The HTTP status for a gRPC code: the class (`safetytwin_proto::contract`) decides client
/// error or server error, so HTTP and gRPC callers are told the same thing.
pub fn http_status(code: Code) -> StatusCode {
    match (contract::class(code), code) {
        (Class::Permanent, Code::AlreadyExists) => StatusCode::CONFLICT,
        (Class::Permanent, _) => StatusCode::BAD_REQUEST,
        // Not in this order: the same request may succeed once the state changed.
        (Class::OutOfOrder, _) => StatusCode::CONFLICT,
        (Class::NotFound, _) => StatusCode::NOT_FOUND,
        (Class::Unauthenticated, Code::Unauthenticated) => StatusCode::UNAUTHORIZED,
        (Class::Unauthenticated, Code::PermissionDenied) => StatusCode::FORBIDDEN,
        (Class::Unauthenticated, _) => StatusCode::NOT_IMPLEMENTED,
        (Class::Unavailable, Code::Unavailable | Code::ResourceExhausted) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        (Class::Unavailable, Code::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
        (Class::Unavailable, _) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Errors take the code `status.rs` gives them, then [`http_status`]: one mapping for both APIs.
impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self::new(http_status(s.code()), s.message())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        status::store(e).into()
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        status::apply(e).into()
    }
}

impl From<BadToken> for ApiError {
    fn from(e: BadToken) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// What the handlers answer from.
#[derive(Clone)]
pub struct Api {
    queries: Queries,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
}

impl Api {
    /// Answers from `queries` and `metrics`; with a `token`, only to callers that send it.
    pub fn new(queries: Queries, metrics: Arc<Metrics>, token: Option<String>) -> Self {
        Api {
            queries,
            metrics,
            token: token.map(Arc::from),
        }
    }

    fn applier(&self) -> Result<Arc<Applier>, ApiError> {
        self.queries
            .applier()
            .cloned()
            .ok_or_else(ApiError::no_twin)
    }

    /// The routes, behind the token check.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v1/status", get(status))
            .route("/api/v1/snapshots", get(snapshots))
            .route("/api/v1/snapshots/{name}", post(revert))
            .route("/api/v1/hosts/{host}/state", get(state))
            .route("/api/v1/hosts", get(hosts))
            .route("/api/v1/hosts/{host}/batches", get(timeline))
            .route("/api/v1/hosts/{host}/batches/{seq}", get(batch))
            .route("/api/v1/hosts/{host}/diff", get(diff))
            .route("/api/v1/hosts/{host}/twin", get(twin_view))
            .route("/api/v1/hosts/{host}/resume", post(resume))
            .route("/metrics", get(metrics))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            })
            .route_layer(middleware::from_fn_with_state(self.clone(), authorize))
            .merge(web::router())
            .with_state(self)
    }
}

/// Lets a request through when no token is configured or it carries the right one.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = check_bearer(given, token) {
            return ApiError::from(e).into_response();
        }
    }
    next.run(request).await
}

/// The names the API answers to: what a request's `Host` (or `:authority`) and any `Origin` must
/// name, with the listening port.
#[derive(Clone, Debug)]
pub struct Authority {
    scheme: &'static str,
    port: u16,
    /// The server certificate (DER) whose names are valid; `None`: loopback names only.
    certificate: Option<Arc<CertificateDer<'static>>>,
    /// More names, lowercase (`serve --http-host`, e.g. a reverse proxy's).
    extra: Arc<[String]>,
}

impl Authority {
    /// Plaintext on loopback: `localhost` and the loopback addresses, on `port`.
    pub fn loopback(port: u16) -> Self {
        Authority {
            scheme: "http",
            port,
            certificate: None,
            extra: Arc::from([]),
        }
    }

    /// TLS: the names (DNS and IP) the first certificate of `cert_pem` is valid for, on `port`.
    pub fn certificate(port: u16, cert_pem: &[u8]) -> Result<Self, listener::TlsSetupError> {
        let cert = CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .unwrap_or(Err(rustls::pki_types::pem::Error::NoItemsFound))
            .map_err(|source| listener::TlsSetupError::Pem {
                what: "certificate",
                source,
            })?;
        webpki::EndEntityCert::try_from(&cert).map_err(listener::TlsSetupError::Names)?;
        Ok(Authority {
            scheme: "https",
            port,
            certificate: Some(Arc::new(cert)),
            extra: Arc::from([]),
        })
    }

    /// Also answers to `names` (host names or addresses, without port).
    pub fn with_names(mut self, names: &[String]) -> Self {
        self.extra = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    /// Whether `authority` (`host[:port]`, as in `Host`) names this server.
    fn answers(&self, authority: &str) -> bool {
        let Ok(a) = authority.parse::<axum::http::uri::Authority>() else {
            return false;
        };
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if a.as_str().contains('@') || a.port_u16().unwrap_or(default_port) != self.port {
            return false;
        }
        let host = a.host().to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if self.extra.iter().any(|n| n == bare || *n == host) {
            return true;
        }
        match &self.certificate {
            None => {
                bare == "localhost"
                    || bare
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Some(cert) => {
                let Ok(name) = ServerName::try_from(bare) else {
                    return false;
                };
                webpki::EndEntityCert::try_from(cert.as_ref())
                    .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
            }
        }
    }

    /// Whether `origin` (`scheme://host[:port]`) is this server itself.
    fn same_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix(self.scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|authority| self.answers(authority))
    }

    /// `router` behind the Host and Origin checks (outermost, so no route, not even the
    /// fallback, answers a misdirected request).
    pub fn protect(self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self, check_authority))
    }
}

/// Refuses a request that names another server or comes from another site's page.
async fn check_authority(
    State(authority): State<Authority>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // HTTP/2 carries the name in :authority (the URI), HTTP/1.1 in Host.
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    if !host.is_some_and(|h| authority.answers(h)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this server does not answer to that Host",
        )
        .into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|o| authority.same_origin(o))
    {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-origin requests are refused")
            .into_response();
    }
    // A browser that sends no Origin on a state-changing request still says where it came
    // from here (Fetch Metadata); curl and scripts send neither.
    if !request.method().is_safe() {
        let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
        if site.is_some_and(|s| s != b"same-origin" && s != b"none") {
            return ApiError::new(StatusCode::FORBIDDEN, "cross-site requests are refused")
                .into_response();
        }
    }
    next.run(request).await
}

/// Runs a blocking store or applier call off the async threads.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Into::into)
}

async fn status(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let queries = api.queries.clone();
    let overview = blocking(move || queries.overview()).await?;
    Ok(Json(safetytwin_proto::json::status(
        &twin::overview_to_wire(overview),
    )))
}

async fn snapshots(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let applier = api.applier()?;
    let host = query.get("host").filter(|h| !h.is_empty()).cloned();
    let list = blocking(move || applier.snapshots(host.as_deref())).await?;
    Ok(Json(Value::Array(
        list.into_iter()
            .map(|s| safetytwin_proto::json::snapshot(&twin::snapshot_to_wire(s)))
            .collect(),
    )))
}

async fn revert(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let applier = api.applier()?;
    let record = blocking(move || applier.revert(None, &name)).await?;
    Ok(Json(safetytwin_proto::json::snapshot(
        &twin::snapshot_to_wire(record),
    )))
}

async fn state(
    State(api): State<Api>,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let at = match query.get("seq") {
        None => None,
        Some(s) => Some(At::Seq(s.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("seq {s:?} is not a number"),
            )
        })?)),
    };
    let queries = api.queries.clone();
    let h = host.clone();
    let (seq, model) = blocking(move || queries.state(&h, at)).await?;
    let mut m = safetytwin_proto::json::model(&model);
    m.insert("host".into(), host.into());
    m.insert("seq".into(), seq.into());
    Ok(Json(Value::Object(m)))
}

/// A query parameter that must be a number when present.
fn number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|s| {
            s.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{name} {s:?} is not a number"),
                )
            })
        })
        .transpose()
}

async fn hosts(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let queries = api.queries.clone();
    blocking(move || -> Result<_, ApiError> {
        let store = queries.store();
        let mut twins: HashMap<String, Value> = match queries.applier() {
            Some(a) => a
                .status()?
                .into_iter()
                .map(|t| (t.host.clone(), twin::twin_json(t)))
                .collect(),
            None => HashMap::new(),
        };
        let rows = store
            .hosts()?
            .into_iter()
            .map(|(host, last)| {
                let header = store.batch(&host, last)?.map(|b| b.header);
                let twin = twins.remove(&host);
                Ok(views::host_row(&host, last, header.as_ref(), twin))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Json(json!({
            "now_unix_ns": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            "twin_backend": queries.applier().is_some(),
            "hosts": rows,
        })))
    })
    .await
}

async fn timeline(
    State(api): State<Api>,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = number(&query, "limit")?
        .unwrap_or(views::TIMELINE_MAX as u64)
        .clamp(1, views::TIMELINE_MAX as u64);
    let (after, before) = (number(&query, "after")?, number(&query, "before")?);
    let queries = api.queries.clone();
    blocking(move || -> Result<_, ApiError> {
        let store = queries.store();
        let last = store.last_seq(&host)?;
        // `after`: the live poll, the next batches; else the newest before `before`.
        let (first, end) = match after {
            Some(a) => (a.saturating_add(1), last.min(a.saturating_add(limit))),
            None => {
                let end = before.map_or(last, |b| b.saturating_sub(1).min(last));
                (end.saturating_sub(limit - 1).max(1), end)
            }
        };
        let mut lines = Vec::new();
        for seq in first..=end {
            if let Some(b) = store.batch(&host, seq)? {
                lines.push(views::batch_line(&b));
            }
        }
        Ok(Json(
            json!({"host": host, "last_seq": last, "batches": lines}),
        ))
    })
    .await
}

async fn batch(
    State(api): State<Api>,
    Path((host, seq)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let queries = api.queries.clone();
    let b = blocking(move || queries.store().batch(&host, seq)).await?;
    let b = b.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no batch {seq}")))?;
    let mut m = safetytwin_proto::json::batch(&b);
    m.insert("line".into(), views::batch_line(&b));
    Ok(Json(Value::Object(m)))
}

async fn diff(
    State(api): State<Api>,
    Path(host): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (Some(from), Some(to)) = (number(&query, "from")?, number(&query, "to")?) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "from and to (seqs) are required",
        ));
    };
    let queries = api.queries.clone();
    blocking(move || -> Result<_, ApiError> {
        let store = queries.store();
        let last = store.last_seq(&host)?;
        if from > last || to > last {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{host} has no seq beyond {last}"),
            ));
        }
        let state = |seq| {
            if seq == 0 {
                Ok(safetytwin_model::HostModel::default())
            } else {
                store.state_at(&host, seq)
            }
        };
        let (before, after) = (state(from)?, state(to)?);
        let delta = before.diff(&after);
        let mut m = safetytwin_proto::json::delta(&delta);
        m.remove("activity");
        m.insert("host".into(), host.clone().into());
        m.insert("from".into(), from.into());
        m.insert("to".into(), to.into());
        m.insert("counts".into(), views::counts(&delta));
        m.insert("diffs".into(), views::file_diffs(&before, &after, &delta));
        Ok(Json(Value::Object(m)))
    })
    .await
}

async fn twin_view(
    State(api): State<Api>,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let applier = api.applier()?;
    blocking(move || -> Result<_, ApiError> {
        let status = applier.status_of(&host)?;
        let snapshots: Vec<Value> = applier
            .snapshots(Some(&host))?
            .into_iter()
            .map(|s| safetytwin_proto::json::snapshot(&twin::snapshot_to_wire(s)))
            .collect();
        Ok(Json(json!({
            "twin": twin::twin_json(status),
            "applies": views::applies(&applier.applies(&host)),
            "snapshots": snapshots,
        })))
    })
    .await
}

async fn resume(State(api): State<Api>, Path(host): Path<String>) -> Result<Json<Value>, ApiError> {
    let progress = twin::resume(api.applier()?, host).await?;
    Ok(Json(json!({"applied_seq": progress.applied_seq})))
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        api.metrics.render(),
    )
}

/// Serves `router` on the connections of `incoming` (`listener.rs`: capped, handshaken)
/// until `stop` changes or its sender drops; open requests then get [`DRAIN_TIMEOUT`] to
/// finish.
pub async fn serve<S>(
    mut incoming: Incoming<S>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = stop.changed() => break,
        };
        // Reap finished connections so the set does not grow with every request.
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(stream, router.clone(), limits, stop.clone()));
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("http: requests still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
}

/// Serves one connection (HTTP/1.1 or h2) until it closes, closing it gracefully on `stop`.
/// An HTTP/1 request's headers must arrive within the handshake timeout too, so a client that
/// sends a byte and stalls is closed like one that sends nothing.
async fn connection<S>(stream: S, router: Router, limits: Limits, mut stop: watch::Receiver<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.changed() => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("http: connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_loopback_answers_only_its_own_names_and_port() {
        let a = Authority::loopback(8080);
        for ok in [
            "localhost:8080",
            "LOCALHOST:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
        ] {
            assert!(a.answers(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost",
            "localhost:8081",
            "127.0.0.1.evil.example:8080",
            "localhost.:8080",
            "user@localhost:8080",
            "10.0.0.1:8080",
            "",
            "localhost:8080/x",
        ] {
            assert!(!a.answers(bad), "{bad}");
        }
        assert!(a.same_origin("http://localhost:8080"));
        for bad in [
            "https://localhost:8080",
            "http://evil.example:8080",
            "http://localhost:8081",
            "null",
            "http://localhost:8080@evil.example",
        ] {
            assert!(!a.same_origin(bad), "{bad}");
        }
        let extra = Authority::loopback(80).with_names(&["Proxy.Example".into()]);
        assert!(extra.answers("proxy.example") && extra.answers("proxy.example:80"));
        assert!(!extra.answers("proxy.example:8080"));
    }

    #[test]
    fn local_tls_answers_the_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::certs::generate(
            &dir.path().join("certs"),
            &["twin.example.org".into()],
            &["web-1".into()],
        )
        .unwrap();
        let a = Authority::certificate(8443, &std::fs::read(&files.server_cert).unwrap()).unwrap();
        for ok in [
            "localhost:8443",
            "127.0.0.1:8443",
            "[::1]:8443",
            "twin.example.org:8443",
        ] {
            assert!(a.answers(ok), "{ok}");
        }
        for bad in ["evil.example:8443", "10.0.0.1:8443", "twin.example.org:443"] {
            assert!(!a.answers(bad), "{bad}");
        }
        assert!(a.same_origin("https://twin.example.org:8443"));
        assert!(!a.same_origin("http://twin.example.org:8443"));
        assert!(Authority::certificate(1, b"not pem").is_err());
    }
}
