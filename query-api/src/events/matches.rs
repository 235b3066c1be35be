//! A resolved [`EventFilter`] evaluated in memory, on one event row: how the live feed decides
//! what a `/events/out` subscriber receives. It decides exactly as [`super::filter_sql`] does
//! in ClickHouse, so a subscriber's backfill and its live events follow the same rules
//! (Prefect's own live matching ignores `related` and searches other text; Flowhouse does not
//! differ between the two). `tests/tests/event_filters.rs` checks the twins agree.

use flowhouse_schema::event::{RESOURCE_ID, RESOURCE_ROLE};
use flowhouse_schema::rows::EventRow;

use super::filter::{EventFilter, OneOrMany};
use super::labels::{self, ResourceView};
use crate::window::micros;

/// The text [`crate::text_search`] looks in (the twin of `filter_sql`'s `SEARCHABLE_TEXT`).
pub fn searchable_text(row: &EventRow) -> String {
    fn labels(out: &mut Vec<String>, labels: &[(String, String)]) {
        let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push(joined.join(" "));
    }
    let mut parts = vec![row.event.clone()];
    labels(&mut parts, &row.resource);
    let related: Vec<String> = row
        .related
        .iter()
        .map(|r| {
            let mut one = Vec::new();
            labels(&mut one, r);
            one.concat()
        })
        .collect();
    parts.push(related.join(" "));
    parts.push(row.payload.clone());
    parts.join(" ")
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

fn any_of(list: &Option<Vec<String>>, test: impl Fn(&str) -> bool) -> bool {
    match list.as_ref().filter(|v| !v.is_empty()) {
        Some(values) => values.iter().any(|v| test(v)),
        None => true,
    }
}

fn none_of(list: &Option<Vec<String>>, test: impl Fn(&str) -> bool) -> bool {
    match list.as_ref().filter(|v| !v.is_empty()) {
        Some(values) => !values.iter().any(|v| test(v)),
        None => true,
    }
}

impl EventFilter {
    /// Whether `row` matches this (resolved) filter. The tenant is the caller's to check.
    pub fn matches(&self, row: &EventRow) -> bool {
        let occurred = micros(row.occurred);
        if occurred < self.since_micros() || occurred > self.until_micros() {
            return false;
        }
        if let Some(e) = &self.event {
            let name = row.event.as_str();
            if !any_of(&e.prefix, |p| name.starts_with(p))
                || !none_of(&e.exclude_prefix, |p| name.starts_with(p))
                || !any_of(&e.name, |n| name == n)
                || !none_of(&e.exclude_name, |n| name == n)
            {
                return false;
            }
        }
        let resource_id = label(&row.resource, RESOURCE_ID);
        if let Some(r) = &self.resource {
            let primary = ResourceView {
                labels: &row.resource,
                role: "",
            };
            if !any_of(&r.id, |id| resource_id == id)
                || !any_of(&r.id_prefix, |p| resource_id.starts_with(p))
                || !r
                    .labels
                    .as_ref()
                    .is_none_or(|spec| labels::matches(&primary, spec, false))
            {
                return false;
            }
        }
        for r in self.related.iter().flat_map(OneOrMany::iter) {
            let constrained = r.id.as_ref().is_some_and(|v| !v.is_empty())
                || r.role.as_ref().is_some_and(|v| !v.is_empty())
                || r.resources_in_roles.as_ref().is_some_and(|v| !v.is_empty())
                || r.labels
                    .as_ref()
                    .is_some_and(|s| labels::constrains(s, true));
            if !constrained {
                continue;
            }
            let found = row.related.iter().any(|related| {
                let (id, role) = (label(related, RESOURCE_ID), label(related, RESOURCE_ROLE));
                let view = ResourceView {
                    labels: related,
                    role,
                };
                any_of(&r.id, |v| id == v)
                    && any_of(&r.role, |v| role == v)
                    && r.resources_in_roles
                        .as_ref()
                        .filter(|pairs| !pairs.is_empty())
                        .is_none_or(|pairs| pairs.iter().any(|(i, o)| i == id && o == role))
                    && r.labels
                        .as_ref()
                        .is_none_or(|spec| labels::matches(&view, spec, true))
            });
            if !found {
                return false;
            }
        }
        for r in self.any_resource.iter().flat_map(OneOrMany::iter) {
            let constrained = r.id.as_ref().is_some_and(|v| !v.is_empty())
                || r.id_prefix.as_ref().is_some_and(|v| !v.is_empty())
                || r.labels
                    .as_ref()
                    .is_some_and(|s| labels::constrains(s, true));
            if !constrained {
                continue;
            }
            let satisfies = |view: &ResourceView<'_>| {
                let id = label(view.labels, RESOURCE_ID);
                any_of(&r.id, |v| id == v)
                    && any_of(&r.id_prefix, |p| id.starts_with(p))
                    && r.labels
                        .as_ref()
                        .is_none_or(|spec| labels::matches(view, spec, true))
            };
            let primary = ResourceView {
                labels: &row.resource,
                role: "",
            };
            let found = satisfies(&primary)
                || row.related.iter().any(|related| {
                    satisfies(&ResourceView {
                        labels: related,
                        role: label(related, RESOURCE_ROLE),
                    })
                });
            if !found {
                return false;
            }
        }
        if let Some(ids) = self
            .id
            .as_ref()
            .and_then(|f| f.id.as_ref())
            .filter(|v| !v.is_empty())
            && !ids.contains(&row.id)
        {
            return false;
        }
        if let Some(query) = self.text_query()
            && !query.matches(&searchable_text(row))
        {
            return false;
        }
        true
    }
}
