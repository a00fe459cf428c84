//! Pingora's proxy as a carrier of the pipeline: each `ProxyHttp` hook calls one
//! pipeline step in a few lines. Pingora serves what drover's engine hands it (request
//! bodies, upgrades, HTTP/1.0, other target forms) and every request when
//! `proxy.fast_path` is off, and HTTP/2 when that is enabled.

use crate::proxy::pipeline::{Exchange, LocalResponse, Pipeline, WorkerResponse};
use crate::wire::headers;
use crate::wire::response as response_rules;
use async_trait::async_trait;
use pingora_core::modules::http::HttpModules;
use pingora_core::prelude::*;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

const GRPC_STATUS: &str = "grpc-status";

/// The [`Pipeline`] behind Pingora's `ProxyHttp` hooks; cheap to clone.
#[derive(Clone)]
pub struct PingoraCarrier {
    pipeline: Pipeline,
}

impl PingoraCarrier {
    /// Wraps a pipeline; Pingora calls the hooks, each a step of it.
    pub fn new(pipeline: Pipeline) -> Self {
        PingoraCarrier { pipeline }
    }
}

fn bad_gateway(why: &'static str) -> Box<Error> {
    let mut e = Error::explain(ErrorType::HTTPStatus(502), why);
    e.esource = ErrorSource::Upstream;
    e
}

