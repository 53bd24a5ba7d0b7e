//! Per-document checks that need no schema: the header every document must have.

use serde_yaml::Value;

use super::API_VERSION;
use crate::resources::validate::{self, Problem};

pub(super) fn duplicate(kind: &str, name: &str) -> Problem {
    Problem::new(
        "metadata.name",
        format!("another {kind} is already named {name}; rename one"),
    )
}

/// apiVersion, kind and metadata.name: without them the document means nothing.
pub(super) fn header_problems(value: &Value, kind: &str, name: Option<&str>) -> Vec<Problem> {
    let mut out = Vec::new();
    if !value.is_mapping() {
        out.push(Problem::new(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        ));
        return out;
    }
    let api = value.get("apiVersion").and_then(Value::as_str);
    if api != Some(API_VERSION) {
        out.push(Problem::new(
            "apiVersion",
            format!("write apiVersion: {API_VERSION}"),
        ));
    }
    if !matches!(kind, "ProtectedRoute" | "ClientIdentity") {
        let msg =
            format!("{kind:?} is not a Portcullis kind; write ProtectedRoute or ClientIdentity");
        out.push(Problem::new("kind", msg));
    }
    match name {
        None => out.push(Problem::new(
            "metadata.name",
            "is missing; give the resource a name",
        )),
        Some(n) if !validate::is_dns_label(n) => out.push(Problem::new(
            "metadata.name",
            format!(
                "{n:?} is not usable as a name (it becomes a directory name); use lowercase \
                 letters, digits and -, at most 63, e.g. alice-iphone"
            ),
        )),
        Some(_) => {}
    }
    out
}
