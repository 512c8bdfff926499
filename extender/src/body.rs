//! The request-body extractor, the router's bounded body reader ([`Intake`]), and the error
//! type every refusal goes through.
//!
//! Decoding is split from extraction because the decoded request borrows node names and raw
//! Node objects from the body bytes, which an extractor cannot hand out.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size (16 KiB) are read and answered on the thread that serves the
/// connection; larger ones wait for one of [`LARGE_BODIES_AT_ONCE`] turns and are decoded
/// and answered on tokio's blocking pool.
///
/// A small request (a pod and some hundred node names) costs tens of microseconds to decode
/// and answer, less than handing it to another thread; a body at the limit costs
/// milliseconds, which a small request queued behind it on the serving thread would wait.
pub const INLINE_BODY_LIMIT: usize = 16 * 1024;

/// How many bodies over [`INLINE_BODY_LIMIT`] are read, decoded and answered at a time;
/// the others wait, unread (the client's data stays in the socket buffers).
///
/// Together with the body limit this bounds the memory requests take: at most this many
/// bodies of up to the limit each, and what their decoding holds, which
/// [`MAX_CANDIDATES`](crate::MAX_CANDIDATES) and
/// [`MAX_CLAIM_VOLUMES`](crate::MAX_CLAIM_VOLUMES) bound. kube-scheduler sends one request
/// at a time.
pub const LARGE_BODIES_AT_ONCE: usize = 2;

/// How long a large body may take to arrive once its turn came; after that it is refused
/// with 408 and its turn goes to the next.
///
/// kube-scheduler's own `httpTimeout` is shorter (1 s in stowage's shipped configuration),
/// so a body still arriving after this is one it has given up on; without a deadline, a
/// client sending slowly would keep a turn for good.
pub const LARGE_BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A JSON request body: content type checked, not empty.
///
/// As an extractor its size is bounded by `axum::extract::DefaultBodyLimit`; the router's
/// own routes read bodies with their configured limit and turns instead
/// ([`RouterConfig::body_limit`](crate::RouterConfig::body_limit)).
#[derive(Clone, Debug)]
pub struct JsonBody(pub Bytes);

/// A refused request: the status and a reason, sent as `{"Error": "<reason>"}`.
///
/// The `Error` key is the one every extender result type carries, so a client decoding the
/// body as a result type sees the reason too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

/// How the router reads request bodies: at most `limit` bytes, and large bodies only with a
/// turn from `large`.
#[derive(Clone, Debug)]
pub(crate) struct Intake {
    limit: usize,
    /// The setting that raises `limit`, named in the 413 message.
    limit_setting: Option<String>,
    large: Arc<Semaphore>,
}

/// A request body read by [`Intake::read`], with the turn it holds when it is large.
pub(crate) struct ReadBody {
    pub(crate) body: JsonBody,
    /// Held while the body is decoded and answered; `None` for a body answered inline.
    pub(crate) turn: Option<OwnedSemaphorePermit>,
}

// === impl Intake ===

impl Intake {
    pub(crate) fn new(limit: usize, limit_setting: Option<String>) -> Self {
        Self {
            limit,
            limit_setting,
            large: Arc::new(Semaphore::new(LARGE_BODIES_AT_ONCE)),
        }
    }

    /// Reads the body of `req`: content type checked, at most the limit (a declared
    /// `Content-Length` over it is refused before a byte is read; a streamed body is cut off
    /// at it), not empty. A body over [`INLINE_BODY_LIMIT`] (declared, or found while
    /// reading) first waits for a turn, then has [`LARGE_BODY_DEADLINE`] to arrive.
    pub(crate) async fn read(&self, req: Request) -> Result<ReadBody, ApiError> {
        check_content_type(req.headers())?;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limit as u64) {
            return Err(self.too_large());
        }
        let declared = declared.map_or(0, |n| n as usize);
        let mut turn = None;
        let mut deadline = None;
        if declared > INLINE_BODY_LIMIT {
            turn = Some(self.turn().await?);
            deadline = Some(tokio::time::Instant::now() + LARGE_BODY_DEADLINE);
        }
        let mut buf = Vec::with_capacity(declared);
        let mut body = req.into_body();
        loop {
            let frame = match deadline {
                None => body.frame().await,
                Some(at) => tokio::time::timeout_at(at, body.frame())
                    .await
                    .map_err(|_| self.too_slow())?,
            };
            let Some(frame) = frame else { break };
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let len = buf.len() + data.len();
            if len > self.limit {
                return Err(self.too_large());
            }
            if len > INLINE_BODY_LIMIT && turn.is_none() {
                turn = Some(self.turn().await?);
                deadline = Some(tokio::time::Instant::now() + LARGE_BODY_DEADLINE);
            }
            buf.extend_from_slice(&data);
        }
        if buf.is_empty() {
            return Err(ApiError::bad_request(
                "empty request body; expected a JSON object",
            ));
        }
        Ok(ReadBody {
            body: JsonBody(Bytes::from(buf)),
            turn,
        })
    }

    async fn turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.large.clone().acquire_owned().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the extender is shutting down",
            )
        })
    }

    fn too_large(&self) -> ApiError {
        let raise = match &self.limit_setting {
            Some(setting) => format!("; raise {setting} if the scheduler sends more"),
            None => String::new(),
        };
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body over the length limit of {} bytes; kube-scheduler sends about \
                 100 KiB for 5,000 nodes with nodeCacheCapable: true, and whole Node objects \
                 (10-30 KiB each) without it{raise}",
                self.limit
            ),
        )
    }

    fn too_slow(&self) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body still arriving after {} s; bodies over {} KiB must arrive within \
                 that once read",
                LARGE_BODY_DEADLINE.as_secs(),
                INLINE_BODY_LIMIT / 1024
            ),
        )
    }
}

