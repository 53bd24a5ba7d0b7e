//! Why an order failed, in words a person can act on: the ACME problem type (RFC 8555
//! §6.7), shortened for a metric label, with what to check.

use std::fmt;

use instant_acme::Problem;

use crate::resources::AcmeChallenge;

/// A failed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Short and stable, for the metric label: the ACME problem type without its URN
    /// prefix (`dns`, `connection`, `rateLimited`, …), or `unreachable`, `timeout`,
    /// `config`, `internal` for failures before the CA answered.
    pub kind: String,
    /// What happened and what to check.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

const URN: &str = "urn:ietf:params:acme:error:";

impl Failure {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Failure {
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// From a problem document the CA sent, for an order of `hosts` by `challenge`.
    pub fn from_problem(problem: &Problem, hosts: &[String], challenge: AcmeChallenge) -> Self {
        // A validation failure is often reported as one subproblem per identifier.
        let first_sub = problem.subproblems.first();
        let kind_of = |t: &Option<String>| {
            t.as_deref()
                .map(|t| t.strip_prefix(URN).unwrap_or(t).to_owned())
        };
        let kind = kind_of(&problem.r#type)
            .filter(|k| k != "malformed" || first_sub.is_none())
            .or_else(|| first_sub.and_then(|s| kind_of(&s.r#type)))
            .unwrap_or_else(|| "unknown".to_owned());
        let detail = problem
            .detail
            .as_deref()
            .or_else(|| first_sub.and_then(|s| s.detail.as_deref()))
            .unwrap_or("no detail given");
        let message = format!(
            "the ACME CA refused: {detail}; {}",
            advice(&kind, hosts, challenge)
        );
        Failure { kind, message }
    }

    /// The CA answered 429 or 503 with a Retry-After: whatever the client made of the
    /// answer (a directory fetch does not read it as a problem), that is what happened.
    pub fn asked_to_wait(directory: &str, status: u16, until: std::time::SystemTime) -> Self {
        let kind = if status == 429 {
            "rateLimited"
        } else {
            "unavailable"
        };
        Failure::new(
            kind,
            format!(
                "the ACME CA at {directory} answered HTTP {status} and asks to wait until {}; \
                 the gate waits that long before ordering again",
                humantime::format_rfc3339_seconds(until)
            ),
        )
    }

    /// The CA did not finish in time (its polling, or the gate's own limits).
    pub fn timed_out(directory: &str) -> Self {
        Failure::new(
            "timeout",
            format!(
                "the ACME CA at {directory} did not finish the order in time; it retries \
                 later (check the CA's status page if this persists)"
            ),
        )
    }

    /// From any error of the ACME client.
    pub fn from_error(
        error: &instant_acme::Error,
        directory: &str,
        hosts: &[String],
        challenge: AcmeChallenge,
    ) -> Self {
        use instant_acme::Error;
        match error {
            Error::Api(problem) => Self::from_problem(problem, hosts, challenge),
            Error::Timeout(_) => Self::timed_out(directory),
            Error::Hyper(_) | Error::Other(_) | Error::Http(_) | Error::InvalidUri(_) => {
                Failure::new(
                    "unreachable",
                    format!(
                        "cannot talk to the ACME directory {directory}: {}; check the URL, \
                         this box's internet access and DNS, and for a private CA its \
                         `caFile`",
                        chain(error)
                    ),
                )
            }
            other => Failure::new(
                "internal",
                format!(
                    "the ACME exchange with {directory} failed: {}",
                    chain(other)
                ),
            ),
        }
    }
}

/// What to check for a problem type.
fn advice(kind: &str, hosts: &[String], challenge: AcmeChallenge) -> String {
    let names = hosts.join(", ");
    let port = match challenge {
        AcmeChallenge::TlsAlpn01 => "443 (tls-alpn-01: the gate's --listen port)",
        AcmeChallenge::Http01 => "80 (http-01: the gate's --http-listen port)",
    };
    match kind {
        "dns" => {
            format!("check that {names} has a public DNS record (A or AAAA) pointing at this box")
        }
        "connection" | "tls" => format!(
            "the CA could not reach this box: check that port {port} is open to the internet \
             and forwarded to the gate (router port forward, firewall)"
        ),
        "unauthorized" | "incorrectResponse" => format!(
            "the CA could not see the gate's answer: check that {names} points at this box \
             and that port {port} is open to the internet and reaches the gate (router port \
             forward, firewall), not another service"
        ),
        "rateLimited" => {
            "the CA's rate limit; the gate waits as long as the CA asks (Retry-After) \
             before ordering again"
                .to_owned()
        }
        "caa" => format!("a CAA record of {names} forbids this CA; add the CA to it or remove it"),
        "rejectedIdentifier" | "unsupportedIdentifier" => format!(
            "the CA does not issue for {names} (a private name or an IP address?); use a \
             public DNS name"
        ),
        "invalidContact" | "unsupportedContact" => {
            "the CA refuses the account's email; fix `acme.email`".to_owned()
        }
        "externalAccountRequired" => "this CA needs an external account binding, which the \
             gate does not support; use another CA (e.g. Let's Encrypt)"
            .to_owned(),
        _ => "see the CA's documentation for this problem type".to_owned(),
    }
}

/// An error with its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: serde_json::Value) -> Problem {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_dns_problem_names_the_host_and_what_to_check() {
        let p = problem(serde_json::json!({
            "type": "urn:ietf:params:acme:error:dns",
            "detail": "no valid A records found for ha.example.com",
            "status": 400
        }));
        let f = Failure::from_problem(&p, &["ha.example.com".into()], AcmeChallenge::TlsAlpn01);
        assert_eq!(f.kind, "dns");
        assert!(f.message.contains("no valid A records"), "{f}");
        assert!(f.message.contains("pointing at this box"), "{f}");
    }

    #[test]
    fn subproblems_give_the_kind_of_a_compound_problem() {
        let p = problem(serde_json::json!({
            "type": "urn:ietf:params:acme:error:malformed",
            "detail": "some identifiers failed",
            "subproblems": [{
                "type": "urn:ietf:params:acme:error:connection",
                "detail": "connection refused",
                "identifier": {"type": "dns", "value": "ha.example.com"}
            }]
        }));
        let f = Failure::from_problem(&p, &["ha.example.com".into()], AcmeChallenge::Http01);
        assert_eq!(f.kind, "connection");
        assert!(f.message.contains("port 80"), "{f}");
    }

    #[test]
    fn a_rate_limit_says_the_gate_waits() {
        let p = problem(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many certificates already issued"
        }));
        let f = Failure::from_problem(&p, &["a.example".into()], AcmeChallenge::TlsAlpn01);
        assert_eq!(f.kind, "rateLimited");
        assert!(f.message.contains("Retry-After"), "{f}");
    }
}
