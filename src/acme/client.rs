//! The HTTPS client that talks to an ACME directory: the web's public roots built in (the
//! static image has no system trust store) plus a private CA's `caFile`, and a note of the
//! last `Retry-After` the CA sent, so the backoff can honour it across restarts.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, header::RETRY_AFTER};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// Longest wait for a TCP connection to the directory.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Retry-After honoured: a bogus header must not stop renewals for months.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// A CA's request to wait: the status it answered (429 or 503) and its Retry-After.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    pub status: u16,
    pub until: SystemTime,
}

/// The latest [`Wait`] a CA asked for, shared with the order that caused it.
#[derive(Clone, Debug, Default)]
pub struct RetryAfter(Arc<Mutex<Option<Wait>>>);

impl RetryAfter {
    /// Takes the noted wait (so the next failure does not inherit it).
    pub fn take(&self) -> Option<Wait> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn note(&self, wait: Wait) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(wait);
    }
}

/// An ACME HTTP client trusting the public roots and, when given, the CAs in `ca_file`.
pub fn directory_client(
    ca_file: Option<&Path>,
    retry_after: RetryAfter,
) -> Result<Box<dyn HttpClient>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        for der in crate::pki::ca_file_certs(file)? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| format!("the caFile {}: {e}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https);
    Ok(Box::new(DirectoryClient {
        client,
        retry_after,
    }))
}

struct DirectoryClient {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetryAfter,
}

impl HttpClient for DirectoryClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let response = response
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                let header = response.headers().get(RETRY_AFTER);
                if let Some(until) = header
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                {
                    retry_after.note(Wait {
                        status: status.as_u16(),
                        until,
                    });
                }
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3), capped.
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let now = SystemTime::now();
    let value = value.trim();
    let at = match value.parse::<u64>() {
        Ok(secs) => now + Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value).ok()?,
    };
    Some(at.min(now + MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::now();
        let in_an_hour = parse_retry_after(" 3600 ").unwrap();
        let secs = in_an_hour.duration_since(now).unwrap().as_secs();
        assert!((3599..=3601).contains(&secs), "{secs}");
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let at = parse_retry_after(&date).unwrap();
        assert!(at > now + Duration::from_secs(100), "{date}");
        let far = parse_retry_after("999999999").unwrap();
        assert!(far <= SystemTime::now() + MAX_RETRY_AFTER);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let err = directory_client(Some(&file), RetryAfter::default())
            .err()
            .unwrap();
        assert!(err.contains("ca.pem holds no"), "{err}");
        let err = directory_client(Some(&dir.path().join("nope.pem")), RetryAfter::default())
            .err()
            .unwrap();
        assert!(err.contains("cannot read the caFile"), "{err}");
    }
}
