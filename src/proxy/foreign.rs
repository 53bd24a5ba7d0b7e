//! Request headers an upstream could read as an identity or a client address that the
//! gate did not write: other proxies' client-certificate headers, forward-auth user
//! headers, other client-address headers, and underscore spellings of any of these.
//!
//! A client that sends them is trying to be someone else to an app (or an auth add-on
//! such as hass-auth-header) that trusts a proxy in front of it. Names are compared
//! folded (lowercase, `_` read as `-`), the way CGI/WSGI-style stacks read them, so
//! `X_Forwarded_User` is `X-Forwarded-User`. Checking a name allocates nothing: it is one
//! byte scan for `_` and a few comparisons against the patterns sharing its first letter.

use crate::snapshot::{HeaderPattern, HeaderPolicy, fold};

/// The built-in list, grouped by first letter so a name is compared only with its group.
/// A trailing `*` matches every name with that prefix.
const X: &[&str] = &[
    // Client certificates as other TLS terminators pass them on.
    "x-forwarded-client-cert",      // Envoy, Istio (XFCC)
    "x-forwarded-tls-client-cert*", // Traefik passTLSClientCert
    "x-ssl-*",                      // nginx / HAProxy conventions (X-SSL-Client-S-DN, …)
    "x-client-cert*",               // HAProxy, Google Cloud load balancers
    "x-client-verify",
    "x-client-dn",
    "x-arr-clientcert", // Azure App Service
    "x-amzn-mtls-*",    // AWS ALB
    // Users as forward-auth proxies pass them on.
    "x-forwarded-user", // oauth2-proxy, authentik
    "x-forwarded-email",
    "x-forwarded-preferred-username", // hass-auth-header's default
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-*", // oauth2-proxy --set-xauthrequest
    "x-auth-username",  // authentik (older outposts)
    "x-authentik-*",
    "x-remote-*",  // Kubernetes authenticating proxy (X-Remote-User, X-Remote-Group)
    "x-webauth-*", // Grafana auth proxy
    "x-pomerium-*",
    "x-user",
    "x-email",
    // Client addresses besides the gate's own X-Forwarded-For / X-Real-IP.
    "x-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
];
const R: &[&str] = &[
    "remote-*", // Authelia, tinyauth (Remote-User, Remote-Groups, Remote-Email, Remote-Name)
];
const S: &[&str] = &[
    "ssl-client-*", // Apache mod_ssl variables as headers
];
const C: &[&str] = &[
    "cf-access-*", // Cloudflare Access
    "cf-connecting-ip",
];
const T: &[&str] = &[
    "tailscale-user-*", // Tailscale Serve
    "true-client-ip",
];
const F: &[&str] = &["fastly-client-ip"];

/// Every built-in pattern (README lists them).
#[cfg(test)]
fn builtin() -> impl Iterator<Item = &'static str> {
    [X, R, S, C, T, F].into_iter().flatten().copied()
}

/// The built-in patterns a name starting with `first` (folded) could match.
fn builtin_for(first: u8) -> &'static [&'static str] {
    match first {
        b'x' => X,
        b'r' => R,
        b's' => S,
        b'c' => C,
        b't' => T,
        b'f' => F,
        _ => &[],
    }
}

/// Names with a `-` the gate owns or reads for framing: an underscore spelling of one is
/// dropped even on a route that forwards underscores. (A name with `_` can only fold to
/// a name with `-`, so `Host`, `Cookie`, `TE` need no entry.)
const RESERVED: &[&str] = &[
    "x-portcullis-identity",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "content-length",
    "http2-settings",
];

/// Whether a client's request header `name` may reach the upstream on a route with
/// `policy` (hop-by-hop and gate-only names are the caller's to drop).
pub fn forwardable(name: &str, policy: &HeaderPolicy) -> bool {
    let name = name.as_bytes();
    let Some(&first) = name.first() else {
        return false;
    };
    if name.contains(&b'_')
        && (!policy.allow_underscores || RESERVED.iter().any(|r| folded_eq(name, r.as_bytes())))
    {
        return false;
    }
    let first = fold(first);
    !builtin_for(first).iter().any(|p| matches(name, p))
        && !policy
            .strip
            .iter()
            .any(|p| p.name.as_bytes().first() == Some(&first) && pattern_matches(name, p))
}

