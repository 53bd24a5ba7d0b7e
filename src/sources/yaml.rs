//! YAML helpers for the standalone config: documents with their line numbers, the line of a
//! field, and fields the schema does not know.
//!
//! Each document is parsed on its own (not through serde_yaml's multi-document stream) so
//! that a syntax error in one document does not hide the problems of the next ones.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};
use serde_yaml::Value;

use crate::resources::validate::Problem;

/// One `---`-separated chunk of the file.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// File line (1-based) of the chunk's first line.
    pub offset: usize,
    /// The chunk's text, separator line included, so its line 1 is file line `offset`.
    pub text: String,
}

impl Chunk {
    /// The file line of the first line with content (not blank, comment or separator).
    pub fn first_content_line(&self) -> usize {
        let skip = |l: &str| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || is_separator(l)
        };
        let n = self.text.lines().position(|l| !skip(l)).unwrap_or(0);
        self.offset + n
    }

    /// The file line of `field` (`spec.hosts[1]`), best effort: the deepest key found.
    pub fn field_line(&self, field: &str) -> usize {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut cursor = 0;
        let mut found = self.first_content_line() - self.offset;
        // Only lines indented deeper than the parent key belong to it.
        let mut parent_indent: Option<usize> = None;
        for segment in field.split('.') {
            let (key, index) = split_index(segment);
            let Some(at) = find_key(&lines, cursor, parent_indent, key) else {
                break;
            };
            found = at;
            let indent = indentation(lines[at]);
            cursor = at + 1;
            parent_indent = Some(indent);
            if let Some(i) = index {
                match find_item(&lines, cursor, indent, i) {
                    Some(item) => {
                        found = item;
                        cursor = item;
                        parent_indent = Some(indentation(lines[item]));
                    }
                    None => break,
                }
            }
        }
        self.offset + found
    }
}

/// Splits a file into `---`-separated chunks (empty ones included; callers skip documents
/// that parse to null).
pub(crate) fn split_documents(text: &str) -> Vec<Chunk> {
    let mut chunks = vec![Chunk {
        offset: 1,
        text: String::new(),
    }];
    for (n, line) in text.lines().enumerate() {
        if is_separator(line) {
            chunks.push(Chunk {
                offset: n + 1,
                text: String::new(),
            });
        }
        if let Some(last) = chunks.last_mut() {
            last.text.push_str(line);
            last.text.push('\n');
        }
    }
    chunks
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((key, rest)) => (key, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text after any `- ` sequence markers and indentation.
fn content(line: &str) -> &str {
    let mut t = line.trim_start();
    while let Some(rest) = t.strip_prefix("- ") {
        t = rest.trim_start();
    }
    t
}

fn find_key(lines: &[&str], from: usize, parent: Option<usize>, key: &str) -> Option<usize> {
    for (i, line) in lines.iter().enumerate().skip(from) {
        let t = content(line);
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // The sequence item a search starts on is its own parent line; any other line at
        // or left of the parent's indentation ends the parent's block.
        let starts_item = i == from && line.trim_start().starts_with('-');
        if !starts_item && parent.is_some_and(|p| indentation(line) <= p) {
            return None;
        }
        let key_at = t.strip_prefix(key).is_some_and(|r| r.starts_with(':'));
        let quoted = t
            .strip_prefix(&format!("\"{key}\""))
            .is_some_and(|r| r.starts_with(':'));
        if key_at || quoted {
            return Some(i);
        }
    }
    None
}

/// The `index`-th block sequence item under a key indented `indent`.
fn find_item(lines: &[&str], from: usize, indent: usize, index: usize) -> Option<usize> {
    let mut seen = 0;
    let mut item_indent = None;
    for (i, line) in lines.iter().enumerate().skip(from) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = indentation(line);
        let is_item = t == "-" || t.starts_with("- ");
        if ind < indent || (ind == indent && !is_item) {
            return None;
        }
        if is_item && *item_indent.get_or_insert(ind) == ind {
            if seen == index {
                return Some(i);
            }
            seen += 1;
        }
    }
    None
}

/// serde_yaml's error as a problem (its `path: ` prefix as the field, without the trailing
/// ` at line L column C`), and that line relative to the parsed text.
pub(crate) fn serde_message(err: &serde_yaml::Error) -> (Problem, Option<usize>) {
    let line = err.location().map(|l| l.line());
    let message = strip_marks(&err.to_string());
    let problem = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && !path.is_empty() => Problem::new(path, rest),
        _ => Problem::new("", message),
    };
    (problem, line)
}

