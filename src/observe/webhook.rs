//! Alert notifications to an Alertmanager-compatible webhook (its `version: "4"` JSON),
//! with retries.
//!
//! A plain HTTP/1.1 POST on a tokio TcpStream: one request per connection, a 2xx answer
//! is delivery. Failed attempts are retried `retries` times with a backoff of 500 ms
//! doubling. At most [`MAX_IN_FLIGHT`] deliveries run at once; more are dropped and
//! counted, so a dead receiver cannot pile up tasks.

use crate::config::observability::{AlertRule, WebhookTarget};
use prometheus::IntCounterVec;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deliveries (with their retries) pending at once; a notification beyond this is dropped
/// and counted as `dropped`.
pub const MAX_IN_FLIGHT: usize = 64;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// One alert state change to deliver, built by the alert evaluator.
pub struct Notification {
    /// The rule that fired or resolved (name, severity, summary, expression).
    pub rule: AlertRule,
    /// True for a firing alert, false for a resolved one.
    pub firing: bool,
    /// The rule's metric value at the change; NaN if the metric had no value.
    pub value: f64,
    /// Unix seconds.
    pub starts_at: f64,
    /// Unix seconds the alert resolved; `None` while firing (sent as Alertmanager's
    /// zero time).
    pub ends_at: Option<f64>,
    /// drover's data-plane address, the `instance` label.
    pub instance: String,
    /// Admin address, for links back.
    pub admin: String,
}

/// RFC 3339 UTC time from unix seconds (civil-from-days; no date crate needed).
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let millis = ((unix.max(0.0) - secs as f64) * 1000.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The Alertmanager webhook body for one alert.
pub fn payload(n: &Notification) -> serde_json::Value {
    let status = if n.firing { "firing" } else { "resolved" };
    let labels = json!({
        "alertname": n.rule.name,
        "severity": n.rule.severity,
        "instance": n.instance,
        "job": "drover",
    });
    let annotations = json!({
        "summary": n.rule.summary,
        "description": format!("{} {} {} (value {})", n.rule.expr, n.rule.op.as_str(), n.rule.threshold, n.value),
        "value": format!("{}", n.value),
    });
    let fingerprint = format!(
        "{:016x}",
        crate::stable_hash::fnv1a(format!("{}{}", n.rule.name, n.instance).as_bytes())
    );
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", n.rule.name),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "drover",
        "groupLabels": { "alertname": n.rule.name },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": format!("http://{}/dashboard", n.admin),
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(n.starts_at),
            "endsAt": n.ends_at.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "generatorURL": format!("http://{}/api/alerts", n.admin),
            "fingerprint": fingerprint,
        }],
    })
}

/// Delivers notifications in background tasks, capped at [`MAX_IN_FLIGHT`]; owned by
/// `Alerts`.
pub struct Sender {
    in_flight: Arc<AtomicUsize>,
    results: IntCounterVec,
}

impl Sender {
    /// A sender that counts each delivery in `results` by label `delivered`, `failed`
    /// (all retries spent) or `dropped` (over the cap).
    pub fn new(results: IntCounterVec) -> Self {
        Sender {
            in_flight: Arc::new(AtomicUsize::new(0)),
            results,
        }
    }

    /// Delivers in the background (on the calling tokio runtime: the control thread).
    pub fn send(&self, target: WebhookTarget, n: Notification, retries: u32, timeout: Duration) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.results.with_label_values(&["dropped"]).inc();
            log::warn!(
                "alert webhook: {MAX_IN_FLIGHT} deliveries pending; dropping one for {}",
                n.rule.name
            );
            return;
        }
        let body = payload(&n).to_string();
        let in_flight = self.in_flight.clone();
        let results = self.results.clone();
        let name = n.rule.name.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        rt.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            let mut last_err = String::new();
            let mut delivered = false;
            for attempt in 0..=retries {
                if attempt > 0 {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                match tokio::time::timeout(timeout, post(&target, &body)).await {
                    Ok(Ok(())) => {
                        delivered = true;
                        break;
                    }
                    Ok(Err(e)) => last_err = e.to_string(),
                    Err(_) => last_err = format!("timed out after {timeout:?}"),
                }
                log::warn!(
                    "alert webhook {}: attempt {} for {name} failed: {last_err}",
                    crate::redact::url_path(&target.url),
                    attempt + 1
                );
            }
            if delivered {
                results.with_label_values(&["delivered"]).inc();
            } else {
                results.with_label_values(&["failed"]).inc();
                log::error!(
                    "alert webhook {}: giving up on {name} after {} attempts: {last_err}",
                    crate::redact::url_path(&target.url),
                    retries + 1
                );
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Why one delivery failed (logged with each attempt).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The TCP connection to the receiver failed (refused, unreachable, DNS).
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// Sending the request head or body failed.
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    /// Reading the answer failed.
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    /// The answer did not parse as an HTTP/1 status line.
    #[error("not an HTTP response: {0}")]
    NotHttp(#[source] httparse::Error),
    /// 16 KiB read without a complete status line.
    #[error("response head too large")]
    HeadTooLarge,
    /// The receiver closed the connection before sending a status line.
    #[error("connection closed before a status line")]
    Closed,
    /// The receiver answered with this non-2xx status.
    #[error("status {0}")]
    Status(u16),
}

/// One POST; Ok on a 2xx status.
async fn post(t: &WebhookTarget, body: &str) -> Result<(), DeliveryError> {
    post_bytes(t, "application/json", body.as_bytes()).await
}

/// One POST of `body` as `content_type` (one connection, `Connection: close`); Ok on a
/// 2xx status. Shared with the OTLP exporter.
pub async fn post_bytes(
    t: &WebhookTarget,
    content_type: &str,
    body: &[u8],
) -> Result<(), DeliveryError> {
    let mut s = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(DeliveryError::Connect)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: drover\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.path,
        t.host,
        t.port,
        content_type,
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(DeliveryError::Write)?;
    s.write_all(body).await.map_err(DeliveryError::Write)?;
    let code = read_status(&mut s).await?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(DeliveryError::Status(code))
    }
}

/// The status code of the answer, parsed by httparse as soon as the status line is in
/// (the rest of the head and the body are not needed).
async fn read_status(s: &mut tokio::net::TcpStream) -> Result<u16, DeliveryError> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp.parse(&buf);
        if let Some(code) = resp.code {
            return Ok(code);
        }
        if let Err(e) = parsed {
            return Err(DeliveryError::NotHttp(e));
        }
        if buf.len() >= MAX_HEAD {
            return Err(DeliveryError::HeadTooLarge);
        }
        let n = s.read_buf(&mut buf).await.map_err(DeliveryError::Read)?;
        if n == 0 {
            return Err(DeliveryError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_700_000_000.0), "2023-11-14T22:13:20.000Z");
    }
}
