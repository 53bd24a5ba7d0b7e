use super::*;
use crate::resources::{
    AcmeChallenge, AcmeSpec, CertificateFiles, ClientAuth, IssueSpec, Pkcs12Spec, SecretKeyRef,
    ServerCertificate, ServiceRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

fn route() -> ProtectedRouteSpec {
    ProtectedRouteSpec {
        hosts: vec!["ha.example.org".into(), "192.168.1.10".into()],
        upstream: Upstream {
            service: None,
            url: Some("http://127.0.0.1:8123".into()),
        },
        server_certificate: ServerCertificate::default(),
        client_auth: ClientAuth::default(),
        bypass: vec![BypassRule {
            path_prefix: "/api/webhook/".into(),
            methods: Some(vec!["POST".into()]),
        }],
        strip_headers: vec!["X-Home-User".into(), "X-Corp-*".into()],
        allow_underscore_headers: false,
        hsts: None,
    }
}

fn identity() -> ClientIdentitySpec {
    ClientIdentitySpec {
        common_name: None,
        validity: None,
        renew_before: None,
        key_algorithm: Default::default(),
        pkcs12: Pkcs12Spec::default(),
        revoked: false,
    }
}

/// The fields of the problems, in order.
fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

/// Asserts exactly one problem, on `field`, whose message contains `needle`.
fn one(problems: Vec<Problem>, field: &str, needle: &str) {
    assert_eq!(fields(&problems), vec![field], "{problems:?}");
    assert!(
        problems[0].message.contains(needle),
        "{:?} lacks {needle:?}",
        problems[0].message
    );
}

#[test]
fn good_specs_have_no_problems() {
    assert_eq!(route_problems(&route()), vec![]);
    assert_eq!(identity_problems(&identity()), vec![]);
    let mut r = route();
    r.hosts = vec![
        "HA.Example.org".into(),
        "::1".into(),
        "fe80::1:2".into(),
        "localhost".into(),
    ];
    assert_eq!(route_problems(&r), vec![]);
}

#[test]
fn hosts_must_be_names_or_ips() {
    let mut r = route();
    r.hosts = vec![];
    one(route_problems(&r), "spec.hosts", "at least one");
    for (host, needle) in [
        ("ha.example.org:8443", "without a port: ha.example.org"),
        ("https://ha.example.org", "is a URL"),
        ("*.example.org", "wildcards"),
        ("ha example.org", "not a DNS name"),
        ("-ha.example.org", "not a DNS name"),
        ("1.2.3", "not a DNS name"),
    ] {
        r.hosts = vec![host.into()];
        one(route_problems(&r), "spec.hosts[0]", needle);
    }
    r.hosts = vec!["a.example.org".into(), "A.example.org".into()];
    one(route_problems(&r), "spec.hosts[1]", "listed twice");
}

#[test]
fn upstream_is_one_plain_http_url_or_service() {
    let mut r = route();
    r.upstream.service = Some(ServiceRef {
        name: "ha".into(),
        port: 8123,
    });
    one(route_problems(&r), "spec.upstream", "not both");
    r.upstream = Upstream {
        service: None,
        url: None,
    };
    one(route_problems(&r), "spec.upstream", "url: http://HOST:PORT");
    r.upstream = Upstream {
        service: Some(ServiceRef {
            name: "Bad_Name".into(),
            port: 0,
        }),
        url: None,
    };
    assert_eq!(
        fields(&route_problems(&r)),
        vec!["spec.upstream.service.name", "spec.upstream.service.port"]
    );
    for (url, needle) in [
        (
            "https://127.0.0.1:8123",
            "https upstreams are not supported",
        ),
        ("ftp://127.0.0.1:21", "must start with http://"),
        ("http://127.0.0.1", "has no port"),
        ("http://127.0.0.1:8123/ha", "has a path"),
        ("http://127.0.0.1:8123/?a=b", "has a path"),
        ("http://user:pw@127.0.0.1:8123", "credentials"),
        ("not a url", "is not a URL"),
    ] {
        r.upstream = Upstream {
            service: None,
            url: Some(url.into()),
        };
        one(route_problems(&r), "spec.upstream.url", needle);
    }
    assert_eq!(
        upstream_authority("http://ha.local:8123/")
            .unwrap()
            .as_str(),
        "ha.local:8123"
    );
}

#[test]
fn server_certificate_is_one_source() {
    let mut r = route();
    r.server_certificate = ServerCertificate {
        issue: Some(IssueSpec {}),
        secret_name: Some("x".into()),
        files: None,
        acme: None,
    };
    one(route_problems(&r), "spec.serverCertificate", "only one of");
    r.server_certificate = ServerCertificate {
        issue: None,
        secret_name: Some(" ".into()),
        files: None,
        acme: None,
    };
    one(
        route_problems(&r),
        "spec.serverCertificate.secretName",
        "empty",
    );
    let files = |certificate: &str| CertificateFiles {
        certificate: certificate.into(),
        key: "/ssl/privkey.pem".into(),
    };
    r.server_certificate = ServerCertificate {
        issue: None,
        secret_name: Some("x".into()),
        files: Some(files("/ssl/fullchain.pem")),
        acme: None,
    };
    one(route_problems(&r), "spec.serverCertificate", "only one of");
    r.server_certificate = ServerCertificate {
        files: Some(files(" ")),
        ..ServerCertificate::default()
    };
    one(
        route_problems(&r),
        "spec.serverCertificate.files.certificate",
        "is empty",
    );
}

#[test]
fn files_are_refused_in_a_cluster() {
    let mut r = route();
    assert_eq!(cluster_route_problems(&r), vec![]);
    r.server_certificate.files = Some(CertificateFiles {
        certificate: "/ssl/fullchain.pem".into(),
        key: "/ssl/privkey.pem".into(),
    });
    assert_eq!(route_problems(&r), vec![]);
    one(
        cluster_route_problems(&r),
        "spec.serverCertificate.files",
        "secretName",
    );
}

fn acme(email: &str) -> AcmeSpec {
    AcmeSpec {
        email: email.into(),
        directory: None,
        challenge: AcmeChallenge::default(),
        ca_file: None,
        self_issued_fallback: false,
    }
}

#[test]
fn acme_is_checked_and_refused_in_a_cluster() {
    let mut r = route();
    r.server_certificate.acme = Some(acme("me@example.com"));
    assert_eq!(route_problems(&r), vec![]);
    one(
        cluster_route_problems(&r),
        "spec.serverCertificate.acme",
        "cert-manager",
    );
    r.server_certificate.secret_name = Some("x".into());
    one(route_problems(&r), "spec.serverCertificate", "only one of");
    r.server_certificate.secret_name = None;

    r.server_certificate.acme = Some(acme("not an address"));
    one(
        route_problems(&r),
        "spec.serverCertificate.acme.email",
        "you@example.com",
    );
    let mut spec = acme("me@example.com");
    spec.directory = Some("http://ca.example/dir".into());
    spec.ca_file = Some(" ".into());
    r.server_certificate.acme = Some(spec);
    let problems = route_problems(&r);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].message.contains("not an https:// URL"),
        "{problems:?}"
    );
    assert_eq!(problems[1].field, "spec.serverCertificate.acme.caFile");
}

