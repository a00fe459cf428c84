//! HTTP/1 message rules that both carriers share (a leaf: it imports nothing else of
//! drover, so proxy, sessions and observe can all use it without a cycle): what a valid request head is and how
//! its body is framed, which fields describe one hop and never cross drover, how a
//! worker's response head is judged and framed, and a strict chunked-body scanner.
//!
//! Why one module: drover has two HTTP/1 carriers (its own engine in `proxy::h1` and
//! Pingora's proxy). Wherever the two judged a message differently, a crafted request
//! could mean one thing to one of them and another thing to the other (request
//! smuggling, response-queue poisoning). Everything here is a pure function over bytes
//! or `http` types, with no I/O and no drover state, so both carriers and the tests call
//! the same code.

pub mod chunked;
pub mod fields;
pub mod headers;
pub mod request;
pub mod response;