/// Removes every ` at line L column C`: they count from the document, not the file.
fn strip_marks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" at line ") {
        let tail = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = digits(tail);
        let mark_len = match tail[n..].strip_prefix(" column ") {
            Some(col) if n > 0 && digits(col) > 0 => {
                " at line ".len() + n + " column ".len() + digits(col)
            }
            _ => " at line ".len(),
        };
        let is_mark = mark_len > " at line ".len();
        out.push_str(&rest[..at]);
        if !is_mark {
            out.push_str(" at line ");
        }
        rest = &rest[at + mark_len..];
    }
    out.push_str(rest);
    out
}

/// Every mapping key of `value` that `schema` does not define, as problems naming the
/// closest known field. A typo must not be silently ignored: `revoke: true` would leave a
/// device admitted while its owner believes it locked out.
/// `value` is a whole document: its `apiVersion`, `kind` and `metadata` are checked elsewhere.
pub(crate) fn unknown_fields(value: &Value, schema: &JSONSchemaProps) -> Vec<Problem> {
    let mut root = schema.clone();
    let props = root.properties.get_or_insert_with(Default::default);
    for key in ["apiVersion", "kind", "metadata"] {
        props.entry(key.to_owned()).or_default();
    }
    let mut out = Vec::new();
    walk(value, &root, "", &mut out);
    out
}

fn walk(value: &Value, schema: &JSONSchemaProps, path: &str, out: &mut Vec<Problem>) {
    match value {
        Value::Mapping(map) => {
            let Some(props) = &schema.properties else {
                return;
            };
            for (key, child) in map {
                let Some(key) = key.as_str() else { continue };
                let field = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                match props.get(key) {
                    Some(s) => walk(child, s, &field, out),
                    None => out.push(unknown(&field, key, props.keys())),
                }
            }
        }
        Value::Sequence(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(s)) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    walk(item, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn unknown<'a>(field: &str, key: &str, known: impl Iterator<Item = &'a String>) -> Problem {
    let known: Vec<&String> = known.collect();
    let closest = known
        .iter()
        .map(|k| {
            (
                distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()),
                k,
            )
        })
        .min()
        .filter(|(d, _)| *d <= 3);
    let hint = match closest {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => {
            let names: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
            format!("known fields here: {}", names.join(", "))
        }
    };
    Problem::new(field, format!("unknown field `{key}`; {hint}"))
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# comment\n---\nkind: A\nspec:\n  hosts:\n    - a\n    - b\n  upstream:\n    url: x\n---\n\n---\nkind: B\n";

    #[test]
    fn chunks_keep_file_lines() {
        let chunks = split_documents(TEXT);
        assert_eq!(
            chunks.iter().map(|c| c.offset).collect::<Vec<_>>(),
            vec![1, 2, 10, 12]
        );
        assert_eq!(chunks[1].first_content_line(), 3);
        assert_eq!(chunks[3].first_content_line(), 13);
    }

    #[test]
    fn field_lines_follow_nesting_and_indices() {
        let doc = &split_documents(TEXT)[1];
        assert_eq!(doc.field_line("spec.upstream.url"), 9);
        assert_eq!(doc.field_line("spec.hosts[1]"), 7);
        assert_eq!(doc.field_line("spec.hosts"), 5);
        // Unknown: the deepest key found.
        assert_eq!(doc.field_line("spec.nothing"), 4);
        assert_eq!(doc.field_line("nothing"), 3);
    }

    #[test]
    fn marks_are_stripped() {
        let text = "did not find ']' at line 3 column 1, while parsing at line 2 column 7";
        assert_eq!(strip_marks(text), "did not find ']', while parsing");
        assert_eq!(strip_marks("x at line y"), "x at line y");
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("revoke", "revoked"), 1);
        assert_eq!(distance("renewbefore", "renewbefore"), 0);
        assert_eq!(distance("", "abc"), 3);
    }
}