/// `name` against a built-in pattern (`*` suffix: prefix).
fn matches(name: &[u8], pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => starts_folded(name, prefix.as_bytes()),
        None => folded_eq(name, pattern.as_bytes()),
    }
}

fn pattern_matches(name: &[u8], pattern: &HeaderPattern) -> bool {
    let want = pattern.name.as_bytes();
    match pattern.prefix {
        true => starts_folded(name, want),
        false => folded_eq(name, want),
    }
}

/// `name` folded equals `folded` (already lowercase, `-` for `_`).
fn folded_eq(name: &[u8], folded: &[u8]) -> bool {
    name.len() == folded.len() && starts_folded(name, folded)
}

fn starts_folded(name: &[u8], folded: &[u8]) -> bool {
    name.len() >= folded.len() && name.iter().zip(folded).all(|(&n, &f)| fold(n) == f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strip: &[&str], allow_underscores: bool) -> HeaderPolicy {
        HeaderPolicy {
            strip: strip.iter().map(|p| HeaderPattern::parse(p)).collect(),
            allow_underscores,
        }
    }

    #[test]
    fn identity_headers_of_other_proxies_are_not_forwarded() {
        let default = HeaderPolicy::default();
        for name in [
            "X-Forwarded-Client-Cert",
            "x-ssl-client-s-dn",
            "X-SSL-Client-Verify",
            "SSL-Client-Cert",
            "X-Client-Cert",
            "X-Client-Cert-Present",
            "X-Client-Verify",
            "X-Forwarded-Tls-Client-Cert-Info",
            "X-Forwarded-User",
            "X-Forwarded-Email",
            "X-Forwarded-Preferred-Username",
            "X-Forwarded-Groups",
            "Remote-User",
            "REMOTE-GROUPS",
            "Remote-Email",
            "Remote-Name",
            "X-Remote-User",
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "X-authentik-username",
            "Tailscale-User-Login",
            "CF-Connecting-IP",
            "True-Client-IP",
        ] {
            assert!(!forwardable(name, &default), "{name}");
        }
        for name in [
            "accept",
            "Authorization",
            "X-Requested-With",
            "x-forwarded",
            "x-ha-access",
            "content-type",
            "remote",
            "ssl",
        ] {
            assert!(forwardable(name, &default), "{name}");
        }
    }

    #[test]
    fn underscores_are_dropped_unless_the_route_allows_them() {
        let default = HeaderPolicy::default();
        let allowing = policy(&[], true);
        for name in ["X_Custom", "x_portcullis_identity", "_"] {
            assert!(!forwardable(name, &default), "{name}");
        }
        assert!(forwardable("X_Custom", &allowing));
        // Still dropped: the folded name is the gate's own, framing, or stripped.
        for name in [
            "X_Portcullis_Identity",
            "x_forwarded_FOR",
            "X_Real_IP",
            "Content_Length",
            "transfer_encoding",
            "X_Forwarded_User",
            "Remote_User",
            "X_SSL_Client_S_DN",
        ] {
            assert!(!forwardable(name, &allowing), "{name}");
        }
    }

    #[test]
    fn route_patterns_add_names_and_prefixes() {
        let route = policy(&["X-Home-User", "X-Corp-*", "Y_Token"], false);
        for name in [
            "x-home-user",
            "X-CORP-ID",
            "x-corp-",
            "y-token",
            "X_Home_User",
        ] {
            assert!(!forwardable(name, &route), "{name}");
        }
        for name in ["x-home-users", "x-corp", "y-tokens", "accept"] {
            assert!(forwardable(name, &route), "{name}");
        }
    }

    #[test]
    fn the_readme_lists_every_built_in_pattern() {
        let readme = include_str!("../../README.md").to_ascii_lowercase();
        for pattern in builtin() {
            assert!(
                readme.contains(&format!("`{pattern}`")),
                "README lacks `{pattern}`"
            );
        }
    }

    #[test]
    fn built_in_patterns_are_folded_and_grouped_by_first_letter() {
        for pattern in builtin() {
            let first = pattern.as_bytes()[0];
            assert!(builtin_for(first).contains(&pattern), "{pattern}");
            let folded = HeaderPattern::parse(pattern);
            assert_eq!(pattern.trim_end_matches('*'), folded.name, "{pattern}");
        }
        for name in RESERVED {
            assert!(
                name.contains('-'),
                "{name} can never be an underscore spelling"
            );
        }
    }
}
