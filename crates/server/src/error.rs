//! One error type for every API handler: a status, a stable code and a message that names
//! what is wrong, always as `{"error": "...", "code": "..."}`. Internal failures are logged
//! in full and answered without internals.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clawfleet_core::SpecError;
use clawfleet_store::StoreError;

#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{context}; see the control plane's log"))
    }

    /// What it says (to a loop that reports it elsewhere).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn no_fleet(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_fleet", format!("no fleet named '{name}'"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = clawfleet_proto::api::ApiError { error: self.message, code: self.code.to_owned() };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::FleetExists(_) => ApiError::new(StatusCode::CONFLICT, "fleet_exists", e.to_string()),
            StoreError::TokenExists(_) => ApiError::new(StatusCode::CONFLICT, "token_exists", e.to_string()),
            StoreError::NoFleet(name) => ApiError::no_fleet(&name),
            StoreError::NothingToRollBack(_) => ApiError::conflict(e.to_string()),
            StoreError::DeployRunning(_) => ApiError::new(StatusCode::CONFLICT, "deploy_running", e.to_string()),
            StoreError::DeployDone(..) | StoreError::NotPaused(..) => ApiError::conflict(e.to_string()),
            StoreError::NoDeploy(_) => ApiError::new(StatusCode::NOT_FOUND, "no_deploy", e.to_string()),
            StoreError::NoSecret(_) => ApiError::new(StatusCode::BAD_REQUEST, "unknown_secret", e.to_string()),
            StoreError::SecretInUse(..) => ApiError::conflict(e.to_string()),
            StoreError::CouncilLive { .. } => ApiError::new(StatusCode::CONFLICT, "council_open", e.to_string()),
            StoreError::CouncilOver(..) | StoreError::NoActiveCouncil(_) | StoreError::NoRole { .. } => ApiError::conflict(e.to_string()),
            StoreError::NoProject(_) => ApiError::new(StatusCode::NOT_FOUND, "no_project", e.to_string()),
            StoreError::NoPlan(_) => ApiError::new(StatusCode::NOT_FOUND, "no_plan", e.to_string()),
            StoreError::PlanNotFailed(..) | StoreError::ProjectChanged(_) | StoreError::ProjectCompleted(_) => {
                ApiError::conflict(e.to_string())
            }
            StoreError::NoCouncil(..) => ApiError::new(StatusCode::NOT_FOUND, "no_council", e.to_string()),
            StoreError::NoQueueItem(_) => ApiError::new(StatusCode::NOT_FOUND, "no_queue_item", e.to_string()),
            StoreError::QueueItemOver(_) => ApiError::conflict(e.to_string()),
            StoreError::QueueFull(..) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string()),
            StoreError::NoApproval(_) => ApiError::new(StatusCode::NOT_FOUND, "no_approval", e.to_string()),
            StoreError::ApprovalAnswered(_) => ApiError::conflict(e.to_string()),
            StoreError::Migrating { .. } => ApiError::new(StatusCode::CONFLICT, "migrating", e.to_string()),
            StoreError::Defected { .. } => ApiError::new(StatusCode::CONFLICT, "defected", e.to_string()),
            full if full.is_disk_full() => {
                tracing::error!(error = %full, "The data directory's disk is full: refusing new work until there is room");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    "the control plane's data directory is out of space: nothing was stored, and new work is refused until there is room",
                )
            }
            other => ApiError::internal("the database failed", other),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        match e {
            SpecError::PromptTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
            SpecError::UnknownAgent { .. } => ApiError::new(StatusCode::NOT_FOUND, "unknown_agent", e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        match r {
            JsonRejection::JsonSyntaxError(e) => {
                let text = e.body_text();
                let detail = text.strip_prefix("Failed to parse the request body as JSON: ").unwrap_or(&text);
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("invalid json: {detail}"))
            }
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let detail = text.strip_prefix("Failed to deserialize the JSON body into the target type: ").unwrap_or(&text);
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("invalid request body: {detail}"))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type",
                "the request body must be JSON (Content-Type: application/json)",
            ),
            JsonRejection::BytesRejection(e) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("request body rejected: {}", e.body_text()))
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(format!("invalid path: {}", r.body_text()))
    }
}
