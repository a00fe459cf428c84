//! Answers drover gives itself instead of proxying: an edge limit, a refused request
//! head, a rate limit, a bulkhead, a tripped route's fallback, an error.
//!
//! They follow the rules a proxied answer follows: no body on HEAD, 1xx, 204 and 304
//! (RFC 9110 section 6.4.1; a body there would be read as the start of the next response
//! on a keep-alive connection), and `Connection: close` whenever the request stream can
//! no longer be trusted (an unread body, a malformed head, an error).

use bytes::Bytes;
use pingora_core::prelude::*;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// A response drover writes itself rather than proxying.
pub struct LocalResponse {
    /// Status and fields to send.
    pub header: ResponseHeader,
    /// The body; empty where a body is not allowed (see [`LocalResponse::body_allowed`]).
    pub body: Bytes,
    /// Close the client connection afterwards (the request body may be unread).
    pub close: bool,
}

impl LocalResponse {
    /// Whether an answer with `status` to a request (HEAD or not) may carry a body.
    pub fn body_allowed(head_request: bool, status: u16) -> bool {
        !head_request && status >= 200 && status != 204 && status != 304
    }

    /// The answer to a request that failed with `code` (see `Pipeline::failure_status`).
    /// A 503 that drover chose itself (`reject`) says why and when to come back. The
    /// connection is not reused after an error: the header says so, so clients do not
    /// send their next request on a socket about to close.
    pub fn failure(code: u16, reject: Option<&'static str>) -> Result<Self> {
        let retry_after = reject.is_some() && code == 503;
        let body: &'static [u8] = match reject {
            Some(why) if code == 503 => why.as_bytes(),
            _ => b"",
        };
        let mut header = ResponseHeader::build(code, Some(4))?;
        header.insert_header("Content-Length", body.len().to_string())?;
        header.insert_header("Cache-Control", "private, no-store")?;
        header.insert_header("Connection", "close")?;
        if retry_after {
            header.insert_header("Retry-After", "1")?;
        }
        Ok(LocalResponse {
            header,
            body: Bytes::from_static(body),
            close: true,
        })
    }

    /// Writes the answer through Pingora's session.
    pub async fn write_to(self, session: &mut Session) -> Result<()> {
        if self.close {
            session.set_keepalive(None);
        }
        let head_request = session.req_header().method == http::Method::HEAD;
        let body = Self::body_allowed(head_request, self.header.status.as_u16())
            .then_some(self.body)
            .filter(|b| !b.is_empty());
        session
            .write_response_header(Box::new(self.header), body.is_none())
            .await?;
        if let Some(b) = body {
            session.write_response_body(Some(b), true).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_body_on_head_1xx_204_304() {
        assert!(LocalResponse::body_allowed(false, 200));
        assert!(LocalResponse::body_allowed(false, 429));
        assert!(!LocalResponse::body_allowed(true, 429));
        for s in [100, 101, 204, 304] {
            assert!(!LocalResponse::body_allowed(false, s), "{s}");
        }
    }
}
