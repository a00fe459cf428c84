//! Request bodies in drover's engine.
//!
//! A body of at most [`BUFFER_CAP`] bytes is read whole before a backend is chosen: it
//! leaves in the same write as the request head, a retry can send it again, and a
//! session writer takes its session's lock only once the body is here (a slow client
//! never holds it). A larger body is streamed from the client to the worker during the
//! one attempt it gets (it cannot be replayed). Either way its framing is the client's,
//! checked by `proxy::http`: exactly `Content-Length` bytes, or chunks up to the last
//! chunk with trailer fields dropped (Pingora's carrier drops them too), so nothing of a
//! pipelined next request reaches the worker, and nothing after the body is read from
//! the client before the response.

use super::client::ClientStream;
use crate::wire::chunked::ChunkedScanner;
use crate::wire::request::BodyFraming;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest body read whole before the first attempt (and kept for a retry); as
/// Pingora's retry buffer and the session lock's body buffer.
pub const BUFFER_CAP: usize = 64 * 1024;

/// How the body travels to the worker.
pub enum RequestBody {
    None,
    /// Read whole: sent with the head, and again on a retry.
    Buffered(Bytes),
    /// Streamed during the single attempt.
    Streamed(BodyFraming),
}

impl RequestBody {
    /// A retry may send the request again.
    pub fn replayable(&self) -> bool {
        !matches!(self, RequestBody::Streamed(_))
    }
}

/// Why a body could not be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// No byte within `limits.client_body_timeout` (408).
    Timeout,
    /// More than `limits.max_body_bytes` (413).
    TooLarge,
    /// Malformed chunked framing (400).
    Malformed,
    /// The client closed before the end of the body.
    ClientGone,
    /// Writing to the worker failed.
    Upstream,
}

impl BodyError {
    /// The status drover answers with (0: nobody to answer).
    pub fn status(self) -> u16 {
        match self {
            BodyError::Timeout => 408,
            BodyError::TooLarge => 413,
            BodyError::Malformed => 400,
            BodyError::ClientGone => 0,
            BodyError::Upstream => 502,
        }
    }
}

async fn fill(io: &mut ClientStream, timeout: Duration) -> Result<(), BodyError> {
    match io.fill_by(std::time::Instant::now() + timeout).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(BodyError::ClientGone),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// Reads the body whole when it is at most [`BUFFER_CAP`] bytes, else leaves it to be
/// streamed. `max_body`: `limits.max_body_bytes` (a declared length was checked against
/// it before).
pub async fn read_small(
    io: &mut ClientStream,
    framing: BodyFraming,
    timeout: Duration,
    max_body: u64,
) -> Result<RequestBody, BodyError> {
    match framing {
        BodyFraming::None => Ok(RequestBody::None),
        BodyFraming::Length(n) if n as usize > BUFFER_CAP => Ok(RequestBody::Streamed(framing)),
        BodyFraming::Length(n) => {
            let n = n as usize;
            while io.buf.len() < n {
                fill(io, timeout).await?;
            }
            Ok(RequestBody::Buffered(io.buf.split_to(n).freeze()))
        }
        BodyFraming::Chunked => loop {
            // Look without consuming: if the body turns out too large to hold it is
            // streamed from the start of the buffer.
            let mut scanner = ChunkedScanner::default();
            let mut data = 0u64;
            let scan = scanner
                .scan_data(&io.buf, |r| data += r.len() as u64)
                .map_err(|_| BodyError::Malformed)?;
            if data > max_body {
                return Err(BodyError::TooLarge);
            }
            if scan.done {
                let mut body = BytesMut::with_capacity(scan.body + 2);
                body.put_slice(&io.buf[..scan.body]);
                body.put_slice(b"\r\n");
                io.buf.advance(scan.consumed);
                return Ok(RequestBody::Buffered(body.freeze()));
            }
            if io.buf.len() > BUFFER_CAP {
                return Ok(RequestBody::Streamed(framing));
            }
            fill(io, timeout).await?;
        },
    }
}

/// Streams a body from the client to the worker, as its framing says.
pub async fn stream(
    io: &mut ClientStream,
    up: &mut TcpStream,
    framing: BodyFraming,
    timeout: Duration,
    max_body: u64,
) -> Result<(), BodyError> {
    match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(mut left) => {
            while left > 0 {
                if io.buf.is_empty() {
                    fill(io, timeout).await?;
                }
                let take = (io.buf.len() as u64).min(left) as usize;
                up.write_all(&io.buf[..take])
                    .await
                    .map_err(|_| BodyError::Upstream)?;
                io.buf.advance(take);
                left -= take as u64;
            }
            Ok(())
        }
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut data = 0u64;
            loop {
                if io.buf.is_empty() {
                    fill(io, timeout).await?;
                }
                let scan = scanner
                    .scan_data(&io.buf, |r| data += r.len() as u64)
                    .map_err(|_| BodyError::Malformed)?;
                if data > max_body {
                    return Err(BodyError::TooLarge);
                }
                up.write_all(&io.buf[..scan.body])
                    .await
                    .map_err(|_| BodyError::Upstream)?;
                io.buf.advance(scan.consumed);
                if scan.done {
                    // The trailer section was dropped: end the body with its empty line.
                    return up.write_all(b"\r\n").await.map_err(|_| BodyError::Upstream);
                }
            }
        }
    }
}
