//! Step 5: the worker's response head.
//!
//! Carriers differ in how they hold a response head (Pingora's `ResponseHeader`, or the
//! worker's bytes that drover's engine copies through), so each collects the few fields
//! the pipeline acts on into a [`WorkerResponse`], drops the fields that stop at drover
//! (`proxy::http::response::forwarded`), and adds what [`Pipeline::on_response`] returns.
//! The decisions are made here, once.

use super::{Exchange, Pipeline};

/// Fields of a worker's response that a carrier must hand to the pipeline instead of the
/// client.
#[derive(Default)]
pub struct ResponseFieldNames {
    /// The session update field (`sessions.update_header`), when the request has a
    /// session.
    pub session_update: Option<http::HeaderName>,
    /// The session control field (`sessions.control_header`: regenerate, destroy).
    pub session_control: Option<http::HeaderName>,
}

impl ResponseFieldNames {
    /// Both names, for carriers that pick fields by a list.
    pub fn all(&self) -> [Option<&http::HeaderName>; 2] {
        [self.session_update.as_ref(), self.session_control.as_ref()]
    }
}

/// What the pipeline needs from a worker's response head.
#[derive(Default)]
pub struct WorkerResponse {
    /// The worker's status code.
    pub status: u16,
    /// The value of the session update field, if the worker sent one.
    pub session_update: Option<Vec<u8>>,
    /// The value of the session control field, if the worker sent one.
    pub session_control: Option<Vec<u8>>,
}

/// Fields the pipeline adds to the response.
#[derive(Debug, Default)]
pub struct ResponseAdditions {
    pub set_cookie: Option<String>,
    /// `Strict-Transport-Security` (HTTPS requests, `tls.hsts_max_age` set).
    pub hsts: Option<http::HeaderValue>,
}

impl ResponseAdditions {
    /// The fields to add, as name and value bytes (for carriers that write heads).
    pub fn fields(&self) -> impl Iterator<Item = (&'static [u8], &[u8])> {
        let cookie = self
            .set_cookie
            .as_deref()
            .map(|c| (http::header::SET_COOKIE.as_str().as_bytes(), c.as_bytes()));
        let hsts = self.hsts.as_ref().map(|v| {
            (
                http::header::STRICT_TRANSPORT_SECURITY.as_str().as_bytes(),
                v.as_bytes(),
            )
        });
        cookie.into_iter().chain(hsts)
    }
}

impl Pipeline {
    /// The response fields this request's session listens to, so the carrier hands them to the
    /// pipeline instead of the client; both `None` without sessions or a session.
    pub fn response_field_names(&self, ex: &Exchange) -> ResponseFieldNames {
        match (self.shared.sessions.get(), &ex.session) {
            (Some(svc), Some(s)) => {
                let (update, control) = svc.response_fields(s);
                ResponseFieldNames {
                    session_update: Some(update.clone()),
                    session_control: Some(control.clone()),
                }
            }
            _ => ResponseFieldNames::default(),
        }
    }

    /// A worker reported custom metrics (`X-Drover-Metric`) on its response.
    pub fn worker_metrics(&self, ex: &Exchange, value: &[u8]) {
        if let Some(g) = &ex.guard {
            self.shared.observe.custom.ingest(&g.backend().name, value);
        }
    }

    /// The worker's response head arrived. An interim (1xx) head changes nothing: the
    /// session step waits for the final head, which carries the worker's update. A final
    /// (or `101 Switching Protocols`) head saves the session update and says which
    /// cookie to set; no retry happens after it.
    pub async fn on_response(&self, ex: &mut Exchange, r: WorkerResponse) -> ResponseAdditions {
        if (100..200).contains(&r.status) && r.status != 101 {
            return ResponseAdditions::default();
        }
        ex.response_started = true;
        if r.status == 101 {
            self.on_upgraded(ex);
        }
        let mut adds = ResponseAdditions {
            hsts: self.hsts(ex),
            ..Default::default()
        };
        if let (Some(svc), Some(s)) = (self.shared.sessions.get(), ex.session.as_mut()) {
            adds.set_cookie = svc
                .respond(s, r.session_update, r.session_control.as_deref())
                .await;
        }
        adds
    }

    /// A request that may write its session and has a body waits for the session's
    /// lock until its body has been read (the carrier reads it first when
    /// [`Pipeline::session_body_first`] says so), so a slow client never holds it.
    pub fn session_lock_pending(&self, ex: &Exchange) -> bool {
        ex.session.as_ref().is_some_and(|s| s.lock_pending())
    }

    /// Whether the carrier should read the whole body before the session's lock is
    /// taken (a declared body small enough to buffer, no `Expect`).
    pub fn session_body_first(&self, req: &pingora_http::RequestHeader) -> bool {
        crate::sessions::buffer_body_before_lock(req)
    }

    /// The body of a [`Pipeline::session_lock_pending`] request has been read
    /// (`buffered`: all of it is held for the worker): take the lock and read the record.
    pub async fn acquire_session(&self, ex: &mut Exchange, buffered: bool) {
        let client = super::ip_hash(ex.client_ip);
        if let (Some(svc), Some(s)) = (self.shared.sessions.get(), ex.session.as_mut()) {
            svc.acquire(s, buffered, client).await;
        }
    }
}
