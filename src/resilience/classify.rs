//! What counts as a failure: the raw outcome of one upstream attempt, and the
//! configurable rule (`failure_on`) that turns it into success or failure for a breaker.
//!
//! The proxy reports *what happened* (`Outcome`); each breaker's policy decides whether
//! that is a failure, so a route can count 429s against its breaker while worker
//! breakers ignore them.

use pingora_core::{Error, ErrorSource, ErrorType};

/// The observable result of one attempt on an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status reached drover.
    Status(u16),
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    ConnectError,
    /// Connected, but a read or write timed out.
    Timeout,
    /// Connected, then the connection broke (reset, closed early, bad response).
    Reset,
}

impl Outcome {
    /// Classifies a Pingora error seen while talking to an upstream. `None` when the
    /// error is not the upstream's doing (the client went away, an internal error).
    pub fn from_error(e: &Error) -> Option<Outcome> {
        if e.esource() != &ErrorSource::Upstream {
            return None;
        }
        Some(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError => Outcome::ConnectError,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::Timeout,
            _ => Outcome::Reset,
        })
    }

    /// The outcome of a finished request as the logging hook sees it.
    pub fn of_request(e: Option<&Error>, status: u16) -> Option<Outcome> {
        match e {
            Some(e) => Outcome::from_error(e),
            None if status == 0 => None,
            None => Some(Outcome::Status(status)),
        }
    }

    /// Its kind as a label: `connect_error`, `timeout`, `reset`, or `status` for any
    /// status (the code is left out, keeping the label set small).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Status(_) => "status",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
        }
    }
}

/// Which outcomes are failures. Default: connect errors, timeouts, resets and 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classifier {
    /// `connect_error` listed: failed connects count as failures.
    pub connect_error: bool,
    /// `timeout` listed: read and write timeouts count as failures.
    pub timeout: bool,
    /// `reset` listed: connections broken after connecting count as failures.
    pub reset: bool,
    /// Bit per status 0..640: `statuses[s / 64] >> (s % 64) & 1`.
    statuses: [u64; 10],
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::parse(&DEFAULT_FAILURE_ON.map(String::from)).unwrap_or(Classifier::none())
    }
}

/// The shipped default of `failure_on`.
pub const DEFAULT_FAILURE_ON: [&str; 4] = ["connect_error", "timeout", "reset", "5xx"];

impl Classifier {
    /// Counts nothing as a failure (what an empty `failure_on` gives).
    pub fn none() -> Self {
        Classifier {
            connect_error: false,
            timeout: false,
            reset: false,
            statuses: [0; 10],
        }
    }

    /// Parses `failure_on` entries: `connect_error`, `timeout`, `reset`, a class `4xx` /
    /// `5xx`, or a status `429`. Returns the offending entry on error.
    pub fn parse(items: &[String]) -> Result<Classifier, UnknownFailureKind> {
        let mut c = Classifier::none();
        for item in items {
            match item.as_str() {
                "connect_error" => c.connect_error = true,
                "timeout" => c.timeout = true,
                "reset" => c.reset = true,
                s if s.len() == 3 && s.ends_with("xx") => match s.as_bytes()[0] {
                    d @ b'1'..=b'5' => {
                        let base = (d - b'0') as u16 * 100;
                        for code in base..base + 100 {
                            c.set(code);
                        }
                    }
                    _ => return Err(bad(item)),
                },
                s => match s.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => c.set(code),
                    _ => return Err(bad(item)),
                },
            }
        }
        Ok(c)
    }

    fn set(&mut self, code: u16) {
        self.statuses[code as usize / 64] |= 1 << (code % 64);
    }

    /// Whether `o` counts against a breaker under this rule; statuses not listed
    /// (and any above 639) are successes.
    pub fn is_failure(&self, o: Outcome) -> bool {
        match o {
            Outcome::Status(s) => {
                let s = s as usize;
                s < 640 && (self.statuses[s / 64] >> (s % 64)) & 1 == 1
            }
            Outcome::ConnectError => self.connect_error,
            Outcome::Timeout => self.timeout,
            Outcome::Reset => self.reset,
        }
    }
}

/// A `failure_on` entry drover does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a failure kind; accepted: connect_error, timeout, reset, 4xx, 5xx or a status 100-599")]
pub struct UnknownFailureKind(pub String);

fn bad(item: &str) -> UnknownFailureKind {
    UnknownFailureKind(item.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_counts_errors_and_5xx_only() {
        let c = Classifier::default();
        assert!(c.is_failure(Outcome::Status(500)));
        assert!(c.is_failure(Outcome::Status(503)));
        assert!(!c.is_failure(Outcome::Status(404)));
        assert!(!c.is_failure(Outcome::Status(200)));
        assert!(c.is_failure(Outcome::ConnectError));
        assert!(c.is_failure(Outcome::Timeout));
        assert!(c.is_failure(Outcome::Reset));
    }

    #[test]
    fn listed_statuses_and_kinds_only() {
        let c = Classifier::parse(&["429".into(), "timeout".into()]).unwrap();
        assert!(c.is_failure(Outcome::Status(429)));
        assert!(!c.is_failure(Outcome::Status(500)));
        assert!(!c.is_failure(Outcome::ConnectError));
        assert!(c.is_failure(Outcome::Timeout));
        assert!(!c.is_failure(Outcome::Status(9999)));
    }

    #[test]
    fn rejects_unknown_entries() {
        for bad in ["6xx", "x5x", "99", "600", "timeouts", ""] {
            let e = Classifier::parse(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("accepted"), "{e}");
        }
    }

    #[test]
    fn errors_map_to_outcomes() {
        let e = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(Outcome::from_error(&e), Some(Outcome::ConnectError));
        let e = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(Outcome::from_error(&e), Some(Outcome::Timeout));
        let e = Error::new(ErrorType::ConnectionClosed).into_up();
        assert_eq!(Outcome::from_error(&e), Some(Outcome::Reset));
        let e = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(Outcome::from_error(&e), None);
        assert_eq!(Outcome::of_request(None, 0), None);
        assert_eq!(Outcome::of_request(None, 502), Some(Outcome::Status(502)));
    }
}
