//! Automatic server certificates for standalone routes by ACME (issue 14), built in steps.
//! Present so far: answering tls-alpn-01 challenges on the gate's own TLS port
//! ([`tls_alpn`]). Not yet: the account and certificate store under
//! `routes/<route>/acme/`, issuance and renewal, wiring into the proxy.

pub mod tls_alpn;
