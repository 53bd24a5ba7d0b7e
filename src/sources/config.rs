//! The standalone config file: multi-document YAML of ProtectedRoutes and ClientIdentities,
//! checked completely before anything uses it.
//!
//! ```text
//!  file ──split──▶ documents ──▶ header (apiVersion, kind, metadata.name)
//!                                ├─ unknown fields (against the CRD schema)
//!                                ├─ typed parse (serde)  ──▶ validate::*_problems
//!                                └─ standalone rules (url, files it names)
//!       cross-document: duplicate names, a host claimed by two routes
//! ```
//! Every problem is collected with its document and line; one bad field never hides another.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

mod checks;
mod report;

use checks::{duplicate, header_problems};
pub use report::{ConfigErrors, ConfigProblem, Location};

use super::external::{self, OwnCert};
use super::name_of;
use super::yaml::{Chunk, serde_message, split_documents, unknown_fields};
use crate::resources::validate::{self, Problem};
use crate::resources::{ClientIdentity, ProtectedRoute};

/// The only apiVersion a document may have.
pub const API_VERSION: &str = "portcullis.dev/v1alpha1";

/// A valid standalone configuration, with the files it names already read.
#[derive(Clone)]
pub struct Config {
    /// The config file.
    pub path: PathBuf,
    pub routes: Vec<ProtectedRoute>,
    pub identities: Vec<ClientIdentity>,
    /// `.p12` passwords read from `passwordSecretRef` files, by identity name.
    pub passwords: BTreeMap<String, String>,
    /// Certificates brought with `serverCertificate.secretName` or `files`, by route name.
    pub own_certs: BTreeMap<String, OwnCert>,
    /// Every file whose change must reload the configuration (the file itself included).
    pub watched: Vec<PathBuf>,
}

// Written out so that `{:?}` never prints a password.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("routes", &self.routes)
            .field("identities", &self.identities)
            .field("passwords", &self.passwords.keys().collect::<Vec<_>>())
            .field("own_certs", &self.own_certs)
            .field("watched", &self.watched)
            .finish()
    }
}

/// Reads and checks a config file. Relative paths in it (password files, certificate
/// directories and files) are relative to the file's directory.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_config(path, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigProblem {
            file: path.to_owned(),
            location: None,
            problem: Problem::new("", format!("cannot read it: {e}")),
        }])),
    }
}

/// Checks config `text` as if read from `path`.
pub fn parse_config(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut p = Parser {
        file: path.to_owned(),
        ..Parser::default()
    };
    for chunk in split_documents(text) {
        p.document(&chunk);
    }
    p.cross_checks();
    if p.routes.is_empty() && p.problems.is_empty() {
        p.problems.push(ConfigProblem {
            file: path.to_owned(),
            location: None,
            problem: Problem::new(
                "",
                "defines no ProtectedRoute; add one (see examples/standalone.yaml)",
            ),
        });
    }
    if !p.problems.is_empty() {
        return Err(ConfigErrors(p.problems));
    }
    Ok(p.into_config())
}

/// A parsed resource and where it came from.
struct Placed<T> {
    at: Location,
    chunk: Chunk,
    value: T,
}

#[derive(Default)]
struct Parser {
    file: PathBuf,
    documents: usize,
    problems: Vec<ConfigProblem>,
    routes: Vec<Placed<ProtectedRoute>>,
    identities: Vec<Placed<ClientIdentity>>,
    passwords: BTreeMap<String, String>,
    own_certs: BTreeMap<String, OwnCert>,
    watched: Vec<PathBuf>,
}

