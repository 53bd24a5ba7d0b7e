use std::path::Path;

use super::*;

const ROUTE: &str = "\
apiVersion: portcullis.dev/v1alpha1
kind: ProtectedRoute
metadata:
  name: ha
spec:
  hosts: [ha.example.org]
  upstream:
    url: http://127.0.0.1:8123
";

fn identity(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: ClientIdentity\nmetadata:\n  name: {name}\nspec:\n  keyAlgorithm: ECDSA-P256\n{extra}"
    )
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_config(Path::new("/etc/portcullis/standalone.yaml"), text)
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn good_file_with_comments_and_empty_documents() {
    let text = format!(
        "# top comment\n---\n{ROUTE}---\n# nothing here\n---\n{}",
        identity("alice", "")
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.identities.len(), 1);
    assert_eq!(
        config.watched,
        vec![Path::new("/etc/portcullis/standalone.yaml")]
    );
}

#[test]
fn semantic_problem_in_document_two_names_its_line() {
    // Lines: ROUTE is 8 lines, `---` is line 9, document 2 starts at line 10.
    let bad = identity("alice", "  validity: forever\n");
    let text = format!("{ROUTE}---\n{bad}---\n{}", identity("bob", ""));
    let found = problems(&text);
    assert_eq!(
        found,
        vec![
            "/etc/portcullis/standalone.yaml: document 2 (ClientIdentity/alice), line 16: \
             spec.validity: \"forever\" is not a duration; write whole numbers with a unit d, h, m or s, e.g. 30m, 1h, 365d or 1h30m"
        ]
    );
}

#[test]
fn type_error_uses_serde_line_offset_by_the_document_start() {
    let bad = identity("alice", "  revoked: maybe\n");
    let text = format!("{ROUTE}---\n{bad}");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "/etc/portcullis/standalone.yaml: document 2 (ClientIdentity/alice), line 16: spec.revoked: "
        ),
        "{found:?}"
    );
}

#[test]
fn syntax_error_does_not_hide_later_documents() {
    let text = format!("{ROUTE}---\nkind: [unclosed\n---\n{}", identity("Bob", ""));
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains(
            "document 2, line 11: did not find expected ',' or ']', while parsing a flow sequence"
        ),
        "{found:?}"
    );
    assert!(
        found[1].contains("document 3 (ClientIdentity/Bob), line 15: metadata.name"),
        "{found:?}"
    );
}

#[test]
fn every_problem_of_a_document_is_reported() {
    let text = "\
apiVersion: portcullis.dev/v1
kind: ProtectedRoute
metadata:
  name: ha
spec:
  hosts: []
  upstream:
    url: https://127.0.0.1:8123
  clientAuth:
    cookieFallback:
      name: portcullis
";
    let found = problems(text);
    let located: Vec<&str> = found
        .iter()
        .map(|p| p.split_once("), ").map_or("", |(_, rest)| rest))
        .collect();
    assert_eq!(located.len(), 4, "{found:?}");
    assert!(
        located[0].starts_with("line 1: apiVersion: write apiVersion: portcullis.dev/v1alpha1")
    );
    assert!(located[1].starts_with("line 6: spec.hosts: is empty"));
    assert!(located[2].starts_with("line 8: spec.upstream.url: https upstreams"));
    assert!(located[3].starts_with("line 11: spec.clientAuth.cookieFallback.name:"));
}

#[test]
fn unknown_fields_are_errors_with_a_suggestion() {
    let text = format!("{ROUTE}---\n{}", identity("alice", "  revoke: true\n"));
    let found = problems(&text);
    assert_eq!(
        found,
        vec![
            "/etc/portcullis/standalone.yaml: document 2 (ClientIdentity/alice), line 16: \
             spec.revoke: unknown field `revoke`; did you mean `revoked`?"
        ]
    );
}

#[test]
fn kind_and_names_are_checked() {
    let text = "apiVersion: portcullis.dev/v1alpha1\nkind: Route\nmetadata:\n  name: ../x\n";
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("line 2: kind: \"Route\" is not a Portcullis kind"),
        "{found:?}"
    );
    assert!(
        found[1].contains("line 4: metadata.name: \"../x\" is not usable"),
        "{found:?}"
    );
    let found = problems("- a\n- b\n");
    assert!(found[0].contains("must be a mapping"), "{found:?}");
}

