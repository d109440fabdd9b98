//! API errors: `{"error": CODE, "message": TEXT}` with a matching status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_core::crdt::OpError;
use chorus_node::{ReadError, WriteError};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body (the 404 of a deleted document carries its
    /// context).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl ApiError {
    /// The error's body, as a live subscription sends it: `{"type": "error",
    /// "error", "message", "status"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = self.extra.clone().unwrap_or_default();
        body.insert("type".into(), json!("error"));
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.insert("status".into(), json!(self.status.as_u16()));
        serde_json::Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra.unwrap_or_default();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        (self.status, Json(serde_json::Value::Object(body))).into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        let (status, code) = match &e {
            WriteError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            WriteError::NotCrdt { collection, .. } => {
                let hint =
                    format!("{e} (PUT /v1/collections/{collection} with {{\"policy\": \"crdt\"}})");
                return ApiError::bad_request(hint);
            }
            WriteError::WholeCrdtDocument { collection, key } => {
                let hint = format!("{e} (POST /v1/docs/{collection}/{key}/ops)");
                return ApiError::bad_request(hint);
            }
            WriteError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            WriteError::TooManyVersions { .. } => (StatusCode::CONFLICT, "too_many_versions"),
            WriteError::StoreFailed => (StatusCode::SERVICE_UNAVAILABLE, "store_failed"),
            WriteError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            WriteError::Corrupted(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupted"),
            WriteError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            WriteError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            WriteError::Refused(refused) => match refused {
                OpError::InsufficientRights { .. } | OpError::Beyond { .. } => {
                    (StatusCode::CONFLICT, refused.reason())
                }
                OpError::Corrupted(_) => (StatusCode::INTERNAL_SERVER_ERROR, refused.reason()),
                _ => (StatusCode::BAD_REQUEST, refused.reason()),
            },
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<chorus_node::tokens::TokenError> for ApiError {
    fn from(e: chorus_node::tokens::TokenError) -> ApiError {
        use chorus_node::tokens::TokenError;
        match e {
            TokenError::BadName(_) | TokenError::BadRights(_) => {
                ApiError::bad_request(e.to_string())
            }
            TokenError::Unknown(_) => ApiError::not_found(e.to_string()),
            TokenError::Random(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            TokenError::Write(e) => e.into(),
            TokenError::Read(e) => e.into(),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        tracing::error!(error = %e, "read failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "read_failed",
            e.to_string(),
        )
    }
}
