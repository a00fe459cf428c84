//! The data plane: one request pipeline, two HTTP/1 carriers.
//!
//! - `pipeline`: every step drover applies to a request (limits, field hygiene, rate
//!   limits, sessions, balancing, breakers, retries, metrics, access log), written once.
//! - `h1`: drover's own HTTP/1 engine. It reads and judges every HTTP/1 request head,
//!   serves the common request itself, and hands the rest to Pingora with exactly that
//!   request's bytes.
//! - `listen`: the listeners; drover's own accept loop for cleartext HTTP.
//! - `h2`: HTTP/2 to clients (Pingora serves its streams) and the HTTPS listeners' settings.
//! - `pingora_carrier`: Pingora's proxy driving the same pipeline through its hooks.
//! - `http`: the HTTP/1 message rules both carriers share (validation, framing,
//!   hop-by-hop fields, chunked bodies).
//! - `headers`, `forwarded`, `limits`: field helpers the pipeline uses.
//!
//! docs/ARCHITECTURE.md draws how a request flows through them.

pub mod forwarded;
pub mod h1;
pub mod h2;
pub mod limits;
pub mod listen;
pub mod pingora_carrier;
pub mod pipeline;

pub use pipeline::{LocalResponse, Pipeline};
