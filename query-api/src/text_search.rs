//! Prefect's text search (`EventFilter.text`, `LogFilter.text`): a port of
//! `prefect/server/utilities/text_search_parser.py`, and its two evaluations, in ClickHouse and
//! in memory (for live events), which agree with each other.
//!
//! Syntax: whitespace-separated terms; `"quoted phrases"` (`\"` and `\\` escapes); a `-` or `!`
//! prefix excludes a term, `+` requires it. A document matches when it contains at least one
//! plain term (if there are any), every required term and no excluded term; all comparisons
//! are case-insensitive substring matches.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Sql;
use crate::error::ApiError;

/// Prefect's limit on a query's length.
pub const MAX_QUERY_CHARS: usize = 200;

/// `{"query": "..."}` as Prefect's filters carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextFilter {
    /// At most 200 characters.
    #[schema(max_length = 200)]
    pub query: String,
}

/// A parsed query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextQuery {
    /// At least one must occur (when there are any).
    pub include: Vec<String>,
    /// None may occur.
    pub exclude: Vec<String>,
    /// All must occur.
    pub required: Vec<String>,
}

impl TextFilter {
    /// The parsed query; `field` names the filter in the error of an over-long query.
    pub fn parse(&self, field: &str) -> Result<TextQuery, ApiError> {
        let chars = self.query.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(ApiError::unprocessable(format!(
                "{field}.query: at most {MAX_QUERY_CHARS} characters ({chars} given)"
            )));
        }
        Ok(TextQuery::parse(&self.query))
    }
}

impl TextQuery {
    pub fn parse(query: &str) -> Self {
        let chars: Vec<char> = query.chars().collect();
        let mut result = TextQuery::default();
        let mut i = 0;
        while i < chars.len() {
            if chars[i].is_whitespace() {
                i += 1;
                continue;
            }
            let mut prefix = None;
            if matches!(chars[i], '-' | '!' | '+') {
                // A prefix counts only when a term follows it directly.
                if i + 1 < chars.len() && !chars[i + 1].is_whitespace() {
                    prefix = Some(chars[i]);
                    i += 1;
                } else {
                    i += 1;
                    continue;
                }
            }
            let term = if chars[i] == '"' {
                i += 1;
                let start = i;
                while i < chars.len() {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 2;
                    } else if chars[i] == '"' {
                        break;
                    } else {
                        i += 1;
                    }
                }
                let phrase = unescape(&chars[start..i.min(chars.len())]);
                if i < chars.len() {
                    i += 1;
                }
                if phrase.trim().is_empty() {
                    continue;
                }
                phrase
            } else {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
                    i += 1;
                }
                chars[start..i].iter().collect()
            };
            if term.is_empty() {
                continue;
            }
            match prefix {
                Some('-' | '!') => result.exclude.push(term),
                Some(_) => result.required.push(term),
                None => result.include.push(term),
            }
        }
        result
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.required.is_empty()
    }

    /// The condition on `haystack` (a SQL expression), every term bound; `None` when the query
    /// has no terms.
    pub fn sql(&self, sql: &mut Sql, haystack: &str) -> Option<String> {
        let parts = self.sql_parts(sql, haystack);
        (!parts.is_empty()).then(|| format!("({})", parts.join(" AND ")))
    }

    /// The query as Prefect's separate clauses: one for the plain terms (any), one for the
    /// excluded (none), one for the required (all); each present only if it has terms. A log
    /// filter with `operator: or_` combines them with its other criteria one by one.
    pub fn sql_parts(&self, sql: &mut Sql, haystack: &str) -> Vec<String> {
        let found = |sql: &mut Sql, term: &str| {
            let p = sql.bind("String", term);
            format!("positionCaseInsensitiveUTF8({haystack}, {p}) > 0")
        };
        let mut parts = Vec::new();
        if !self.include.is_empty() {
            let any: Vec<String> = self.include.iter().map(|t| found(sql, t)).collect();
            parts.push(format!("({})", any.join(" OR ")));
        }
        if !self.exclude.is_empty() {
            let none: Vec<String> = self
                .exclude
                .iter()
                .map(|t| format!("NOT ({})", found(sql, t)))
                .collect();
            parts.push(format!("({})", none.join(" AND ")));
        }
        if !self.required.is_empty() {
            let all: Vec<String> = self.required.iter().map(|t| found(sql, t)).collect();
            parts.push(format!("({})", all.join(" AND ")));
        }
        parts
    }

    /// The same clauses as [`TextQuery::sql_parts`], evaluated on `haystack`.
    pub fn part_verdicts(&self, haystack: &str) -> Vec<bool> {
        let haystack = haystack.to_lowercase();
        let has = |term: &String| haystack.contains(&term.to_lowercase());
        let mut verdicts = Vec::new();
        if !self.include.is_empty() {
            verdicts.push(self.include.iter().any(has));
        }
        if !self.exclude.is_empty() {
            verdicts.push(!self.exclude.iter().any(has));
        }
        if !self.required.is_empty() {
            verdicts.push(self.required.iter().all(has));
        }
        verdicts
    }

    /// Whether `haystack` matches, in memory, as [`TextQuery::sql`] decides in ClickHouse.
    pub fn matches(&self, haystack: &str) -> bool {
        self.part_verdicts(haystack).into_iter().all(|v| v)
    }
}

