//! A request's client-defined tools, as both dialects hand them over in Anthropic's shape:
//! checked, and, when the request answers a call, turned into the continuation the runner
//! expects (see [`crate::runner::client_tools`]).

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::runner::client_tools::{self, ClientTool, ClientTools, ToolResult};
pub use crate::sessions::transcript::Deferred;

/// The most text a continuation may carry beside its results: it travels in the CLI's
/// environment, where one variable is limited to 128 KiB.
const MAX_RESUME_TEXT: usize = 64 * 1024;

fn bad(message: String) -> ApiError {
    ApiError::InvalidRequest(message)
}

/// Anthropic `tools` as client tools, or a 400 naming the entry and field at fault.
pub fn parse(tools: &[Value]) -> Result<Vec<ClientTool>, ApiError> {
    let mut parsed: Vec<ClientTool> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if let Some(kind) = tool.get("type").and_then(Value::as_str) {
            if kind != "custom" {
                return Err(bad(format!(
                    "tools.{i}.type: server tools ({kind:?}) are not supported; only client tools"
                )));
            }
        }
        let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= client_tools::MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(bad(format!(
                "tools.{i}.name: 1 to {} letters, digits, '_' or '-'",
                client_tools::MAX_NAME
            )));
        }
        if parsed.iter().any(|t| t.name == name) {
            return Err(bad(format!("tools.{i}.name: {name:?} is offered twice")));
        }
        let schema = tool.get("input_schema").cloned().unwrap_or(Value::Null);
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(bad(format!(
                "tools.{i}.input_schema: a JSON schema of type \"object\" is required"
            )));
        }
        let description = match tool.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(_) => return Err(bad(format!("tools.{i}.description: a string"))),
        };
        parsed.push(ClientTool {
            name: name.to_owned(),
            description,
            input_schema: schema,
        });
    }
    Ok(parsed)
}

/// The `tool_choice` set on each model call of a run with client tools: the request's (in
/// Anthropic's shape, `{"type": "auto" | "any" | "none" | "tool", "name",
/// "disable_parallel_tool_use"}`), a named tool under the name the CLI knows it by.
pub fn tool_choice(choice: Option<&Value>, tools: &[ClientTool]) -> Result<Value, ApiError> {
    let mut choice = choice.cloned().unwrap_or_else(|| json!({"type": "auto"}));
    match choice.get("type").and_then(Value::as_str) {
        Some("auto" | "any") => {}
        Some("none") => return Ok(choice),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(format!(
                    "tool_choice.name: {name:?} is not one of the request's tools"
                )));
            }
            choice["name"] = json!(client_tools::internal_name(name));
        }
        _ => {
            return Err(bad(
                "tool_choice.type: one of auto, any, tool, none".to_owned()
            ))
        }
    }
    if let Some(flag) = choice.get("disable_parallel_tool_use") {
        if !flag.is_boolean() {
            return Err(bad(
                "tool_choice.disable_parallel_tool_use: true or false".to_owned()
            ));
        }
    }
    Ok(choice)
}