impl Parser {
    fn push(&mut self, at: &Location, problem: Problem) {
        let location = Some(at.clone());
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            location,
            problem,
        });
    }

    fn push_at(&mut self, chunk: &Chunk, at: &Location, problem: Problem) {
        let line = chunk.field_line(&problem.field);
        self.push(&Location { line, ..at.clone() }, problem);
    }

    fn document(&mut self, chunk: &Chunk) {
        let value: Value = match serde_yaml::from_str(&chunk.text) {
            Ok(v) => v,
            Err(e) => {
                self.documents += 1;
                let (problem, line) = serde_message(&e);
                let line = line.map_or(chunk.first_content_line(), |l| chunk.offset + l - 1);
                let at = Location {
                    document: self.documents,
                    resource: None,
                    line,
                };
                return self.push(&at, problem);
            }
        };
        if value.is_null() {
            return;
        }
        self.documents += 1;
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        let resource = (!kind.is_empty()).then(|| format!("{kind}/{}", name.unwrap_or("?")));
        let at = Location {
            document: self.documents,
            resource,
            line: chunk.first_content_line(),
        };
        // Problems so far: the document is accepted only if it adds none.
        let before = self.problems.len();
        for problem in header_problems(&value, &kind, name) {
            self.push_at(chunk, &at, problem);
        }
        match kind.as_str() {
            "ProtectedRoute" => {
                if let Some(route) = self.typed::<ProtectedRoute>(chunk, &at, &value) {
                    self.route(chunk, &at, &route);
                    if self.problems.len() == before {
                        self.routes.push(Placed {
                            at,
                            chunk: chunk.clone(),
                            value: route,
                        });
                    }
                }
            }
            "ClientIdentity" => {
                if let Some(identity) = self.typed::<ClientIdentity>(chunk, &at, &value) {
                    self.identity(chunk, &at, &identity);
                    if self.problems.len() == before {
                        self.identities.push(Placed {
                            at,
                            chunk: chunk.clone(),
                            value: identity,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// The document as `T`, or `None` after recording why not.
    fn typed<T>(&mut self, chunk: &Chunk, at: &Location, value: &Value) -> Option<T>
    where
        T: DeserializeOwned + CustomResourceExt,
    {
        let crd = T::crd();
        let schema = crd
            .spec
            .versions
            .first()?
            .schema
            .as_ref()?
            .open_api_v3_schema
            .as_ref()?;
        for problem in unknown_fields(value, schema) {
            self.push_at(chunk, at, problem);
        }
        match serde_yaml::from_str::<T>(&chunk.text) {
            Ok(t) => Some(t),
            Err(e) => {
                let (problem, line) = serde_message(&e);
                let line = line.map_or(at.line, |l| chunk.offset + l - 1);
                self.push(&Location { line, ..at.clone() }, problem);
                None
            }
        }
    }

    fn route(&mut self, chunk: &Chunk, at: &Location, route: &ProtectedRoute) {
        let mut problems = validate::route_problems(&route.spec);
        let name = name_of(&route.metadata).to_owned();
        if route.spec.upstream.service.is_some() {
            problems.push(Problem::new(
                "spec.upstream.service",
                "needs Kubernetes; in standalone mode write `url: http://HOST:PORT` instead",
            ));
        }
        let sc = &route.spec.server_certificate;
        let own = match (&sc.secret_name, &sc.files) {
            (Some(dir), None) => {
                let dir = self.relative(dir);
                Some(("secretName", dir.join("tls.crt"), dir.join("tls.key")))
            }
            // Blank paths are already a problem of their own.
            (None, Some(files))
                if !files.certificate.trim().is_empty() && !files.key.trim().is_empty() =>
            {
                Some((
                    "files",
                    self.relative(&files.certificate),
                    self.relative(&files.key),
                ))
            }
            _ => None,
        };
        if let Some((field, certificate, key)) = own {
            self.watched.extend([certificate.clone(), key.clone()]);
            match external::cert_files(&certificate, &key, &route.spec.hosts) {
                Ok(cert) => {
                    self.own_certs.insert(name, cert);
                }
                Err(message) => {
                    let field = format!("spec.serverCertificate.{field}");
                    problems.push(Problem::new(field, message));
                }
            }
        }
        if let Some(file) = sc.acme.as_ref().and_then(|a| a.ca_file.as_deref())
            && !file.trim().is_empty()
        {
            // Read now, so `portcullis check` finds a wrong path before the first order.
            if let Err(message) = crate::pki::ca_file_certs(&self.relative(file)) {
                problems.push(Problem::new("spec.serverCertificate.acme.caFile", message));
            }
        }
        self.push_all(chunk, at, problems);
    }

    fn identity(&mut self, chunk: &Chunk, at: &Location, identity: &ClientIdentity) {
        let mut problems = validate::identity_problems(&identity.spec);
        let name = name_of(&identity.metadata).to_owned();
        if let Some(r) = &identity.spec.pkcs12.password_secret_ref {
            let file = self.relative(&r.name);
            self.watched.push(file.clone());
            match external::password(&file) {
                Ok(password) => {
                    self.passwords.insert(name, password);
                }
                Err(message) => {
                    problems.push(Problem::new("spec.pkcs12.passwordSecretRef.name", message));
                }
            }
        }
        self.push_all(chunk, at, problems);
    }

    fn push_all(&mut self, chunk: &Chunk, at: &Location, problems: Vec<Problem>) {
        for problem in problems {
            self.push_at(chunk, at, problem);
        }
    }

    /// `path` relative to the config file's directory.
    fn relative(&self, path: &str) -> PathBuf {
        let base = self.file.parent().unwrap_or(Path::new(""));
        base.join(path.trim())
    }

    fn cross_checks(&mut self) {
        let mut found = Vec::new();
        let mut names = HashMap::new();
        let mut hosts: HashMap<String, String> = HashMap::new();
        for r in &self.routes {
            let name = name_of(&r.value.metadata);
            if names.insert(name, ()).is_some() {
                found.push((
                    r.chunk.clone(),
                    r.at.clone(),
                    duplicate("ProtectedRoute", name),
                ));
            }
            for (i, host) in r.value.spec.hosts.iter().enumerate() {
                let key = host.to_ascii_lowercase();
                if let Some(other) = hosts.insert(key, name.to_owned()).filter(|o| o != name) {
                    let msg = format!(
                        "{host} is already served by route {other}; give each host one route"
                    );
                    found.push((
                        r.chunk.clone(),
                        r.at.clone(),
                        Problem::new(format!("spec.hosts[{i}]"), msg),
                    ));
                }
            }
        }
        let mut names = HashMap::new();
        for c in &self.identities {
            let name = name_of(&c.value.metadata);
            if names.insert(name, ()).is_some() {
                found.push((
                    c.chunk.clone(),
                    c.at.clone(),
                    duplicate("ClientIdentity", name),
                ));
            }
        }
        for (chunk, at, problem) in found {
            self.push_at(&chunk, &at, problem);
        }
    }

    fn into_config(self) -> Config {
        let mut watched = vec![self.file.clone()];
        watched.extend(self.watched);
        Config {
            path: self.file,
            routes: self.routes.into_iter().map(|r| r.value).collect(),
            identities: self.identities.into_iter().map(|c| c.value).collect(),
            passwords: self.passwords,
            own_certs: self.own_certs,
            watched,
        }
    }
}

#[cfg(test)]
mod tests;
