//! One client connection: PROXY header, TLS handshake, HTTP serving, revocation.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::revocation::{self, Credential};
use super::{Shared, contains, proxy_protocol, reason};
use crate::snapshot::{Fingerprint, fingerprint};

/// Facts about a connection that admission and forwarding need.
#[derive(Debug)]
pub struct ConnInfo {
    /// The real client: the PROXY header's source when a trusted proxy sent one.
    pub client: SocketAddr,
    /// The TCP peer (the trusted proxy itself when there is one).
    pub peer: SocketAddr,
    pub client_cert: Option<Fingerprint>,
    /// Lowercase SNI.
    pub sni: Option<String>,
}

/// Keeps the open-connections gauge honest however the task ends.
struct Open<'a>(&'a prometheus_client::metrics::gauge::Gauge);
impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn handle(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
) {
    let metrics = &shared.metrics;
    metrics.open_connections.inc();
    let _open = Open(&metrics.open_connections);
    let limits = &shared.settings.limits;

    let mut client = peer;
    if contains(&shared.settings.proxy_protocol_from, peer.ip()) {
        match timeout(
            limits.handshake_timeout,
            proxy_protocol::read_header(&mut tcp),
        )
        .await
        {
            Ok(Ok(Some(addr))) => client = addr,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY header");
                metrics
                    .handshake_failures
                    .get_or_create(&reason("proxy_protocol"))
                    .inc();
                return;
            }
            Err(_) => {
                metrics
                    .handshake_failures
                    .get_or_create(&reason("timeout"))
                    .inc();
                return;
            }
        }
    }

    // Mark the current snapshot seen, so any later one wakes the revocation watch.
    let mut snapshots = shared.snapshots.clone();
    let Some(snapshot) = snapshots.borrow_and_update().clone() else {
        return; // No configuration yet: fail closed.
    };
    let acceptor = TlsAcceptor::from(snapshot.tls().clone());
    let tls = match timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let why = classify(&e);
            tracing::debug!(%client, error = %e, reason = why, "TLS handshake failed");
            metrics.handshake_failures.get_or_create(&reason(why)).inc();
            return;
        }
        Err(_) => {
            metrics
                .handshake_failures
                .get_or_create(&reason("timeout"))
                .inc();
            return;
        }
    };
    drop(snapshot);

    let (_, session) = tls.get_ref();
    let client_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c));
    let info = Arc::new(ConnInfo {
        client,
        peer,
        client_cert,
        sni: session.server_name().map(str::to_ascii_lowercase),
    });

    let service = {
        let (shared, info) = (shared.clone(), info.clone());
        service_fn(move |req| super::forward::handle(req, shared.clone(), info.clone()))
    };
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    let serving = http.serve_connection_with_upgrades(TokioIo::new(tls), service);

    let revoked = revocation::gone(snapshots, client_cert.map(Credential::Certificate));
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                tracing::debug!(%client, error = %e, "connection ended with an error");
            }
        }
        () = revoked => {
            tracing::info!(%client, "closing connection: its client certificate is no longer live");
        }
        () = shared.shutdown.cancelled() => {}
    }
}

/// A low-cardinality label for a failed handshake.
fn classify(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(C::Revoked)) => "certificate_not_live",
        Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "certificate_expired",
        Some(E::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => "unknown_ca",
        Some(E::InvalidCertificate(_)) => "certificate_invalid",
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::PeerIncompatible(_)) | Some(E::NoApplicationProtocol) => "incompatible",
        Some(_) => "tls_error",
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => "client_closed",
        None => "io_error",
    }
}
