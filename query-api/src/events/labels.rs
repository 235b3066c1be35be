//! Prefect's resource specifications (`{"label": "pattern" | ["pattern", ...]}`) and their two
//! evaluations: as a ClickHouse condition for searches, and in memory for the live feed. Both
//! follow Prefect's SQL semantics (prefect/server/events/filters.py):
//!
//! - a pattern is a glob: `*` is any run of characters, `?` any one character, everything else
//!   literal (case-sensitive); a leading `!` negates it;
//! - the patterns of one label are alternatives (OR), different labels must all hold (AND);
//! - a label the resource does not have never matches, negated or not;
//! - an empty list matches nothing, except for `prefect.resource.id` (and, on related
//!   resources, `prefect.resource.role`), where an empty value means "no condition";
//! - in `related` and `any_resource` filters, `prefect.resource.role` is compared exactly with
//!   the resource's role (no glob, no `!`; the primary resource's role is `""`); in `resource`
//!   filters it is an ordinary label, which the primary resource does not have.
//!
//! [`sql_conditions`] and [`matches`] take `roles: true` for the first case.

use std::collections::BTreeMap;

use flowhouse_schema::event::{RESOURCE_ID, RESOURCE_ROLE};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Sql;

/// A label's expected value or values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LabelValues {
    One(String),
    Many(Vec<String>),
}

impl LabelValues {
    pub fn list(&self) -> Vec<&str> {
        match self {
            LabelValues::One(v) => vec![v.as_str()],
            LabelValues::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }

    /// Python's falsiness: `""` or `[]`.
    fn is_falsy(&self) -> bool {
        match self {
            LabelValues::One(v) => v.is_empty(),
            LabelValues::Many(vs) => vs.is_empty(),
        }
    }
}

/// Prefect's `ResourceSpecification`: label → expected value(s).
pub type ResourceSpecification = BTreeMap<String, LabelValues>;

/// Which resource a condition reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The event's own resource (`resource`, with the indexed `resource_id` column).
    Primary,
    /// `r`, a related resource inside an `arrayExists(r -> ..., related)` lambda.
    Related,
}

impl Which {
    pub fn map(self) -> &'static str {
        match self {
            Which::Primary => "resource",
            Which::Related => "r",
        }
    }

    pub fn id_expr(self) -> &'static str {
        match self {
            // The materialized column, which has a bloom filter index.
            Which::Primary => "resource_id",
            Which::Related => "r['prefect.resource.id']",
        }
    }

    pub fn role_expr(self) -> &'static str {
        match self {
            Which::Primary => "''",
            Which::Related => "r['prefect.resource.role']",
        }
    }
}

/// One pattern: a glob, maybe negated.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern<'a> {
    negated: bool,
    glob: &'a str,
}

impl<'a> Pattern<'a> {
    fn parse(text: &'a str) -> Self {
        match text.strip_prefix('!') {
            Some(glob) => Self {
                negated: true,
                glob,
            },
            None => Self {
                negated: false,
                glob: text,
            },
        }
    }

    fn has_wildcards(&self) -> bool {
        self.glob.contains(['*', '?'])
    }

    /// ClickHouse's `LIKE` pattern of the glob: `%`, `_` and `\` escaped, `*` → `%`, `?` → `_`.
    fn like(&self) -> String {
        let mut out = String::with_capacity(self.glob.len() + 4);
        for c in self.glob.chars() {
            match c {
                '\\' | '%' | '_' => {
                    out.push('\\');
                    out.push(c);
                }
                '*' => out.push('%'),
                '?' => out.push('_'),
                other => out.push(other),
            }
        }
        out
    }

    fn matches(&self, value: &str) -> bool {
        glob_matches(self.glob, value) != self.negated
    }
}

/// Whether `value` matches `glob` (`*` any run, `?` any one character, the rest literal).
pub fn glob_matches(glob: &str, value: &str) -> bool {
    let pattern: Vec<char> = glob.chars().collect();
    let text: Vec<char> = value.chars().collect();
    // Iterative wildcard matching with one backtrack point (the last `*`).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// One condition per label of `spec` on the resource `which`, every value bound; `roles`:
/// whether `prefect.resource.role` is the resource's role (see the module's notes).
pub fn sql_conditions(
    sql: &mut Sql,
    which: Which,
    spec: &ResourceSpecification,
    roles: bool,
) -> Vec<String> {
    let mut conditions = Vec::new();
    for (label, values) in spec {
        let is_id = label == RESOURCE_ID;
        let is_role = label == RESOURCE_ROLE && roles;
        if (is_id || is_role) && values.is_falsy() {
            continue;
        }
        let patterns: Vec<Pattern<'_>> = values.list().into_iter().map(Pattern::parse).collect();
        if patterns.is_empty() {
            conditions.push("0".to_string());
            continue;
        }
        if is_role {
            let p = sql.bind_strings(&values.list());
            conditions.push(format!("has({p}, {})", which.role_expr()));
            continue;
        }
        let (value, exists) = if is_id {
            (which.id_expr().to_string(), None)
        } else if label == RESOURCE_ROLE {
            // An ordinary label here, which resources do not carry: Prefect finds nothing.
            conditions.push("0".to_string());
            continue;
        } else {
            let map = which.map();
            let k = sql.bind("String", label.as_str());
            (
                format!("{map}[{k}]"),
                Some(format!("mapContains({map}, {k})")),
            )
        };
        let exact: Vec<&str> = patterns
            .iter()
            .filter(|p| !p.negated && !p.has_wildcards())
            .map(|p| p.glob)
            .collect();
        let mut alternatives = Vec::new();
        if !exact.is_empty() {
            let p = sql.bind_strings(&exact);
            alternatives.push(format!("has({p}, {value})"));
        }
        for pattern in patterns.iter().filter(|p| p.negated || p.has_wildcards()) {
            let test = if pattern.has_wildcards() {
                let p = sql.bind("String", pattern.like());
                format!("like({value}, {p})")
            } else {
                let p = sql.bind("String", pattern.glob);
                format!("{value} = {p}")
            };
            alternatives.push(if pattern.negated {
                format!("NOT ({test})")
            } else {
                test
            });
        }
        let alternatives = format!("({})", alternatives.join(" OR "));
        conditions.push(match exists {
            Some(exists) => format!("({exists} AND {alternatives})"),
            None => alternatives,
        });
    }
    conditions
}

/// Whether `spec` constrains anything (some label is not skipped for an empty value), i.e.
/// whether [`sql_conditions`] returns any condition.
pub fn constrains(spec: &ResourceSpecification, roles: bool) -> bool {
    spec.iter().any(|(label, values)| {
        let skippable = label == RESOURCE_ID || (label == RESOURCE_ROLE && roles);
        !(skippable && values.is_falsy())
    })
}

/// A resource as the in-memory matcher sees it: its labels and its role (`""` for the
/// primary resource).
pub struct ResourceView<'a> {
    pub labels: &'a [(String, String)],
    pub role: &'a str,
}

