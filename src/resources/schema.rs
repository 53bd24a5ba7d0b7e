//! Validation the API server does at apply time, generated into the CRDs from the Rust
//! types: CEL rules (`x-kubernetes-validations`) with messages a person can act on, and
//! OpenAPI limits. The same checks (and more: ranges, IPv6 in full, selectors) run again
//! in [`super::validate`] when the gate loads an object; these only make `kubectl apply`
//! (and so Argo CD, Flux) refuse an object the gate would reject.
//!
//! Kept to what Kubernetes 1.25 (the chart's `kubeVersion` minimum) evaluates: `rule` and
//! `message` (not `messageExpression`, 1.27+), `has()`, `matches()`, `all()`, `size()`.
//! Every string a rule reads has a `maxLength` and every list a `maxItems`, so the API
//! server's cost estimate stays under its budget.

use schemars::Schema;
use serde_json::{Value, json};

use super::validate::{DURATION_MAX_LEN, DURATION_PATTERN, MAX_COMMON_NAME_LEN};

/// Message of the rule on every duration field.
pub const DURATION_MESSAGE: &str = "must be whole numbers with a unit d, h, m or s, \
     e.g. 30m, 1h, 365d or 1h30m (no spaces, no fractions)";
/// Message of the rule on `spec.upstream`.
pub const UPSTREAM_MESSAGE: &str = "set exactly one of `service` (a Service in this \
     namespace: {name, port}) or `url` (http://HOST:PORT)";
/// Message of the rule on `spec.serverCertificate`.
pub const SERVER_CERTIFICATE_MESSAGE: &str =
    "set at most one of `issue: {}`, `secretName`, `files: {certificate, key}` or `acme: {email}`";
/// Message of the rule on `spec.hosts`.
pub const HOSTS_MESSAGE: &str = "each host must be a DNS name or an IP address, without \
     scheme, port, path or wildcard, e.g. ha.example.org";
/// Message of the rule on `spec.commonName`.
pub const COMMON_NAME_MESSAGE: &str = "is empty; remove it to use the resource name";

/// Message of the rule on `spec.stripHeaders`.
pub const STRIP_HEADERS_MESSAGE: &str = "each entry must be a header name (letters, digits \
     and ! # $ % & ' + - . ^ _ ` | ~), optionally ending in * to match a prefix, e.g. \
     X-Home-User or X-Corp-*";
/// A `stripHeaders` entry: a header name (RFC 9110 token without `*`), optionally ending
/// in `*`.
pub const HEADER_PATTERN: &str = r"^[!#$%&'+.^_`|~0-9A-Za-z-]+[*]?$";
/// Most `stripHeaders` entries, and the longest one.
pub const MAX_STRIP_HEADERS: usize = 64;
pub const MAX_HEADER_NAME_LEN: usize = 128;

/// Longest host name (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;
/// Most hosts on one route.
pub const MAX_HOSTS: usize = 64;

/// A DNS name: labels of letters, digits and `-` (not first or last), 1-63 long.
const DNS_NAME: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// A last label of digits only: `1.2.3` is neither a name nor an address.
const NUMERIC_TLD: &str = r"(^|\.)[0-9]+$";
/// A dotted-quad IPv4 address without leading zeros.
const IPV4: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";
/// An IPv6 address, loosely (hex digits, colons, dots); the gate checks it in full.
const IPV6: &str = r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$";

/// A CEL string literal (single-quoted) holding `text`.
fn cel_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', r"\\").replace('\'', r"\'"))
}

/// Appends a rule to the schema's `x-kubernetes-validations`.
fn rule(schema: &mut Schema, rule: String, message: &str) {
    let list = schema
        .ensure_object()
        .entry("x-kubernetes-validations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.push(json!({ "rule": rule, "message": message }));
    }
}

fn insert(schema: &mut Schema, key: &str, value: Value) {
    schema.ensure_object().insert(key.into(), value);
}

/// A duration string: see [`super::validate::parse_duration`] for the grammar.
pub fn duration(schema: &mut Schema) {
    insert(schema, "maxLength", json!(DURATION_MAX_LEN));
    rule(
        schema,
        format!("self.matches({})", cel_string(DURATION_PATTERN)),
        DURATION_MESSAGE,
    );
}

/// `upstream`: exactly one of `service`, `url`.
pub fn upstream(schema: &mut Schema) {
    rule(
        schema,
        "has(self.service) != has(self.url)".into(),
        UPSTREAM_MESSAGE,
    );
}

/// `serverCertificate`: at most one of `issue`, `secretName`, `files`, `acme` (none means
/// `issue`).
pub fn server_certificate(schema: &mut Schema) {
    rule(
        schema,
        "(has(self.issue) ? 1 : 0) + (has(self.secretName) ? 1 : 0) + (has(self.files) ? 1 : 0) \
         + (has(self.acme) ? 1 : 0) <= 1"
            .into(),
        SERVER_CERTIFICATE_MESSAGE,
    );
}

/// `hosts`: DNS names or IP addresses.
pub fn hosts(schema: &mut Schema) {
    insert(schema, "maxItems", json!(MAX_HOSTS));
    if let Some(Value::Object(items)) = schema.ensure_object().get_mut("items") {
        items.insert("maxLength".into(), json!(MAX_HOST_LEN));
    }
    let host = format!(
        "(h.matches({dns}) && !h.matches({tld})) || h.matches({v4}) || h.matches({v6})",
        dns = cel_string(DNS_NAME),
        tld = cel_string(NUMERIC_TLD),
        v4 = cel_string(IPV4),
        v6 = cel_string(IPV6),
    );
    rule(schema, format!("self.all(h, {host})"), HOSTS_MESSAGE);
}

/// `commonName`: not blank, at most 64 characters (X.509 `ub-common-name`).
pub fn common_name(schema: &mut Schema) {
    insert(schema, "maxLength", json!(MAX_COMMON_NAME_LEN));
    rule(
        schema,
        format!("!self.matches({})", cel_string(r"^\s*$")),
        COMMON_NAME_MESSAGE,
    );
}

/// `stripHeaders`: header names, or prefixes ending in `*`.
pub fn strip_headers(schema: &mut Schema) {
    insert(schema, "maxItems", json!(MAX_STRIP_HEADERS));
    if let Some(Value::Object(items)) = schema.ensure_object().get_mut("items") {
        items.insert("maxLength".into(), json!(MAX_HEADER_NAME_LEN));
    }
    rule(
        schema,
        format!("self.all(h, h.matches({}))", cel_string(HEADER_PATTERN)),
        STRIP_HEADERS_MESSAGE,
    );
}
