//! The OpenAPI document is the request validator: every JSON body is checked against the
//! schema `/openapi.json` publishes for it (after serde read it, whose errors name fields more
//! precisely), so what the document says is what the API accepts, by construction (no second,
//! hand-kept list of rules).
//!
//! Checks the schema cannot express (dates Flowhouse cannot store, windows longer than allowed)
//! come after, in the handlers, as 422s naming the field and the bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use utoipa::OpenApi as _;

use crate::error::ApiError;
use crate::openapi::ApiDoc;

/// Most schema violations named in one answer.
const MAX_REPORTED: usize = 10;
/// Longest message of one violation.
const MAX_MESSAGE_CHARS: usize = 300;

/// `text` cut to `max` characters, keeping both ends.
fn shorten(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    let half = max / 2;
    let head: String = chars[..half].iter().collect();
    let tail: String = chars[chars.len() - half..].iter().collect();
    format!("{head}…{tail}")
}

/// The validator of the component schema `name`, built once from the published document.
fn validator(name: &str) -> Option<Arc<jsonschema::Validator>> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Option<Arc<jsonschema::Validator>>>>> =
        OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        let mut document =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
        nullable_as_conditional(&mut document);
        document
    });
    let mut validators = VALIDATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    validators
        .entry(name.to_string())
        .or_insert_with(|| {
            let components = document.get("components")?;
            components.get("schemas")?.get(name)?;
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": format!("#/components/schemas/{name}"),
                "components": components,
            });
            match jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
            {
                Ok(validator) => Some(Arc::new(validator)),
                Err(error) => {
                    tracing::error!(name, %error, "the published schema does not compile");
                    None
                }
            }
        })
        .clone()
}

/// `{"oneOf": [{"type": "null"}, S]}` (how the document says "S or null") as
/// `{"if": {"type": "null"}, "then": true, "else": S}`: the same rule, but a violation inside S
/// is reported at its own path rather than as "not valid under any of the schemas".
fn nullable_as_conditional(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let alternative = match map.get("oneOf").and_then(Value::as_array) {
                Some(list) if list.len() == 2 && list[0] == json!({"type": "null"}) => {
                    Some(list[1].clone())
                }
                _ => None,
            };
            if let Some(alternative) = alternative {
                map.remove("oneOf");
                map.insert("if".into(), json!({"type": "null"}));
                map.insert("then".into(), Value::Bool(true));
                map.insert("else".into(), alternative);
            }
            map.values_mut().for_each(nullable_as_conditional);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_as_conditional),
        _ => {}
    }
}

/// Checks `body` against the published schema `name`; a 422 naming each violation's field.
pub fn check(name: &str, body: &Value) -> Result<(), ApiError> {
    let Some(validator) = validator(name) else {
        return Ok(());
    };
    let problems: Vec<String> = validator
        .iter_errors(body)
        .take(MAX_REPORTED)
        .map(|error| {
            let path = field_path(&error.instance_path.to_string());
            // The validator quotes the value; a long one is cut so the answer stays short.
            let message = shorten(&error.to_string(), MAX_MESSAGE_CHARS);
            if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(problems.join("; ")))
    }
}

/// `/filter/event/prefix/0` → `filter.event.prefix[0]`.
fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            path.push_str(&format!("[{part}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&part);
        }
    }
    path
}

/// Integral floats (`34.0`) as integers: JSON Schema's `integer` admits them, and so does
/// Prefect (pydantic reads `34.0` as 34), while serde's integers would not.
pub fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(f) = number.as_f64()
                && !number.is_i64()
                && !number.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_name_the_field() {
        let error = check(
            "FilterRequest",
            &json!({"filter": {"event": {"prefix": "flow"}}, "limit": 5}),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("filter.event.prefix:"), "{error}");
        let error = check("FilterRequest", &json!({"limit": 1000}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("limit"), "{error}");
        let error = check("LogsRequest", &json!({"logs": {"timestamp": [null, null]}}))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("logs.timestamp"), "{error}");
        assert!(check("FilterRequest", &json!({"filter": null, "limit": null})).is_ok());
        let error = check("FilterRequest", &json!({"filter": {"id": {"id": ["x"]}}}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("filter.id.id[0]"), "{error}");
    }

    #[test]
    fn long_values_are_not_echoed_whole() {
        let long = "x".repeat(100_000);
        let error = check(
            "FilterRequest",
            &json!({"filter": {"text": {"query": long}}}),
        )
        .unwrap_err()
        .to_string();
        assert!(error.len() < 1000, "{} bytes", error.len());
        assert!(error.contains("longer than 200 characters"), "{error}");
    }

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut value = json!({"limit": 34.0, "ratio": 0.5, "list": [2.0, 1e300]});
        integral_floats_as_integers(&mut value);
        assert_eq!(
            value,
            json!({"limit": 34, "ratio": 0.5, "list": [2, 1e300]})
        );
    }
}
