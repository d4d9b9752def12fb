//! The adapter's errors, in Triton's own categories, and the one table that
//! maps them to gRPC codes and HTTP statuses (Triton's `grpc_utils.cc` and
//! `http_server.cc`). Engine errors are sorted into these categories here,
//! not by the gru.v1 table: a Triton client expects Triton's codes.

use tonic::Status;

use crate::engine::EngineError;

/// Triton's error codes (`TRITONSERVER_Error_Code`), plus the two the
/// bearer-token layer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArg,
    NotFound,
    Unavailable,
    Unsupported,
    AlreadyExists,
    Internal,
    Unauthenticated,
    PermissionDenied,
}

/// One refusal: its category and the message the client reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TritonError {
    pub kind: Kind,
    pub message: String,
}

impl TritonError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        TritonError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        TritonError::new(Kind::InvalidArg, message)
    }

    /// A stable short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::InvalidArg => "invalid_arg",
            Kind::NotFound => "not_found",
            Kind::Unavailable => "unavailable",
            Kind::Unsupported => "unsupported",
            Kind::AlreadyExists => "already_exists",
            Kind::Internal => "internal",
            Kind::Unauthenticated => "unauthenticated",
            Kind::PermissionDenied => "permission_denied",
        }
    }

    /// Triton's gRPC code for the category.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self.kind {
            Kind::InvalidArg => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::Unavailable => Code::Unavailable,
            Kind::Unsupported => Code::Unimplemented,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::Internal => Code::Internal,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
        }
    }

    /// Triton's HTTP status for the category.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            Kind::InvalidArg | Kind::AlreadyExists => 400,
            Kind::Unauthenticated => 401,
            Kind::PermissionDenied => 403,
            Kind::NotFound => 404,
            Kind::Internal => 500,
            Kind::Unsupported => 501,
            Kind::Unavailable => 503,
        }
    }
}

impl From<TritonError> for Status {
    fn from(e: TritonError) -> Status {
        Status::new(e.code(), e.message)
    }
}

impl From<Status> for TritonError {
    /// The auth layer's refusals (it speaks tonic).
    fn from(s: Status) -> TritonError {
        let kind = match s.code() {
            tonic::Code::Unauthenticated => Kind::Unauthenticated,
            tonic::Code::PermissionDenied => Kind::PermissionDenied,
            tonic::Code::NotFound => Kind::NotFound,
            tonic::Code::Unavailable => Kind::Unavailable,
            tonic::Code::Unimplemented => Kind::Unsupported,
            tonic::Code::Internal => Kind::Internal,
            _ => Kind::InvalidArg,
        };
        TritonError::new(kind, s.message())
    }
}

impl From<EngineError> for TritonError {
    fn from(e: EngineError) -> TritonError {
        let message = e.to_string();
        let kind = match e {
            EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => Kind::NotFound,
            // Triton refuses a sequence it does not know as INVALID_ARG.
            EngineError::SessionNotFound(_)
            | EngineError::SessionExpired { .. }
            | EngineError::BadId { .. }
            | EngineError::ModelRequired
            | EngineError::NotFinite { .. }
            | EngineError::StateShape { .. }
            | EngineError::ResumeWithInitial
            | EngineError::ResumeModelMismatch { .. }
            | EngineError::ResumeStepIndexTooLarge { .. }
            | EngineError::SessionKeyConflict { .. }
            | EngineError::StepRowCount { .. }
            | EngineError::StepInputShape { .. }
            | EngineError::StepIndexMismatch { .. }
            | EngineError::StepIndexUnconfirmed { .. }
            | EngineError::AlreadyAppliedReplyNotKept { .. }
            | EngineError::StepIndexOverflow { .. }
            | EngineError::PredictSequenceCount { .. }
            | EngineError::PredictStepCount { .. }
            | EngineError::PredictInputShape { .. }
            | EngineError::PredictTooLarge { .. }
            | EngineError::SessionModelNotServed { .. }
            | EngineError::BadSnapshot(_)
            | EngineError::ModelInput(_) => Kind::InvalidArg,
            // Triton's full queues are UNAVAILABLE ("exceeds maximum queue size").
            EngineError::SessionLimit { .. }
            | EngineError::QueueFull { .. }
            | EngineError::ShuttingDown
            | EngineError::WorkerStopped { .. }
            | EngineError::WorkerDroppedRequest { .. }
            | EngineError::StoreUnavailable { .. }
            | EngineError::SessionStore(_)
            | EngineError::ModelDirUnreadable { .. } => Kind::Unavailable,
            EngineError::WorkerPanicked { .. } | EngineError::Internal(_) => Kind::Internal,
            EngineError::Training(_) => Kind::Internal,
        };
        TritonError::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_tritons_grpc_and_http_tables() {
        let cases = [
            (Kind::InvalidArg, tonic::Code::InvalidArgument, 400),
            (Kind::NotFound, tonic::Code::NotFound, 404),
            (Kind::Unavailable, tonic::Code::Unavailable, 503),
            (Kind::Unsupported, tonic::Code::Unimplemented, 501),
            (Kind::AlreadyExists, tonic::Code::AlreadyExists, 400),
            (Kind::Internal, tonic::Code::Internal, 500),
        ];
        for (kind, code, http) in cases {
            let e = TritonError::new(kind, "m");
            assert_eq!((e.code(), e.http_status()), (code, http), "{kind:?}");
        }
        let full = TritonError::from(EngineError::QueueFull {
            model: "m/1".into(),
            capacity: 1,
        });
        assert_eq!(full.code(), tonic::Code::Unavailable);
        let gone = TritonError::from(EngineError::ModelNotFound("x".into()));
        assert_eq!(
            (gone.code(), gone.message.as_str()),
            (tonic::Code::NotFound, "model 'x' not found")
        );
    }
}