/// Bytes of a response head as the worker sent it (status line and fields).
fn head_bytes(resp: &ResponseHeader) -> usize {
    16 + resp
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

#[async_trait]
impl ProxyHttp for PingoraCarrier {
    type CTX = Exchange;

    /// No downstream modules: Pingora's default adds a disabled compression module whose
    /// per-request context and filter calls drover never uses (measured in PERFORMANCE.md).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    async fn request_filter(&self, session: &mut Session, ex: &mut Exchange) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let body_timeout = self
            .pipeline
            .shared()
            .config
            .load()
            .limits
            .client_body_timeout;
        session.as_mut().set_read_timeout(Some(body_timeout));
        ex.set_https(session.digest().is_some_and(|d| d.ssl_digest.is_some()));
        match self
            .pipeline
            .admit(session.req_header_mut(), peer, ex)
            .await?
        {
            Some(answer) => {
                answer.write_to(session).await?;
                Ok(true)
            }
            None => {
                if self.pipeline.session_lock_pending(ex) {
                    // Read the body first so a slow client never holds the session's
                    // lock (docs/SESSIONS.md); Pingora replays it from its buffer.
                    let first = self.pipeline.session_body_first(session.req_header());
                    if first {
                        let downstream = session.as_mut();
                        downstream.enable_retry_buffering();
                        while downstream.read_request_body().await?.is_some() {}
                    }
                    let buffered = first && !session.as_ref().retry_buffer_truncated();
                    self.pipeline.acquire_session(ex, buffered).await;
                }
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ex: &mut Exchange,
    ) -> Result<()> {
        if let Some(b) = body {
            if self.pipeline.body_chunk(ex, b.len()).is_err() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than limits.max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ex: &mut Exchange,
    ) -> Result<Box<HttpPeer>> {
        let target = self.pipeline.choose(session.req_header(), ex).await?;
        Ok(target.to_peer())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        self.pipeline.upstream_request(upstream_request, ex);
        // A worker that writes a body after its answer to HEAD (late) would have it read
        // as the response to the next request on the connection. Pingora reuses the
        // connection whatever the answer declared, so a HEAD's is not reused at all
        // (drover's engine decides per response: `proxy::http::response`).
        if upstream_request.method == http::Method::HEAD {
            upstream_request.insert_header(http::header::CONNECTION, "close")?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ex: &mut Exchange,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.pipeline.connect_failed(ex, &e);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ex: &mut Exchange,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if e.esource() == &ErrorSource::Downstream {
            // The client went away (or sent garbage): nothing to blame the backend for,
            // and nobody to retry for.
            ex.client_gone();
            e.set_retry(false);
            return e;
        }
        let replayable = !session.as_ref().retry_buffer_truncated();
        // Pingora marks errors that mean "a pooled connection the worker had closed while
        // idle" as retryable only on a reused connection: the request never got there,
        // so it goes again without blaming the worker.
        let stale = client_reused && matches!(e.retry, pingora_core::RetryType::ReusedOnly);
        if stale && replayable && session.req_header().method.is_idempotent() {
            e.set_retry(true);
            return e;
        }
        let retry = self
            .pipeline
            .proxy_failed(ex, &e, session.req_header(), replayable);
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ex: &mut Exchange,
    ) -> Result<()> {
        let cfg = self.pipeline.shared().config.load();
        if head_bytes(resp) > cfg.proxy.max_response_header_bytes {
            return Err(bad_gateway(
                "the worker's response head is over proxy.max_response_header_bytes",
            ));
        }
        drop(cfg);
        let head_request = session.req_header().method == http::Method::HEAD;
        // A switch of protocols nobody asked for (RFC 9110 section 15.2.2).
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE)
        {
            return Err(bad_gateway("the worker switched protocols unasked"));
        }
        let version = if resp.version == http::Version::HTTP_10 {
            0
        } else {
            1
        };
        let check = response_rules::check(
            resp.status.as_u16(),
            version,
            resp.headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            head_request,
        );
        let facts = match check {
            Ok(f) => f,
            Err(why) => {
                log::warn!("invalid response from the worker: {}", why.0);
                return Err(bad_gateway("invalid response from the worker"));
            }
        };
        let names = self.pipeline.response_field_names(ex);
        let mut take = |name: Option<http::HeaderName>| {
            name.and_then(|n| {
                let v = resp.headers.get(&n).map(|v| v.as_bytes().to_vec());
                resp.remove_header(&n);
                v
            })
        };
        let session_update = take(names.session_update);
        let session_control = take(names.session_control);
        for v in resp.headers.get_all(crate::observe::custom::HEADER) {
            self.pipeline.worker_metrics(ex, v.as_bytes());
        }
        headers::sanitize_response(resp, &facts);
        let grpc = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            self.pipeline.grpc_response(ex);
            // A trailers-only answer carries its status in the head.
            if let Some(v) = resp.headers.get(GRPC_STATUS) {
                self.pipeline.grpc_status(ex, v.as_bytes());
            }
        }
        let status = resp.status.as_u16();
        let adds = self
            .pipeline
            .on_response(
                ex,
                WorkerResponse {
                    status,
                    session_update,
                    session_control,
                },
            )
            .await;
        if let Some(c) = adds.set_cookie {
            resp.append_header(http::header::SET_COOKIE, c)?;
        }
        if let Some(v) = adds.hsts {
            resp.append_header(http::header::STRICT_TRANSPORT_SECURITY, v)?;
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ex: &mut Exchange,
    ) -> Result<()> {
        if let Some(v) = trailers.get(GRPC_STATUS) {
            self.pipeline.grpc_status(ex, v.as_bytes());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ex: &mut Exchange,
    ) -> Result<()> {
        // An HTTP/1.0 client cannot read chunked framing: a body of unknown length
        // reaches it delimited by the end of the connection (as nginx does), with the
        // same bytes drover's engine sends.
        if session.req_header().version == http::Version::HTTP_10
            && !resp.headers.contains_key(http::header::CONTENT_LENGTH)
            && resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ex: &mut Exchange,
    ) -> FailToProxy {
        let code = self.pipeline.failure_status(e);
        if code > 0 && session.response_written().is_none() {
            if let Ok(answer) = LocalResponse::failure(code, ex.rejection()) {
                let _ = answer.write_to(session).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Exchange, error: &Error) -> bool {
        // A client hanging up is routine at the edge, not an ERROR.
        let client_gone = error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::ConnectionClosed
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
            );
        let no_backend = matches!(error.etype(), ErrorType::HTTPStatus(503));
        client_gone || no_backend
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ex: &mut Exchange) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let sent = session.body_bytes_sent();
        let client = session.client_addr().cloned();
        self.pipeline
            .finish(session.req_header(), client.as_ref(), status, sent, e, ex)
            .await;
    }
}
