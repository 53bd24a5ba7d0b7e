//! Automatic server certificates for standalone routes by ACME (issue 14), built in steps.
//! Present so far: answering tls-alpn-01 challenges on the gate's own TLS port
//! ([`tls_alpn`]), wired into the proxy by `proxy::Settings::acme_challenges` (off unless
//! set); answering http-01 challenges and redirecting to https on the standalone gate's
//! optional plain-HTTP listener ([`http01`], `--http-listen`). Not yet: the account and
//! certificate store under `routes/<route>/acme/`, issuance and renewal, and a mode that
//! sets it.

pub mod http01;
pub mod tls_alpn;