/// Renames the client's tool calls in `history` to the names the CLI knows them by and, when
/// the new user turn (`prompt`, message number `last`) answers the last assistant turn's calls,
/// returns the continuation (see [`Deferred`]) with the client's results in the tools.
pub fn prepare(
    tools: Vec<ClientTool>,
    history: &mut [(&'static str, Value)],
    prompt: &Value,
    last: usize,
) -> Result<(Option<ClientTools>, Option<Deferred>), ApiError> {
    let results: Vec<(usize, &Value)> = prompt
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .collect()
        })
        .unwrap_or_default();
    if tools.is_empty() {
        if let Some((j, _)) = results.first() {
            return Err(bad(format!(
                "messages.{last}.content.{j}: a tool_result answers a client tool call; send the same tools again"
            )));
        }
        return Ok((None, None));
    }
    let offered = |name: &str| tools.iter().any(|t| t.name == name);
    for (_, content) in history.iter_mut() {
        for block in content.as_array_mut().into_iter().flatten() {
            let name = block.get("name").and_then(Value::as_str).map(str::to_owned);
            if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                if let Some(name) = name.filter(|n| offered(n)) {
                    block["name"] = json!(client_tools::internal_name(&name));
                }
            }
        }
    }
    let mut client = ClientTools {
        tools,
        ..Default::default()
    };
    if results.is_empty() {
        return Ok((Some(client), None));
    }
    // Text beside the results (an agent's reminders) follows them, as the API would see it.
    let mut beside = Vec::new();
    for (j, block) in prompt.as_array().into_iter().flatten().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_result") => {}
            Some("text") => beside.push(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            _ => {
                return Err(bad(format!(
                    "messages.{last}.content.{j}: only text may go beside tool_result blocks"
                )))
            }
        }
    }
    let beside = beside.join("\n\n");
    if beside.len() > MAX_RESUME_TEXT {
        return Err(bad(format!(
            "messages.{last}.content: at most {MAX_RESUME_TEXT} bytes of text beside tool_result blocks"
        )));
    }
    client.resume_text = Some(beside).filter(|t| !t.trim().is_empty());
    let calls: Vec<&Value> = match history.last() {
        Some(("assistant", Value::Array(blocks))) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .collect(),
        _ => Vec::new(),
    };
    let call_id = |c: &Value| c.get("id").and_then(Value::as_str).map(str::to_owned);
    let mut answers: Vec<Option<Value>> = vec![None; calls.len()];
    for (j, result) in &results {
        let id = result
            .get("tool_use_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(position) = calls.iter().position(|c| call_id(c).as_deref() == Some(id)) else {
            return Err(bad(format!(
                "messages.{last}.content.{j}.tool_use_id: no tool_use {id:?} in the assistant turn before it"
            )));
        };
        if calls[position]
            .get("name")
            .and_then(Value::as_str)
            .and_then(client_tools::client_name)
            .is_none()
        {
            return Err(bad(format!(
                "messages.{last}.content.{j}.tool_use_id: {id:?} is not a call of one of the request's tools"
            )));
        }
        if answers[position].is_some() {
            return Err(bad(format!(
                "messages.{last}.content.{j}.tool_use_id: {id:?} is answered twice"
            )));
        }
        let content = result.get("content").cloned().unwrap_or(json!(""));
        let is_error = result
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        client.results.insert(
            id.to_owned(),
            ToolResult {
                content: content.clone(),
                is_error,
            },
        );
        answers[position] = Some(json!({"type": "tool_result", "tool_use_id": id,
            "content": content, "is_error": is_error}));
    }
    // As the API: every call of the turn gets its result in the next one.
    let mut answered = Vec::with_capacity(calls.len());
    for (call, answer) in calls.iter().zip(answers) {
        match answer {
            Some(answer) => answered.push(answer),
            None => {
                return Err(bad(format!(
                    "messages.{last}.content: no tool_result for tool_use {:?} of the assistant turn before it",
                    call_id(call).unwrap_or_default()
                )))
            }
        }
    }
    let call = calls.last().map(|c| (*c).clone()).unwrap_or_default();
    Ok((
        Some(client),
        Some(Deferred {
            call,
            results: answered,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"name": "get_weather", "description": "d", "input_schema": {"type": "object"}})
    }

    #[test]
    fn bad_tools_are_refused_naming_the_field() {
        let refused = |tools: Value| {
            parse(tools.as_array().expect("list"))
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert!(parse(&[weather()]).is_ok());
        assert!(
            refused(json!([{"name": "bad name", "input_schema": {"type": "object"}}]))
                .starts_with("tools.0.name")
        );
        assert!(refused(json!([weather(), weather()])).starts_with("tools.1.name"));
        assert!(
            refused(json!([{"name": "x", "input_schema": {"type": "string"}}]))
                .starts_with("tools.0.input_schema")
        );
        assert!(
            refused(json!([{"type": "web_search_20250305", "name": "web_search"}]))
                .starts_with("tools.0.type")
        );
    }

    #[test]
    fn a_result_for_the_last_call_makes_a_continuation() {
        let tools = parse(&[weather()]).expect("valid");
        let mut history = vec![
            ("user", json!("q")),
            (
                "assistant",
                json!([{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]),
            ),
        ];
        let prompt = json!([{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]);
        let (client, deferred) =
            prepare(tools.clone(), &mut history, &prompt, 2).expect("a continuation");
        assert_eq!(history[1].1[0]["name"], "mcp__client__get_weather");
        assert_eq!(deferred.expect("the call").call["id"], "t1");
        assert_eq!(client.expect("tools").results["t1"].content, json!("sunny"));
        let unknown = json!([{"type": "tool_result", "tool_use_id": "t9", "content": "x"}]);
        let mut history2 = history.clone();
        assert!(prepare(tools, &mut history2, &unknown, 2)
            .map_err(|e| e.to_string())
            .err()
            .is_some_and(|e| e.starts_with("messages.2.content.0.tool_use_id")));
    }
}
