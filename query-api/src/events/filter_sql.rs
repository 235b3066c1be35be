//! A resolved [`EventFilter`] as a ClickHouse `WHERE` clause over `events`: the tenant first,
//! then the time range (both lead the sort key), every value bound as a parameter.

use super::filter::{EventFilter, OneOrMany};
use super::labels::{self, Which};
use crate::db::{Sql, TENANT};

/// The searchable text of an event (see [`super::matches::searchable_text`], its twin):
/// the name, every label name and value of the resource and the related resources, the payload.
const SEARCHABLE_TEXT: &str = "concat(event, ' ', \
    arrayStringConcat(arrayMap((k, v) -> concat(k, ' ', v), mapKeys(resource), mapValues(resource)), ' '), ' ', \
    arrayStringConcat(arrayMap(r -> arrayStringConcat(arrayMap((k, v) -> concat(k, ' ', v), mapKeys(r), mapValues(r)), ' '), related), ' '), ' ', \
    payload)";

impl EventFilter {
    /// The `WHERE` clause (tenant first) of a resolved filter.
    pub fn where_clause(&self, sql: &mut Sql) -> String {
        let mut c = vec![TENANT.to_string()];
        let since = sql.bind_micros(self.since_micros());
        let until = sql.bind_micros(self.until_micros());
        c.push(format!("occurred >= {since} AND occurred <= {until}"));
        if let Some(e) = &self.event {
            if let Some(v) = non_empty(&e.prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("arrayExists(x -> startsWith(event, x), {p})"));
            }
            if let Some(v) = non_empty(&e.exclude_prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("NOT arrayExists(x -> startsWith(event, x), {p})"));
            }
            if let Some(v) = non_empty(&e.name) {
                let p = sql.bind_strings(v);
                c.push(format!("has({p}, event)"));
            }
            if let Some(v) = non_empty(&e.exclude_name) {
                let p = sql.bind_strings(v);
                c.push(format!("NOT has({p}, event)"));
            }
        }
        if let Some(r) = &self.resource {
            if let Some(v) = non_empty(&r.id) {
                let p = sql.bind_strings(v);
                c.push(format!("has({p}, resource_id)"));
            }
            if let Some(v) = non_empty(&r.id_prefix) {
                let p = sql.bind_strings(v);
                c.push(format!("arrayExists(x -> startsWith(resource_id, x), {p})"));
            }
            if let Some(spec) = &r.labels {
                c.extend(labels::sql_conditions(sql, Which::Primary, spec, false));
            }
        }
        for r in self.related.iter().flat_map(OneOrMany::iter) {
            let mut rc = Vec::new();
            if let Some(v) = non_empty(&r.id) {
                let p = sql.bind_strings(v);
                rc.push(format!("has({p}, {})", Which::Related.id_expr()));
            }
            if let Some(v) = non_empty(&r.role) {
                let p = sql.bind_strings(v);
                rc.push(format!("has({p}, {})", Which::Related.role_expr()));
            }
            if let Some(pairs) = r.resources_in_roles.as_ref().filter(|p| !p.is_empty()) {
                let ids: Vec<&str> = pairs.iter().map(|(id, _)| id.as_str()).collect();
                let roles: Vec<&str> = pairs.iter().map(|(_, role)| role.as_str()).collect();
                let (ids, roles) = (sql.bind_strings(&ids), sql.bind_strings(&roles));
                rc.push(format!(
                    "arrayExists((i, o) -> i = {} AND o = {}, {ids}, {roles})",
                    Which::Related.id_expr(),
                    Which::Related.role_expr()
                ));
            }
            if let Some(spec) = &r.labels {
                rc.extend(labels::sql_conditions(sql, Which::Related, spec, true));
            }
            if !rc.is_empty() {
                c.push(format!("arrayExists(r -> ({}), related)", rc.join(" AND ")));
            }
        }
        for r in self.any_resource.iter().flat_map(OneOrMany::iter) {
            let on = |sql: &mut Sql, which: Which| -> Vec<String> {
                let id = which.id_expr();
                let mut rc = Vec::new();
                if let Some(v) = non_empty(&r.id) {
                    let p = sql.bind_strings(v);
                    rc.push(format!("has({p}, {id})"));
                }
                if let Some(v) = non_empty(&r.id_prefix) {
                    let p = sql.bind_strings(v);
                    rc.push(format!("arrayExists(x -> startsWith({id}, x), {p})"));
                }
                if let Some(spec) = &r.labels {
                    rc.extend(labels::sql_conditions(sql, which, spec, true));
                }
                rc
            };
            let primary = on(sql, Which::Primary);
            if primary.is_empty() {
                continue;
            }
            let related = on(sql, Which::Related);
            c.push(format!(
                "(({}) OR arrayExists(r -> ({}), related))",
                primary.join(" AND "),
                related.join(" AND ")
            ));
        }
        if let Some(ids) = self
            .id
            .as_ref()
            .and_then(|f| f.id.as_ref())
            .filter(|v| !v.is_empty())
        {
            let ids = ids
                .iter()
                .map(|id| serde_json::Value::String(id.to_string()))
                .collect();
            let p = sql.bind("Array(UUID)", serde_json::Value::Array(ids));
            c.push(format!("has({p}, id)"));
        }
        if let Some(condition) = self
            .text_query()
            .and_then(|query| query.sql(sql, SEARCHABLE_TEXT))
        {
            c.push(condition);
        }
        c.join(" AND ")
    }
}

fn non_empty(list: &Option<Vec<String>>) -> Option<&Vec<String>> {
    list.as_ref().filter(|v| !v.is_empty())
}