// === impl JsonBody ===

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "empty request body; expected a JSON object",
            ));
        }
        Ok(Self(bytes))
    }
}

impl JsonBody {
    /// Decodes the body as `T`, borrowing from it where `T` does. `what` names the expected
    /// document in the error, which also carries the JSON path of the offending value.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self, what: &str) -> Result<T, ApiError> {
        self.decode_text(std::str::from_utf8(&self.0).ok(), what)
    }

    /// [`Self::decode`], with the body already checked as text: `text` is the body, or
    /// `None` where it is not UTF-8.
    pub(crate) fn decode_text<'a, T: Deserialize<'a>>(
        &'a self,
        text: Option<&'a str>,
        what: &str,
    ) -> Result<T, ApiError> {
        // Tracking the path costs on every value (thousands of node names), so the body is
        // decoded plainly first and only a body that fails is decoded again for the path.
        // The plain pass reads the body as text checked once, which spares serde_json a
        // check of each string it borrows.
        if let Some(text) = text {
            let mut de = serde_json::Deserializer::from_str(text);
            if let Ok(value) = T::deserialize(&mut de)
                && de.end().is_ok()
            {
                return Ok(value);
            }
        }
        self.decode_with_path(what)
    }

    fn decode_with_path<'a, T: Deserialize<'a>>(&'a self, what: &str) -> Result<T, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(&self.0);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| decode_error(what, e))?;
        de.end()
            .map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))?;
        Ok(value)
    }
}

fn decode_error(what: &str, e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." {
        ApiError::bad_request(format!("invalid {what}: {inner}"))
    } else {
        ApiError::bad_request(format!("invalid {what}: at {path}: {inner}"))
    }
}

/// Accepts `application/json`, with parameters (`; charset=utf-8`) and `+json` suffixes, as
/// kube-scheduler always sends `Content-Type: application/json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type("missing"));
    };
    let Ok(value) = value.to_str() else {
        return Err(ApiError::unsupported_media_type("not ASCII"));
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let json = essence.split_once('/').is_some_and(|(ty, sub)| {
        ty.eq_ignore_ascii_case("application")
            && (sub.eq_ignore_ascii_case("json")
                || sub.len() > 5
                    && sub
                        .get(sub.len() - 5..)
                        .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
    });
    if json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(value))
    }
}

// === impl ApiError ===

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {got:?} is not supported; expected application/json"),
        )
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason given in the body.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "Error")]
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
        };
        match serde_json::to_vec(&body) {
            Ok(json) => (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            // Encoding a struct with one string field cannot fail; fall back to text anyway.
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_accepted() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert_eq!(check_content_type(&with_content_type(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn other_or_missing_content_types_are_unsupported() {
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "+json",
        ] {
            let err = check_content_type(&with_content_type(bad)).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
        }
        let err = check_content_type(&HeaderMap::new()).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn decode_errors_name_the_json_path() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            #[serde(rename = "NodeNames")]
            _names: Vec<String>,
        }
        let body = JsonBody(Bytes::from_static(br#"{"NodeNames": "a"}"#));
        let err = body.decode::<Doc>("ExtenderArgs").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.message().contains("at NodeNames:"), "{}", err.message());
    }

    #[test]
    fn trailing_garbage_after_the_document_is_refused() {
        let body = JsonBody(Bytes::from_static(b"{} x"));
        let err = body
            .decode::<serde_json::Value>("ExtenderArgs")
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