#[test]
fn an_acme_wildcard_points_to_dns_01_tools() {
    let mut r = route();
    r.hosts = vec!["*.example.org".into()];
    one(route_problems(&r), "spec.hosts[0]", "not supported");
    r.server_certificate.acme = Some(acme("me@example.com"));
    one(route_problems(&r), "spec.hosts[0]", "DNS-01");
}

#[test]
fn cookie_ttl_and_name() {
    let mut r = route();
    for (ttl, ok) in [
        ("1h", true),
        ("30m", true),
        ("1m", true),
        ("7d", true),
        ("30s", false),
        ("8d", false),
    ] {
        r.client_auth.cookie_fallback.ttl = ttl.into();
        assert_eq!(route_problems(&r).is_empty(), ok, "{ttl}");
    }
    r.client_auth.cookie_fallback.ttl = "an hour".into();
    one(
        route_problems(&r),
        "spec.clientAuth.cookieFallback.ttl",
        "e.g. 30m, 1h",
    );
    r.client_auth.cookie_fallback.ttl = "1h".into();
    r.client_auth.cookie_fallback.name = "portcullis".into();
    one(
        route_problems(&r),
        "spec.clientAuth.cookieFallback.name",
        "must start with __Host-",
    );
    r.client_auth.cookie_fallback.name = "__Host-a;b".into();
    one(
        route_problems(&r),
        "spec.clientAuth.cookieFallback.name",
        "not a cookie name",
    );
}