/// `\"` is a quote and `\\` a backslash inside a phrase; any other backslash stays.
fn unescape(phrase: &[char]) -> String {
    let mut out = String::with_capacity(phrase.len());
    let mut i = 0;
    while i < phrase.len() {
        if phrase[i] == '\\' && i + 1 < phrase.len() && matches!(phrase[i + 1], '"' | '\\') {
            out.push(phrase[i + 1]);
            i += 2;
        } else {
            out.push(phrase[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query, include, exclude, required.
    type Answer = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    );

    /// Each case as Prefect 3.8.8's own parser answered it (run once with the pinned SDK).
    const PREFECT_ANSWERS: &[Answer] = &[
        ("error", &["error"], &[], &[]),
        ("error warning", &["error", "warning"], &[], &[]),
        ("-debug", &[], &["debug"], &[]),
        ("!debug", &[], &["debug"], &[]),
        ("+prod", &[], &[], &["prod"]),
        ("\"connection timeout\"", &["connection timeout"], &[], &[]),
        ("- foo", &["foo"], &[], &[]),
        ("+", &[], &[], &[]),
        ("--x", &[], &["-x"], &[]),
        ("a-b", &["a-b"], &[], &[]),
        ("foo\"bar baz\"", &["foo", "bar baz"], &[], &[]),
        ("\"unclosed phrase", &["unclosed phrase"], &[], &[]),
        (
            "\"a \\\"quoted\\\" word\"",
            &["a \"quoted\" word"],
            &[],
            &[],
        ),
        ("\"back\\\\slash\"", &["back\\slash"], &[], &[]),
        ("\"keep\\n\"", &["keep\\n"], &[], &[]),
        ("   ", &[], &[], &[]),
        (
            "!\"not this\" +\"must\" maybe",
            &["maybe"],
            &["not this"],
            &["must"],
        ),
        ("\"  \"", &[], &[], &[]),
        ("+-x", &[], &[], &["-x"]),
        ("x!y", &["x!y"], &[], &[]),
    ];

    #[test]
    fn parses_as_prefect_does() {
        for (query, include, exclude, required) in PREFECT_ANSWERS {
            let parsed = TextQuery::parse(query);
            assert_eq!(parsed.include, *include, "include of {query:?}");
            assert_eq!(parsed.exclude, *exclude, "exclude of {query:?}");
            assert_eq!(parsed.required, *required, "required of {query:?}");
        }
    }

    #[test]
    fn matching_is_any_include_no_exclude_all_required() {
        let q = TextQuery::parse("timeout crash -retry +prod");
        assert!(q.matches("PROD: Timeout after 30s"));
        assert!(!q.matches("prod: all good"));
        assert!(!q.matches("prod: timeout, will retry"));
        assert!(!q.matches("staging: timeout"));
        assert!(TextQuery::parse("").matches("anything"));
        assert!(TextQuery::parse("-x").matches("abc"));
    }

    #[test]
    fn long_queries_are_refused_with_the_limit() {
        let filter = TextFilter {
            query: "é".repeat(201),
        };
        let error = filter.parse("logs.text").unwrap_err().to_string();
        assert!(error.contains("logs.text.query: at most 200"), "{error}");
        assert!(
            TextFilter {
                query: "é".repeat(200)
            }
            .parse("t")
            .is_ok()
        );
    }
}
