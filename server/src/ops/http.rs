//! The HTTP endpoint on `[metrics] listen`: `/metrics`, `/healthz`,
//! `/readyz` and `/clients` (hyper, HTTP/1.1), on the background runtime,
//! never on an NTP worker. Anything else is 404. `/clients` lists client
//! addresses, which are personal data: it is a path of its own, never part
//! of a scrape.
//!
//! A scraper cannot pile connections up: at most [`MAX_CONNECTIONS`] are
//! served at once (more are closed at once), a request's headers must
//! arrive within [`HEADER_TIMEOUT`], and a connection lives at most
//! [`CONNECTION_TIMEOUT`]. An `accept` that fails (descriptors exhausted)
//! pauses the loop instead of spinning, and is logged once per pause.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::ops::health::Health;

pub(crate) const MAX_CONNECTIONS: usize = 16;
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the accept loop pauses after an error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(500);

/// What the endpoint serves.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) registry: prometheus::Registry,
    pub(crate) health: Arc<Health>,
    /// The NTP workers' client logs.
    pub(crate) clients: Vec<Arc<crate::ops::clients::ClientLog>>,
}

/// Serves `listener` until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failing = false;
                stream
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed; pausing");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(respond(&endpoint, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}

fn respond(endpoint: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/metrics" | "/healthz" | "/readyz" | "/readyz/nts-ke" | "/clients"
    ) {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /readyz/nts-ke or /clients\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = text(
                StatusCode::OK,
                crate::ops::metrics::render(&endpoint.registry),
            );
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            r
        }
        "/clients" => match top(req.uri().query()) {
            Ok(top) => {
                let now = crate::time::clock::now_ntp().0;
                text(
                    StatusCode::OK,
                    crate::ops::clients::report(&endpoint.clients, now, top),
                )
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        "/healthz" => probe(endpoint.health.liveness(), "ok", &endpoint.health),
        "/readyz" => probe(endpoint.health.readiness(), "ready", &endpoint.health),
        _ => probe(endpoint.health.ke_readiness(), "ready", &endpoint.health),
    }
}

/// The `top=N` of a `/clients` query (every client without it).
fn top(query: Option<&str>) -> Result<usize, String> {
    let mut top = usize::MAX;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("top", n)) => {
                top = n
                    .parse()
                    .map_err(|_| format!("top={n}: not a number of clients\n"))?;
            }
            _ => return Err(format!("{pair}: unknown parameter; /clients takes top=N\n")),
        }
    }
    Ok(top)
}

/// 200 with `ok` when nothing is wrong (and a `degraded:` line for each
/// part that is down while the rest serves), else 503 with one reason a
/// line.
fn probe(reasons: Vec<String>, ok: &str, health: &Health) -> Response<Full<Bytes>> {
    if reasons.is_empty() {
        let mut body = format!("{ok}\n");
        for d in health.degraded() {
            body.push_str(&format!("degraded: {d}\n"));
        }
        return text(StatusCode::OK, body);
    }
    let mut body = reasons.join("\n");
    body.push('\n');
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
