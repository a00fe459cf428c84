//! HTTP/2 to clients and the HTTPS listeners' settings.
//!
//! HTTP/2 streams are Pingora's: a connection that negotiated `h2` by ALPN, or that
//! starts with the HTTP/2 preface on the cleartext listener when `http2.cleartext` is on,
//! goes to Pingora's HTTP/2 server, and each stream is one request through
//! [`PingoraCarrier`](super::pingora_carrier::PingoraCarrier), the same pipeline as
//! HTTP/1. The limits below bound what one connection can make drover do.

use super::pingora_carrier::PingoraCarrier;
use crate::config::Http2Config;
use crate::state::Shared;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::ALPN;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

/// Sets Pingora's HTTP/2 server options from `http2:`. These are read once at start
/// (a reload that changes them says so).
///
/// - `max_concurrent_streams`, `max_header_list_size`: SETTINGS advertised to the client
///   and enforced by the h2 codec (a larger header list resets the stream).
/// - `max_pending_resets`: streams the client may reset before drover has finished
///   accepting them (h2's rapid-reset guard, CVE-2023-44487): more and the connection
///   is closed with GOAWAY `ENHANCE_YOUR_CALM`.
/// - `idle_timeout`: a connection with no open stream for this long is closed.
pub fn configure(proxy: &mut HttpProxy<PingoraCarrier>, cfg: &Http2Config) {
    let mut opts = pingora_core::protocols::http::v2::server::default_h2_options();
    opts.max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(cfg.max_header_list_size)
        .max_pending_accept_reset_streams(cfg.max_pending_resets)
        // Streams drover itself resets for protocol errors count too (h2's default).
        .max_local_error_reset_streams(Some(1024));
    proxy.h2_options = Some(opts);
    let mut server = HttpServerOptions::default();
    server.h2c = cfg.cleartext;
    server.h2_idle_timeout = Some(cfg.idle_timeout);
    proxy.server_options = Some(server);
}

/// The settings of one HTTPS listener: TLS 1.2 and 1.3, certificates chosen by SNI from
/// the shared resolver (swapped by reload), ALPN `h2` then `http/1.1` (or `http/1.1`
/// only with `tls.http2: false`).
pub fn tls_settings(shared: &Arc<Shared>) -> pingora_core::Result<TlsSettings> {
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(shared.tls.clone());
    if shared.config().tls.http2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(ALPN::H1);
    }
    Ok(settings)
}
