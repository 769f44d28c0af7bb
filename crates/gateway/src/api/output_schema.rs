//! Structured output: a JSON schema the answer must match (Anthropic `output_format` or
//! `output_config.format`, OpenAI `response_format`), checked here and handed to the CLI,
//! whose `StructuredOutput` tool makes the model answer in it.

use serde_json::{json, Value};

use crate::error::ApiError;

/// A schema's size limit: it goes to every model call of the run as a tool's input schema.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

fn bad(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

/// Anthropic: `output_format: {"type": "json_schema", "schema": {…}}` (the structured-outputs
/// beta) or `output_config: {"format": {…}}` (its later place); `field` names the one given.
pub fn anthropic(format: Option<&Value>, field: &str) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => checked(format.get("schema"), &format!("{field}.schema")).map(Some),
        Some(other) => Err(bad(format!(
            "{field}.type: {other:?} is not supported; only \"json_schema\""
        ))),
        None => Err(bad(format!("{field}.type: required (\"json_schema\")"))),
    }
}

/// OpenAI: `response_format` of type `text` (none), `json_object` (any object) or
/// `json_schema` (`{"json_schema": {"name", "schema", "strict"}}`).
pub fn openai(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => checked(
            format.pointer("/json_schema/schema"),
            "response_format.json_schema.schema",
        )
        .map(Some),
        Some(other) => Err(bad(format!(
            "response_format.type: {other:?} is not supported; use \"text\", \"json_object\" or \"json_schema\""
        ))),
        None => Err(bad("response_format.type: required".into())),
    }
}

fn checked(schema: Option<&Value>, field: &str) -> Result<Value, ApiError> {
    let schema = match schema {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(_) => return Err(bad(format!("{field}: must be a JSON schema object"))),
        None => return Err(bad(format!("{field}: required"))),
    };
    // The CLI's tool takes an object; a schema of anything else could never be answered.
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        if kind != "object" {
            return Err(bad(format!(
                "{field}.type: the answer must be an object (type \"object\"), not {kind:?}"
            )));
        }
    }
    if schema.to_string().len() > MAX_SCHEMA_BYTES {
        return Err(bad(format!(
            "{field}: larger than {} KiB",
            MAX_SCHEMA_BYTES / 1024
        )));
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<Option<Value>, ApiError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn anthropic_formats_name_the_field_they_fail_on() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let ok = anthropic(
            Some(&json!({"type": "json_schema", "schema": schema})),
            "output_format",
        );
        assert_eq!(ok.ok().flatten(), Some(schema));
        assert_eq!(anthropic(None, "output_format").ok().flatten(), None);
        assert!(
            message(anthropic(Some(&json!({"type": "xml"})), "output_format"))
                .starts_with("output_format.type:")
        );
        assert!(message(anthropic(
            Some(&json!({"type": "json_schema", "schema": "x"})),
            "output_config.format"
        ))
        .starts_with("output_config.format.schema:"));
        assert!(message(anthropic(
            Some(&json!({"type": "json_schema", "schema": {"type": "array"}})),
            "output_format"
        ))
        .starts_with("output_format.schema.type:"));
    }

    #[test]
    fn openai_formats_map_to_a_schema_or_none() {
        assert_eq!(openai(Some(&json!({"type": "text"}))).ok().flatten(), None);
        assert_eq!(
            openai(Some(&json!({"type": "json_object"}))).ok().flatten(),
            Some(json!({"type": "object"}))
        );
        let schema = json!({"type": "object"});
        assert_eq!(
            openai(Some(
                &json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
            ))
            .ok()
            .flatten(),
            Some(schema)
        );
        assert!(message(openai(Some(&json!({"type": "json_schema"}))))
            .starts_with("response_format.json_schema.schema: required"));
        let huge = json!({"type": "json_schema", "json_schema": {"schema":
            {"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)}}});
        assert!(message(openai(Some(&huge))).contains("larger than"));
    }
}
