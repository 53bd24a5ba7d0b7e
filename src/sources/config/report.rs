//! How config problems are reported: `FILE: document N (Kind/name), line L: field: message`.

use std::fmt;
use std::path::PathBuf;

use crate::resources::validate::Problem;

/// Where in the file a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based, counting documents that are not empty.
    pub document: usize,
    /// `Kind/name`, when the document got that far.
    pub resource: Option<String>,
    /// 1-based file line.
    pub line: usize,
}

/// One problem of a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// `None` for problems of the whole file (unreadable, no routes).
    pub location: Option<Location>,
    pub problem: Problem,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(loc) = &self.location {
            write!(f, "document {}", loc.document)?;
            if let Some(resource) = &loc.resource {
                write!(f, " ({resource})")?;
            }
            write!(f, ", line {}: ", loc.line)?;
        }
        if !self.problem.field.is_empty() {
            write!(f, "{}: ", self.problem.field)?;
        }
        f.write_str(&self.problem.message)
    }
}

/// Every problem found in a config file, one per line when displayed.
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigErrors> for crate::Error {
    fn from(e: ConfigErrors) -> Self {
        crate::Error::Config(e.to_string())
    }
}