impl ResourceView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> &str {
        self.label(RESOURCE_ID).unwrap_or_default()
    }
}

/// Whether `resource` satisfies every label of `spec`, as [`sql_conditions`] decides.
pub fn matches(resource: &ResourceView<'_>, spec: &ResourceSpecification, roles: bool) -> bool {
    spec.iter().all(|(label, values)| {
        let is_id = label == RESOURCE_ID;
        let is_role = label == RESOURCE_ROLE && roles;
        if (is_id || is_role) && values.is_falsy() {
            return true;
        }
        let list = values.list();
        if list.is_empty() {
            return false;
        }
        if is_role {
            return list.contains(&resource.role);
        }
        if label == RESOURCE_ROLE {
            return false;
        }
        let Some(value) = (if is_id {
            Some(resource.id())
        } else {
            resource.label(label)
        }) else {
            return false;
        };
        list.into_iter()
            .map(Pattern::parse)
            .any(|pattern| pattern.matches(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_prefects_like_translation() {
        assert!(glob_matches("prefect.flow-run.*", "prefect.flow-run.1"));
        assert!(glob_matches("*run*", "prefect.flow-run.1"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("a*b*c", "aXbYbZ"));
        assert!(glob_matches("100%_done", "100%_done"));
        assert!(!glob_matches("100%_done", "100ab_done"));
        assert!(glob_matches("[x]", "[x]"));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "x"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a*", "*b"));
        assert!(glob_matches("*b", "*b"));
    }

    #[test]
    fn like_patterns_escape_what_like_would_read() {
        let like = |g| Pattern::parse(g).like();
        assert_eq!(like("a*b?c"), "a%b_c");
        assert_eq!(like("100%_\\"), "100\\%\\_\\\\");
        assert_eq!(like("!neg*"), "neg%");
    }

    fn spec(pairs: &[(&str, LabelValues)]) -> ResourceSpecification {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn many(values: &[&str]) -> LabelValues {
        LabelValues::Many(values.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn in_memory_semantics() {
        let labels = vec![
            (
                "prefect.resource.id".to_string(),
                "prefect.flow-run.1".to_string(),
            ),
            ("prefect.resource.role".to_string(), "flow-run".to_string()),
            ("env".to_string(), "prod".to_string()),
        ];
        let related = ResourceView {
            labels: &labels,
            role: "flow-run",
        };
        let primary = ResourceView {
            labels: &labels,
            role: "",
        };
        let matches_related = |spec: &ResourceSpecification| matches(&related, spec, true);
        let one = |v: &str| LabelValues::One(v.into());
        assert!(matches_related(&spec(&[("env", one("prod"))])));
        assert!(matches_related(&spec(&[(
            "env",
            many(&["staging", "pr*"])
        )])));
        assert!(!matches_related(&spec(&[("env", one("!prod"))])));
        // Negated alternatives are OR'ed, as in Prefect.
        assert!(matches_related(&spec(&[("env", many(&["!prod", "!dev"]))])));
        // A missing label never matches, even negated.
        assert!(!matches_related(&spec(&[("team", one("!x"))])));
        assert!(!matches_related(&spec(&[("env", many(&[]))])));
        assert!(matches_related(&spec(&[(
            "prefect.resource.id",
            many(&[])
        )])));
        assert!(matches_related(&spec(&[(
            "prefect.resource.role",
            one("flow-run")
        )])));
        // Roles are exact on related resources; the primary resource has none.
        assert!(!matches_related(&spec(&[(
            "prefect.resource.role",
            one("flow-*")
        )])));
        assert!(!matches(
            &primary,
            &spec(&[("prefect.resource.role", one("flow-run"))]),
            false
        ));
        assert!(matches(
            &primary,
            &spec(&[("prefect.resource.role", one(""))]),
            true
        ));
        assert!(matches(
            &primary,
            &spec(&[
                ("prefect.resource.id", one("prefect.flow-run.*")),
                ("env", one("prod"))
            ]),
            false
        ));
    }
}
