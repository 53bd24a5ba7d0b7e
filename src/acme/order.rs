//! One ACME order for a route's hosts: answer each authorization's challenge (by the
//! gate's TLS port or its plain-HTTP listener), then finalize with a fresh key.
//!
//! ```text
//!  new order ──▶ per host: challenge answer in Challenges / Http01Tokens, set ready
//!            ──▶ poll ready ──▶ CSR (new P-256 key) ──▶ poll certificate ──▶ Issued
//! ```
//! Every answer is withdrawn when the order ends, however it ends.

use std::net::IpAddr;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::http01::Http01Tokens;
use super::tls_alpn::Challenges;
use crate::resources::AcmeChallenge;

/// How long the CA may take to validate and to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// Where challenge answers are published for the CA to check.
#[derive(Clone, Debug, Default)]
pub struct Responders {
    pub tls_alpn: Challenges,
    pub http01: Http01Tokens,
}

/// A new certificate.
pub struct Issued {
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// Leaf first.
    pub chain_pem: String,
}

/// Orders a certificate for `hosts` on `account`.
pub async fn order(
    account: &Account,
    hosts: &[String],
    challenge: AcmeChallenge,
    responders: &Responders,
) -> Result<Issued, instant_acme::Error> {
    let identifiers: Vec<Identifier> = hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(h.clone()),
        })
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answers = Answers {
        responders,
        hosts: Vec::new(),
        tokens: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status != AuthorizationStatus::Pending {
            // Valid: authorized by an earlier order; anything else fails the order below.
            continue;
        }
        let host = authz.identifier().to_string();
        let kind = match challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let Some(mut handle) = authz.challenge(kind) else {
            return Err(instant_acme::Error::Str(match challenge {
                AcmeChallenge::TlsAlpn01 => {
                    "the CA offers no tls-alpn-01 challenge; set `challenge: http-01`"
                }
                AcmeChallenge::Http01 => {
                    "the CA offers no http-01 challenge; set `challenge: tls-alpn-01`"
                }
            }));
        };
        let key_authorization = handle.key_authorization();
        match challenge {
            AcmeChallenge::TlsAlpn01 => {
                let digest = key_authorization.digest();
                let digest: [u8; 32] = digest
                    .as_ref()
                    .try_into()
                    .map_err(|_| instant_acme::Error::Str("a key authorization digest"))?;
                responders
                    .tls_alpn
                    .insert(&host, &digest)
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                answers.hosts.push(host);
            }
            AcmeChallenge::Http01 => {
                responders
                    .http01
                    .insert(&handle.token, key_authorization.as_str());
                answers.tokens.push(handle.token.clone());
            }
        }
        handle.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order).await);
    }
    drop(answers);
    let key = rcgen::KeyPair::generate().map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
    let csr = rcgen::CertificateParams::new(hosts.to_vec())
        .and_then(|params| params.serialize_request(&key))
        .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    Ok(Issued {
        key_pem: key.serialize_pem(),
        chain_pem,
    })
}

/// The problem of the first failed challenge (what the CA saw), or the order's own.
async fn why_invalid(order: &mut instant_acme::Order) -> instant_acme::Error {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        let failed = authz.challenges.iter().find_map(|c| c.error.clone());
        if let Some(problem) = failed {
            return instant_acme::Error::Api(problem);
        }
    }
    match order.state().error.clone() {
        Some(problem) => instant_acme::Error::Api(problem),
        None => instant_acme::Error::Str("the order became invalid without a reason"),
    }
}

/// Published answers, withdrawn on drop.
struct Answers<'a> {
    responders: &'a Responders,
    hosts: Vec<String>,
    tokens: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for host in &self.hosts {
            self.responders.tls_alpn.remove(host);
        }
        for token in &self.tokens {
            self.responders.http01.remove(token);
        }
    }
}
