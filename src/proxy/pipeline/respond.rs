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
pub struct ResponseFieldNames {
    /// The session update field (`sessions.update_header`), when the request has a
    /// session.
    pub session_update: Option<http::HeaderName>,
}

/// What the pipeline needs from a worker's response head.
pub struct WorkerResponse {
    pub status: u16,
    /// The value of the session update field, if the worker sent one.
    pub session_update: Option<Vec<u8>>,
}

/// Fields the pipeline adds to the response.
#[derive(Debug, Default)]
pub struct ResponseAdditions {
    pub set_cookie: Option<String>,
}

impl Pipeline {
    pub fn response_field_names(&self, ex: &Exchange) -> ResponseFieldNames {
        let session_update = match (self.shared.sessions.get(), &ex.session) {
            (Some(svc), Some(s)) => Some(svc.update_header(s).clone()),
            _ => None,
        };
        ResponseFieldNames { session_update }
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
        let mut adds = ResponseAdditions::default();
        if let (Some(svc), Some(s)) = (self.shared.sessions.get(), ex.session.as_mut()) {
            adds.set_cookie = svc.take_set_cookie(s);
            svc.save_update(s, r.session_update).await;
        }
        adds
    }
}
