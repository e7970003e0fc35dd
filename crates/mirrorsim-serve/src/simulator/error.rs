//! The service's error answers: a status and a JSON body naming the field at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{ErrorDetail, ErrorResponse};

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    /// 400: the body is not the JSON the route takes.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request",
            field: None,
            message: message.into(),
        }
    }

    /// 422: well-formed JSON that asks for something the service cannot do.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_request",
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 422 about the request as a whole.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            kind: "invalid_request",
            field: None,
            message: message.into(),
        }
    }

    /// 404: a user or item id the catalog does not hold.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "payload_too_large",
            field: None,
            message: format!(
                "the request body is larger than the limit of {limit} bytes (the server's \
                 --max-body-bytes); split a batch into several calls"
            ),
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "overloaded",
            field: None,
            message: message.into(),
        }
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            kind: "timeout",
            field: None,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            field: None,
            message: message.into(),
        }
    }

    /// The same error about the request at `prefix` of a batch (`requests[3]`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(field) => format!("{prefix}.{field}"),
            None => prefix.to_owned(),
        });
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                field: self.field.clone(),
                status: self.status.as_u16(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("answering {}: {}", self.status, self.message);
        }
        (self.status, Json(self.body())).into_response()
    }
}
