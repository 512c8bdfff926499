//! The request-body extractor and the error type every refusal goes through.
//!
//! Decoding is split from extraction because the decoded request borrows node names and raw
//! Node objects from the body bytes, which an extractor cannot hand out.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// A JSON request body: content type checked, size bounded by the router's body limit
/// (`axum::extract::DefaultBodyLimit`), not empty.
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
        // Tracking the path costs on every value (thousands of node names), so the body is
        // decoded plainly first and only a body that fails is decoded again for the path.
        let mut de = serde_json::Deserializer::from_slice(&self.0);
        if let Ok(value) = T::deserialize(&mut de)
            && de.end().is_ok()
        {
            return Ok(value);
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
