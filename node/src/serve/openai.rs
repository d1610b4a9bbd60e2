//! The OpenAI-compatible API's bodies, PURE: requests read from untrusted
//! JSON field by field (so that a bad one is named), and the responses and
//! stream chunks OpenAI clients expect. The engine is SIMULATED: it makes
//! no text, so token `i` reads ` tok<i>`, and prompts are counted by a
//! SIMULATED tokenizer (one token per 4 characters of each word, rounded
//! up, as OpenAI's rule of thumb); the usage figures are the engine's real
//! counts of what it was given and produced.

use herd_actors::inference::MAX_REQUEST_TOKENS;
use serde_json::{json, Map, Value};

/// `max_tokens` when a request does not say (OpenAI's completions default).
pub const DEFAULT_MAX_TOKENS: u32 = 16;
/// Messages of one chat request, at most.
const MAX_MESSAGES: usize = 4096;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/completions`.
    Completion,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// A request, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generate {
    /// The endpoint.
    pub kind: Kind,
    /// The service (job) asked for.
    pub model: String,
    /// Prompt tokens (SIMULATED tokenizer).
    pub prompt_tokens: u32,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// Stream as server-sent events.
    pub stream: bool,
    /// With `stream`: a last chunk with the usage.
    pub include_usage: bool,
    /// "normal" or "high" (herd's extension field `priority`).
    pub priority: String,
}

/// A request that cannot be served as sent: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The field, as a JSON path (`messages[2].content`); empty for the body.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadRequest {
    let param = param.into();
    let message = message.into();
    BadRequest {
        message: if param.is_empty() {
            message
        } else {
            format!("field `{param}`: {message}")
        },
        param,
    }
}

/// Tokens of `text` by the SIMULATED tokenizer.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace()
        .map(|w| w.chars().count().div_ceil(4) as u64)
        .sum()
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<bool, BadRequest> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(
            field,
            format!("must be a boolean, got {}", kind_name(v)),
        )),
    }
}

/// Tokens of a completions `prompt`: a string, an array of one string, an
/// array of token ids, or an array of one array of token ids.
fn prompt_tokens(prompt: Option<&Value>) -> Result<u64, BadRequest> {
    const FIELD: &str = "prompt";
    let ids = |items: &[Value], field: &str| -> Result<u64, BadRequest> {
        for (i, item) in items.iter().enumerate() {
            if !item.is_u64() {
                return Err(bad(
                    format!("{field}[{i}]"),
                    "a token id must be a non-negative integer",
                ));
            }
        }
        Ok(items.len() as u64)
    };
    match prompt {
        None | Some(Value::Null) => Err(bad(FIELD, "required")),
        Some(Value::String(text)) => Ok(count_tokens(text)),
        Some(Value::Array(items)) => match items.first() {
            None => Err(bad(FIELD, "empty")),
            Some(Value::String(text)) if items.len() == 1 => Ok(count_tokens(text)),
            Some(Value::Array(inner)) if items.len() == 1 => ids(inner, "prompt[0]"),
            Some(Value::Number(_)) => ids(items, FIELD),
            Some(Value::String(_) | Value::Array(_)) => Err(bad(
                FIELD,
                "one prompt per request (a batch of prompts is not supported)",
            )),
            Some(v) => Err(bad(
                "prompt[0]",
                format!(
                    "must be a string, a token id or an array of token ids, got {}",
                    kind_name(v)
                ),
            )),
        },
        Some(v) => Err(bad(
            FIELD,
            format!("must be a string or an array, got {}", kind_name(v)),
        )),
    }
}

/// Tokens of chat `messages`, counted as OpenAI documents for its chat
/// models: each message's content plus 3, plus 3 priming the reply.
fn message_tokens(messages: Option<&Value>) -> Result<u64, BadRequest> {
    const FIELD: &str = "messages";
    let items = match messages {
        None | Some(Value::Null) => return Err(bad(FIELD, "required")),
        Some(Value::Array(items)) => items,
        Some(v) => {
            return Err(bad(
                FIELD,
                format!("must be an array, got {}", kind_name(v)),
            ))
        }
    };
    if items.is_empty() {
        return Err(bad(FIELD, "empty"));
    }
    if items.len() > MAX_MESSAGES {
        return Err(bad(
            FIELD,
            format!("at most {MAX_MESSAGES} messages, got {}", items.len()),
        ));
    }
    let mut tokens = 3;
    for (i, message) in items.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(bad(
                format!("messages[{i}]"),
                format!("must be an object, got {}", kind_name(message)),
            ));
        };
        match message.get("role") {
            Some(Value::String(role)) if !role.is_empty() => {}
            _ => {
                return Err(bad(
                    format!("messages[{i}].role"),
                    "required: a string such as \"user\"",
                ))
            }
        }
        tokens += 3 + match message.get("content") {
            None | Some(Value::Null) => 0,
            Some(Value::String(text)) => count_tokens(text),
            Some(Value::Array(parts)) => {
                let mut n = 0;
                for (j, part) in parts.iter().enumerate() {
                    match part.get("text") {
                        Some(Value::String(text)) => n += count_tokens(text),
                        _ => return Err(bad(
                            format!("messages[{i}].content[{j}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        )),
                    }
                }
                n
            }
            Some(v) => {
                return Err(bad(
                    format!("messages[{i}].content"),
                    format!(
                        "must be a string or an array of parts, got {}",
                        kind_name(v)
                    ),
                ))
            }
        };
    }
    Ok(tokens)
}

/// Reads a request body sent to the `kind` endpoint.
pub fn parse(kind: Kind, body: &[u8]) -> Result<Generate, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(bad(
            "",
            format!("the body must be a JSON object, got {}", kind_name(&value)),
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
        Some(Value::String(_)) => return Err(bad("model", "must be 1 to 256 characters")),
        None | Some(Value::Null) => {
            return Err(bad("model", "required: the inference service's name"))
        }
        Some(v) => {
            return Err(bad(
                "model",
                format!("must be a string, got {}", kind_name(v)),
            ))
        }
    };
    let prompt = match kind {
        Kind::Completion => prompt_tokens(body.get("prompt"))?,
        Kind::Chat => message_tokens(body.get("messages"))?,
    };
    if prompt == 0 {
        let field = if kind == Kind::Chat {
            "messages"
        } else {
            "prompt"
        };
        return Err(bad(field, "holds no token"));
    }
    if prompt > MAX_REQUEST_TOKENS as u64 {
        let field = if kind == Kind::Chat {
            "messages"
        } else {
            "prompt"
        };
        return Err(bad(
            field,
            format!("{prompt} tokens, more than {MAX_REQUEST_TOKENS}"),
        ));
    }
    // Chat's newer name wins over the older one.
    let max_field = if kind == Kind::Chat
        && body
            .get("max_completion_tokens")
            .is_some_and(|v| !v.is_null())
    {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match body.get(max_field) {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_REQUEST_TOKENS as u64).contains(&n) => n as u32,
            _ => {
                return Err(bad(
                    max_field,
                    format!("must be an integer between 1 and {MAX_REQUEST_TOKENS}, got {v}"),
                ))
            }
        },
    };
    match body.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(bad(
                "n",
                format!("only 1 choice per request is supported, got {v}"),
            ))
        }
    }
    let stream = optional_bool(&body, "stream")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => optional_bool(options, "include_usage").map_err(|e| {
            bad(
                "stream_options.include_usage",
                e.message.replace("field `include_usage`: ", ""),
            )
        })?,
        Some(v) => {
            return Err(bad(
                "stream_options",
                format!("must be an object, got {}", kind_name(v)),
            ))
        }
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => "normal".to_string(),
        Some(Value::String(p)) if p == "normal" || p == "high" => p.clone(),
        Some(v) => {
            return Err(bad(
                "priority",
                format!("must be \"normal\" or \"high\", got {v}"),
            ))
        }
    };
    Ok(Generate {
        kind,
        model,
        prompt_tokens: prompt as u32,
        max_tokens,
        stream,
        include_usage,
        priority,
    })
}

/// The text of generated token `index` (the SIMULATED engine makes none).
pub fn token_text(index: u32) -> String {
    format!(" tok{index}")
}

/// The `usage` object.
pub fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens as u64 + completion_tokens as u64,
    })
}

/// Where a response was served, for clients that want to know (herd's
/// extension field `herd`; OpenAI clients ignore it).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The response's id (`cmpl-…`, `chatcmpl-…`).
    pub id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The allocation that served it.
    pub alloc_id: String,
    /// Its node.
    pub node: String,
}

fn herd_field(origin: &Origin) -> Value {
    json!({"alloc_id": origin.alloc_id, "node": origin.node, "simulated": true})
}

/// The whole response of a request that did not stream.
pub fn response(request: &Generate, origin: &Origin, text: &str, completion_tokens: u32) -> Value {
    let (object, choice) = match request.kind {
        Kind::Completion => (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"}),
        ),
        Kind::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "length"}),
        ),
    };
    json!({
        "id": origin.id,
        "object": object,
        "created": origin.created,
        "model": request.model,
        "choices": [choice],
        "usage": usage(request.prompt_tokens, completion_tokens),
        "herd": herd_field(origin),
    })
}

/// One stream chunk: token `index` (its text), `last` with the finish reason.
pub fn chunk(request: &Generate, origin: &Origin, index: u32, last: bool) -> Value {
    let finish = if last { json!("length") } else { Value::Null };
    let text = token_text(index);
    let (object, choice) = match request.kind {
        Kind::Completion => (
            "text_completion",
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        ),
        Kind::Chat => {
            let delta = if index == 0 {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
            )
        }
    };
    let mut chunk = json!({
        "id": origin.id,
        "object": object,
        "created": origin.created,
        "model": request.model,
        "choices": [choice],
    });
    if index == 0 {
        chunk["herd"] = herd_field(origin);
    }
    if request.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// The last chunk of a stream with `include_usage`: no choice, the usage.
pub fn usage_chunk(request: &Generate, origin: &Origin, completion_tokens: u32) -> Value {
    let object = match request.kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion.chunk",
    };
    json!({
        "id": origin.id,
        "object": object,
        "created": origin.created,
        "model": request.model,
        "choices": [],
        "usage": usage(request.prompt_tokens, completion_tokens),
    })
}

/// An OpenAI-style error body.
pub fn error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// `GET /v1/models`.
pub fn models<'a>(services: impl IntoIterator<Item = &'a String>) -> Value {
    let data: Vec<Value> = services
        .into_iter()
        .map(|s| json!({"id": s, "object": "model", "created": 0, "owned_by": "herd"}))
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(kind: Kind, body: Value) -> Generate {
        parse(kind, body.to_string().as_bytes()).expect("a valid request")
    }

    fn parse_err(kind: Kind, body: &str) -> BadRequest {
        parse(kind, body.as_bytes()).expect_err("a bad request")
    }

    #[test]
    fn completions_read_every_prompt_form_and_the_defaults() {
        let r = parse_ok(
            Kind::Completion,
            json!({"model": "llm", "prompt": "hello wonderful world"}),
        );
        // hello: 2, wonderful: 3, world: 2 (a token per 4 characters of a word).
        assert_eq!(
            (r.model.as_str(), r.prompt_tokens, r.max_tokens),
            ("llm", 2 + 3 + 2, 16)
        );
        assert!(!r.stream && !r.include_usage);
        assert_eq!(r.priority, "normal");
        let r = parse_ok(
            Kind::Completion,
            json!({"model": "llm", "prompt": [1, 2, 3], "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}, "priority": "high", "temperature": 0.2}),
        );
        assert_eq!(
            (r.prompt_tokens, r.max_tokens, r.stream, r.include_usage),
            (3, 5, true, true)
        );
        assert_eq!(r.priority, "high");
        assert_eq!(
            parse_ok(Kind::Completion, json!({"model": "m", "prompt": [[7, 8]]})).prompt_tokens,
            2
        );
        assert_eq!(
            parse_ok(
                Kind::Completion,
                json!({"model": "m", "prompt": ["abcd efgh"]})
            )
            .prompt_tokens,
            2
        );
    }

    #[test]
    fn chat_counts_messages_and_prefers_max_completion_tokens() {
        let r = parse_ok(
            Kind::Chat,
            json!({"model": "llm", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi there"}]}], "max_tokens": 9, "max_completion_tokens": 7}),
        );
        // 3 + (3 + be 1 + brief 2) + (3 + hi 1 + there 2)
        assert_eq!((r.prompt_tokens, r.max_tokens), (15, 7));
    }

    #[test]
    fn a_bad_request_names_its_field() {
        let completions = [
            ("{not json", ""),
            ("[1]", ""),
            (r#"{"prompt": "x"}"#, "model"),
            (r#"{"model": 3, "prompt": "x"}"#, "model"),
            (r#"{"model": "m"}"#, "prompt"),
            (r#"{"model": "m", "prompt": ""}"#, "prompt"),
            (r#"{"model": "m", "prompt": [1, -2]}"#, "prompt[1]"),
            (r#"{"model": "m", "prompt": ["a", "b"]}"#, "prompt"),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": 0}"#,
                "max_tokens",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": "ten"}"#,
                "max_tokens",
            ),
            (
                r#"{"model": "m", "prompt": "x", "max_tokens": 99999999999}"#,
                "max_tokens",
            ),
            (
                r#"{"model": "m", "prompt": "x", "stream": "yes"}"#,
                "stream",
            ),
            (r#"{"model": "m", "prompt": "x", "n": 2}"#, "n"),
            (
                r#"{"model": "m", "prompt": "x", "priority": "urgent"}"#,
                "priority",
            ),
            (
                r#"{"model": "m", "prompt": "x", "stream_options": {"include_usage": 1}}"#,
                "stream_options.include_usage",
            ),
        ];
        let chats = [
            (r#"{"model": "m", "messages": []}"#, "messages"),
            (
                r#"{"model": "m", "messages": [{"content": "x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}"#,
                "max_completion_tokens",
            ),
        ];
        for (kind, cases) in [
            (Kind::Completion, &completions[..]),
            (Kind::Chat, &chats[..]),
        ] {
            for &(body, param) in cases {
                let e = parse_err(kind, body);
                assert_eq!(e.param, param, "{body}: {e:?}");
                if !param.is_empty() {
                    assert!(e.message.contains(&format!("field `{param}`")), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn responses_and_chunks_have_the_shape_openai_clients_read() {
        let origin = Origin {
            id: "cmpl-1".into(),
            created: 5,
            alloc_id: "a1".into(),
            node: "n1".into(),
        };
        let mut request = parse_ok(
            Kind::Chat,
            json!({"model": "llm", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}}),
        );
        let first = chunk(&request, &origin, 0, false);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["herd"]["alloc_id"], "a1");
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let last = chunk(&request, &origin, 3, true);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let tail = usage_chunk(&request, &origin, 4);
        assert_eq!(
            tail["usage"]["total_tokens"],
            request.prompt_tokens as u64 + 4
        );
        assert_eq!(tail["choices"], json!([]));
        request.kind = Kind::Completion;
        let whole = response(&request, &origin, " tok0 tok1", 2);
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], " tok0 tok1");
        assert_eq!(whole["usage"]["completion_tokens"], 2);
        let models = models(&["a".to_string(), "b".to_string()]);
        assert_eq!(models["data"][1]["id"], "b");
        assert_eq!(
            error("x", "invalid_request_error", Some("model"), None)["error"]["param"],
            "model"
        );
    }
}