#[test]
fn identity_selector_operators() {
    let mut r = route();
    let bad = LabelSelectorRequirement {
        key: "a".into(),
        operator: "Is".into(),
        values: None,
    };
    r.client_auth.identity_selector = Some(LabelSelector {
        match_expressions: Some(vec![bad]),
        match_labels: None,
    });
    one(
        route_problems(&r),
        "spec.clientAuth.identitySelector",
        "In, NotIn",
    );
}

#[test]
fn bypass_prefix_and_methods() {
    let mut r = route();
    r.bypass = vec![BypassRule {
        path_prefix: "api/webhook/".into(),
        methods: None,
    }];
    one(
        route_problems(&r),
        "spec.bypass[0].pathPrefix",
        "must start with /",
    );
    r.bypass = vec![BypassRule {
        path_prefix: "/a b".into(),
        methods: None,
    }];
    one(route_problems(&r), "spec.bypass[0].pathPrefix", "spaces");
    r.bypass = vec![BypassRule {
        path_prefix: "/x".into(),
        methods: Some(vec!["post".into()]),
    }];
    one(
        route_problems(&r),
        "spec.bypass[0].methods[0]",
        "write POST",
    );
    r.bypass[0].methods = Some(vec!["GET".into(), "PO ST".into()]);
    one(
        route_problems(&r),
        "spec.bypass[0].methods[1]",
        "not an HTTP method",
    );
    r.bypass[0].methods = Some(vec!["PROPFIND".into()]);
    assert!(route_problems(&r).is_empty());
}

#[test]
fn identity_durations() {
    let mut c = identity();
    let timing = identity_timing(&c).unwrap();
    assert_eq!(timing.validity, DEFAULT_VALIDITY);
    assert_eq!(timing.renew_before, MAX_DEFAULT_RENEW_BEFORE);
    c.validity = Some("30d".into());
    assert_eq!(
        identity_timing(&c).unwrap().renew_before,
        Duration::from_secs(10 * 86_400)
    );
    c.validity = Some("1y".into());
    one(identity_problems(&c), "spec.validity", "not a duration");
    c.validity = Some("10m".into());
    one(identity_problems(&c), "spec.validity", "at least 1h");
    c.validity = Some("365d".into());
    c.renew_before = Some("soon".into());
    one(identity_problems(&c), "spec.renewBefore", "not a duration");
    c.renew_before = Some("400d".into());
    one(
        identity_problems(&c),
        "spec.renewBefore",
        "shorter than the validity",
    );
    c.renew_before = Some("30d".into());
    assert!(identity_problems(&c).is_empty());
}

#[test]
fn common_name_and_password_ref() {
    let mut c = identity();
    c.common_name = Some(" ".into());
    one(identity_problems(&c), "spec.commonName", "empty");
    c.common_name = Some("x".repeat(65));
    one(identity_problems(&c), "spec.commonName", "64");
    c.common_name = Some("x".repeat(64));
    assert!(identity_problems(&c).is_empty());
    c.pkcs12.password_secret_ref = Some(SecretKeyRef {
        name: "".into(),
        key: "password".into(),
    });
    one(
        identity_problems(&c),
        "spec.pkcs12.passwordSecretRef.name",
        "empty",
    );
}

#[test]
fn dns_labels_for_names() {
    for ok in ["alice-iphone", "a", "x1"] {
        assert!(is_dns_label(ok), "{ok}");
    }
    for bad in ["", "..", "a/b", "Alice", "-a", "a-", "a.b", &"a".repeat(64)] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}

include!("duration_cases.rs");

/// The shared table: what the CRDs' CEL rule accepts (tests/crd_validation.rs) the parser
/// accepts, with these values, and what it refuses the parser refuses.
#[test]
fn durations_follow_the_shared_table() {
    for &(text, secs) in DURATION_CASES {
        assert_eq!(
            parse_duration(text).ok().map(|d| d.as_secs()),
            secs,
            "{text:?}"
        );
    }
}

#[test]
fn strip_headers_are_names_or_prefixes() {
    assert!(route_problems(&route()).is_empty());
    let mut spec = route();
    spec.strip_headers = vec![
        "*".into(),
        "X-A*B".into(),
        "X Space".into(),
        "".into(),
        "X-Ok".into(),
        "X:Colon".into(),
    ];
    let fields: Vec<String> = route_problems(&spec).into_iter().map(|p| p.field).collect();
    let want: Vec<String> = [0, 1, 2, 3, 5]
        .iter()
        .map(|i| format!("spec.stripHeaders[{i}]"))
        .collect();
    assert_eq!(fields, want);
}
