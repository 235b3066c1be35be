//! What a rejected message looks like, for every kind of input Flowhouse takes.
//!
//! Parsing is two-speed: the typed fast path (serde into borrowed structs) handles valid input; only
//! when it fails does [`describe_shape`] walk the JSON as a `Value` to name *every* field that is
//! wrong, so that error messages say `related[2]["prefect.resource.role"]: is required` rather than
//! serde's first complaint with a line and column.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// One thing wrong with one field. `field` is a path such as `resource["prefect.resource.id"]`
/// or `related[1]`; empty when the problem is the document as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON at all (or truncated).
    NotJson(String),
    /// Over the size limit; not parsed.
    TooLarge { bytes: usize, limit: usize },
    /// JSON, but not a valid event or log: every problem found.
    Invalid(Vec<Problem>),
}

impl Rejection {
    /// Its kind, as the dead-letter `kind` header and metrics name it.
    pub fn kind(&self) -> DeadLetterKind {
        match self {
            Rejection::NotJson(_) => DeadLetterKind::NotJson,
            Rejection::TooLarge { .. } => DeadLetterKind::TooLarge,
            Rejection::Invalid(_) => DeadLetterKind::Invalid,
        }
    }
}

/// Why a message went to the dead-letter topic: the `flowhouse.dlq.kind` header's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// The value is not JSON (or is truncated).
    NotJson,
    /// The value is over the size limit.
    TooLarge,
    /// JSON, but not a valid event or log line.
    Invalid,
    /// The tenant headers are missing or malformed.
    BadHeaders,
    /// The message has no value at all.
    NoValue,
}

impl DeadLetterKind {
    pub const ALL: [DeadLetterKind; 5] = [
        DeadLetterKind::NotJson,
        DeadLetterKind::TooLarge,
        DeadLetterKind::Invalid,
        DeadLetterKind::BadHeaders,
        DeadLetterKind::NoValue,
    ];

    /// The short, stable name in headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::NotJson => "not_json",
            DeadLetterKind::TooLarge => "too_large",
            DeadLetterKind::Invalid => "invalid",
            DeadLetterKind::BadHeaders => "bad_headers",
            DeadLetterKind::NoValue => "no_value",
        }
    }
}

impl fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotJson(error) => write!(f, "not valid JSON: {error}"),
            Rejection::TooLarge { bytes, limit } => {
                write!(f, "{bytes} bytes is over the limit of {limit} bytes")
            }
            Rejection::Invalid(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// The JSON type of each field a document must have.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    Uuid,
    OptionalUuid,
    Timestamp,
    String,
    Integer,
    Labels,
    LabelsList,
    Object,
}

/// Classifies a failed typed parse: syntax errors are [`Rejection::NotJson`]; anything else is
/// described field by field against `fields` (name, shape, required).
pub(crate) fn describe_failure(
    raw: &[u8],
    error: &serde_json::Error,
    what: &str,
    fields: &[(&str, Shape, bool)],
) -> Rejection {
    if error.is_syntax() || error.is_eof() {
        return Rejection::NotJson(error.to_string());
    }
    let value: Value = match serde_json::from_slice(raw) {
        Ok(value) => value,
        Err(error) => return Rejection::NotJson(error.to_string()),
    };
    let mut problems = describe_shape(&value, what, fields);
    if problems.is_empty() {
        // The walk below and serde disagree; serde's words are still better than nothing.
        problems.push(Problem::new("", error.to_string()));
    }
    Rejection::Invalid(problems)
}

pub(crate) fn describe_shape(
    value: &Value,
    what: &str,
    fields: &[(&str, Shape, bool)],
) -> Vec<Problem> {
    let Some(object) = value.as_object() else {
        return vec![Problem::new("", format!("{what} must be a JSON object"))];
    };
    let mut problems = Vec::new();
    for &(name, shape, required) in fields {
        match object.get(name) {
            None if required => problems.push(Problem::new(name, "is required")),
            None => {}
            Some(value) => check_shape(name, value, shape, &mut problems),
        }
    }
    problems
}

fn check_shape(field: &str, value: &Value, shape: Shape, problems: &mut Vec<Problem>) {
    let is_uuid = |v: &Value| v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok());
    let is_timestamp = |v: &Value| {
        v.as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
    };
    let mut wrong = |message: &str| problems.push(Problem::new(field, message));
    match shape {
        Shape::Uuid => {
            if !is_uuid(value) {
                wrong("must be a UUID string");
            }
        }
        Shape::OptionalUuid => {
            if !value.is_null() && !is_uuid(value) {
                wrong("must be a UUID string or null");
            }
        }
        Shape::Timestamp => {
            if !is_timestamp(value) {
                wrong(
                    "must be an RFC 3339 timestamp with a time zone, like 2024-05-01T12:00:00.000000Z",
                );
            }
        }
        Shape::String => {
            if !value.is_string() {
                wrong("must be a string");
            }
        }
        Shape::Integer => {
            if !value.is_i64() {
                wrong("must be an integer");
            }
        }
        Shape::Object => {
            if !value.is_object() {
                wrong("must be a JSON object");
            }
        }
        Shape::Labels => check_labels(field, value, problems),
        Shape::LabelsList => match value.as_array() {
            None => wrong("must be a list of resources (objects of string labels)"),
            Some(list) => {
                for (i, item) in list.iter().enumerate() {
                    check_labels(&format!("{field}[{i}]"), item, problems);
                }
            }
        },
    }
}

fn check_labels(field: &str, value: &Value, problems: &mut Vec<Problem>) {
    match value.as_object() {
        None => problems.push(Problem::new(field, "must be an object of string labels")),
        Some(labels) => {
            for (key, value) in labels {
                if !value.is_string() {
                    problems.push(Problem::new(
                        format!("{field}[{key:?}]"),
                        "label values must be strings",
                    ));
                }
            }
        }
    }
}
