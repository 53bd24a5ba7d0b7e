//! Which release of Portcullis a ProtectedRoute or ClientIdentity belongs to.
//!
//! ```text
//!  label portcullis.dev/instance: <name>  ──▶ the release whose --instance is <name>
//!  no label                               ──▶ the release with --claim-unlabelled (default)
//! ```
//! A single release claims every unlabelled object, so it needs no configuration; a second
//! release in the same cluster runs with `--claim-unlabelled=false` and gets only the
//! objects labelled with its name. A label selector cannot say "equals X or absent", so the
//! test is made on each object after the watch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names::{DEFAULT_INSTANCE, INSTANCE_LABEL};

/// This release's name and whether it claims unlabelled objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The value of [`INSTANCE_LABEL`] this release acts on and writes (the chart: the
    /// release name).
    pub name: String,
    /// Whether objects without [`INSTANCE_LABEL`] belong to this release.
    pub claim_unlabelled: bool,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            name: DEFAULT_INSTANCE.to_owned(),
            claim_unlabelled: true,
        }
    }
}

impl Instance {
    /// An instance named `name` (checked to be a label value; the error says why not).
    pub fn new(name: &str, claim_unlabelled: bool) -> Result<Self, String> {
        check_label_value(name)
            .map_err(|why| format!("instance name {name:?} is not usable: {why}"))?;
        Ok(Instance {
            name: name.to_owned(),
            claim_unlabelled,
        })
    }

    /// Whether the object with `meta` belongs to this release.
    pub fn claims(&self, meta: &ObjectMeta) -> bool {
        match meta.labels.as_ref().and_then(|l| l.get(INSTANCE_LABEL)) {
            Some(owner) => *owner == self.name,
            None => self.claim_unlabelled,
        }
    }
}

/// A Kubernetes label value: 1 to 63 characters `[A-Za-z0-9._-]`, beginning and ending with
/// a letter or digit (empty is a valid label value, but not a name).
fn check_label_value(value: &str) -> Result<(), &'static str> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if value.is_empty() || value.len() > 63 {
        Err("it must be 1 to 63 characters")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Err("only letters, digits, '-', '_' and '.' are allowed")
    } else if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        Err("it must begin and end with a letter or digit")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(label: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: label.map(|v| BTreeMap::from([(INSTANCE_LABEL.to_owned(), v.to_owned())])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_labelled_object_belongs_to_the_release_it_names_an_unlabelled_one_to_the_claimer() {
        let first = Instance::default();
        let second = Instance::new("second", false).unwrap();
        assert!(first.claims(&meta(None)) && !second.claims(&meta(None)));
        assert!(!first.claims(&meta(Some("second"))) && second.claims(&meta(Some("second"))));
        assert!(first.claims(&meta(Some(DEFAULT_INSTANCE))));
        assert!(!first.claims(&meta(Some(""))) && !second.claims(&meta(Some(""))));
        let mut other_labels = meta(None);
        other_labels.labels = Some(BTreeMap::from([("app".to_owned(), "x".to_owned())]));
        assert!(first.claims(&other_labels) && !second.claims(&other_labels));
    }

    #[test]
    fn instance_names_must_be_label_values() {
        for good in ["portcullis", "ha-gate", "a", "r1.prod_x"] {
            assert!(Instance::new(good, true).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "ä", &"x".repeat(64)] {
            let err = Instance::new(bad, true).unwrap_err();
            assert!(err.contains("instance name"), "{err}");
        }
    }
}
