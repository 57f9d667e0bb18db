//! The HTTP error answer and request helpers the model server and the scripted policy server
//! share: OpenAI-shaped error JSON naming the offending field, JSON bodies parsed with the
//! field path in errors, SGLang's `stop` and `weight_version` values.

use asearcher_tokenizer::TokenizerError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// An error answer: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<String>,
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the offending field.
    pub(crate) fn bad(param: &str, msg: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("`{param}`: {msg}"),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub(crate) fn unsupported(param: &str, msg: impl std::fmt::Display) -> Self {
        ApiError {
            code: Some("unsupported_parameter"),
            ..Self::bad(param, msg)
        }
    }

    #[cfg_attr(not(feature = "model"), allow(dead_code))]
    pub(crate) fn not_found(param: &str, msg: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: msg.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("model_not_found"),
        }
    }

    pub(crate) fn internal(msg: impl std::fmt::Display) -> Self {
        tracing::error!(error = %msg, "server error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: msg.to_string(),
            kind: "internal_error",
            param: None,
            code: None,
        }
    }
}

impl From<TokenizerError> for ApiError {
    fn from(e: TokenizerError) -> Self {
        match &e {
            TokenizerError::Input { name, msg } => ApiError::bad(name, msg),
            TokenizerError::Template { msg, .. } => ApiError::bad("messages", msg),
            _ => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Parses a JSON body; errors name the field (`sampling_params.temperature: invalid type ...`).
/// An empty body reads as `{}`.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad("body", format!("malformed request: {inner}"))
        } else {
            ApiError::bad(&path, format!("malformed request: {inner}"))
        }
    })
}

/// `stop` given as a string or a list of strings.
pub(crate) fn stop_strings(param: &str, v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ApiError::bad(
                    param,
                    "must be a non-empty string or a list of them",
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::bad(
            param,
            "must be a string or a list of strings",
        )),
    }
}

/// `weight_version` as a non-negative integer or its decimal string (SGLang sends strings).
pub(crate) fn parse_weight_version(v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
            ApiError::bad(
                "weight_version",
                format!("must be a non-negative integer (or its decimal string), got {s:?}"),
            )
        }),
        Some(other) => Err(ApiError::bad(
            "weight_version",
            format!("must be a non-negative integer, got {other}"),
        )),
    }
}