#[test]
fn cross_document_problems() {
    let other = ROUTE.replace(
        "hosts: [ha.example.org]",
        "hosts: [other.example.org, HA.example.org]",
    );
    let other = other.replace("name: ha", "name: ha2");
    let text = format!(
        "{ROUTE}---\n{ROUTE}---\n{other}---\n{}---\n{}",
        identity("a", ""),
        identity("a", "")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].contains(
            "document 2 (ProtectedRoute/ha), line 13: metadata.name: another ProtectedRoute"
        ),
        "{found:?}"
    );
    assert!(found[1].contains("document 3 (ProtectedRoute/ha2), line 24: spec.hosts[1]: HA.example.org is already served by route ha;"), "{found:?}");
    assert!(
        found[2].contains(
            "document 5 (ClientIdentity/a), line 38: metadata.name: another ClientIdentity"
        ),
        "{found:?}"
    );
}

#[test]
fn standalone_rules() {
    let service = ROUTE.replace(
        "    url: http://127.0.0.1:8123",
        "    service: {name: ha, port: 8123}",
    );
    let found = problems(&service);
    assert!(
        found[0].contains(
            "line 8: spec.upstream.service: needs Kubernetes; in standalone mode write `url"
        ),
        "{found:?}"
    );
    assert!(
        problems("# only a comment\n")[0]
            .ends_with("defines no ProtectedRoute; add one (see examples/standalone.yaml)")
    );
}

#[test]
fn files_named_by_the_config_are_read_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw.txt"), "long-enough-password\n").unwrap();
    std::fs::write(dir.path().join("short.txt"), "short").unwrap();
    let pw = |file: &str| format!("  pkcs12:\n    passwordSecretRef:\n      name: {file}\n");
    let text = format!("{ROUTE}---\n{}", identity("alice", &pw("pw.txt")));
    let config = parse_config(&dir.path().join("c.yaml"), &text).unwrap();
    assert_eq!(config.passwords["alice"], "long-enough-password");
    assert!(config.watched.contains(&dir.path().join("pw.txt")));

    let text = format!("{ROUTE}---\n{}", identity("alice", &pw("short.txt")));
    let err = parse_config(&dir.path().join("c.yaml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 18: spec.pkcs12.passwordSecretRef.name: the password in"),
        "{err}"
    );

    let own = ROUTE.replace(
        "spec:\n",
        "spec:\n  serverCertificate:\n    secretName: certs\n",
    );
    let err = parse_config(&dir.path().join("c.yaml"), &own)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 7: spec.serverCertificate.secretName: cannot read"),
        "{err}"
    );
}

#[test]
fn certificate_files_are_read_relative_to_the_config_and_watched() {
    let dir = tempfile::tempdir().unwrap();
    let files = ROUTE.replace(
        "spec:\n",
        "spec:\n  serverCertificate:\n    files:\n      certificate: ssl/fullchain.pem\n      \
         key: ssl/privkey.pem\n",
    );
    let err = parse_config(&dir.path().join("c.yaml"), &files)
        .unwrap_err()
        .to_string();
    let missing = dir.path().join("ssl/fullchain.pem");
    assert!(
        err.contains(&format!(
            "line 7: spec.serverCertificate.files: cannot read {}",
            missing.display()
        )),
        "{err}"
    );

    let ca = crate::pki::Ca::generate("t").unwrap();
    let cert = ca
        .issue_server(
            &["ha.example.org".into()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::create_dir(dir.path().join("ssl")).unwrap();
    std::fs::write(&missing, &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("ssl/privkey.pem"), &cert.key_pem).unwrap();
    let config = parse_config(&dir.path().join("c.yaml"), &files).unwrap();
    assert_eq!(config.own_certs["ha"].certificate, missing);
    assert!(config.watched.contains(&missing));
    assert!(config.watched.contains(&dir.path().join("ssl/privkey.pem")));
}

#[test]
fn unreadable_file_is_one_problem() {
    let err = load_config(Path::new("/nonexistent/portcullis.yaml")).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/portcullis.yaml: cannot read it:"),
        "{err}"
    );
}

#[test]
fn strip_headers_and_the_underscore_opt_out_reach_the_route() {
    let text =
        format!("{ROUTE}  stripHeaders: [X-Home-User, X_Corp_*]\n  allowUnderscoreHeaders: true\n");
    let config = parse(&text).unwrap();
    let route = crate::sources::routes::resolve("ha", &config.routes[0].spec).unwrap();
    let strip: Vec<(&str, bool)> = route
        .headers
        .strip
        .iter()
        .map(|p| (p.name.as_str(), p.prefix))
        .collect();
    assert_eq!(strip, [("x-home-user", false), ("x-corp-", true)]);
    assert!(route.headers.allow_underscores);
    let defaults = crate::sources::routes::resolve("ha", &parse(ROUTE).unwrap().routes[0].spec)
        .unwrap()
        .headers;
    assert_eq!(defaults, Default::default());

    let found = problems(&format!("{ROUTE}  stripHeaders: [\"X Bad\"]\n"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.stripHeaders[0]") && found[0].contains("not a header name"),
        "{found:?}"
    );
}
