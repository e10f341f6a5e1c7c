//! Reading request bodies within the byte limit, and finding the image in them.

use crate::budget::{body_bytes, BodyBudget, BodyShare};
use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{HeaderMap, StatusCode};
use std::sync::Arc;

/// An uploaded image: its bytes and a name for error messages.
pub struct Upload {
    /// The file name the client gave, or `upload`.
    pub name: String,
    /// The encoded image.
    pub bytes: Bytes,
}

/// 413 `body_too_large`: the body is (or is declared) over `limit` bytes.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "request body is over the limit of {limit} bytes ({:.1} MB; the server's --max-body-mb)",
            limit as f64 / (1 << 20) as f64
        ),
    )
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes: a declared
/// `Content-Length` over the limit is refused before reading, a chunked body while reading, so
/// no more than `limit` bytes are ever buffered. A POST with neither `Content-Length` nor
/// `Transfer-Encoding` gets 411.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    read_within_budget(headers, body, limit, None).await
}

/// The server is holding as much request data as its budget allows.
pub fn memory_full() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_budget_full",
            "the server holds as much request data as its memory budget allows (--max-inflight-mb); retry shortly",
        )
    }
}

/// [`read_limited`], with the body's bytes taken from `budget` (503 [`memory_full`] when they
/// do not fit: before reading for a declared length, while reading for a chunked body). The
/// returned `Bytes` hold their share until the last of them (e.g. a multipart part) is dropped.
/// The body is read into one buffer of its declared size, not collected and copied.
pub async fn read_within_budget(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    budget: Option<&Arc<BodyBudget>>,
) -> Result<Bytes, ApiError> {
    let declared = match headers.get(CONTENT_LENGTH) {
        Some(v) => {
            let declared: u64 = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("bad_content_length", "Content-Length is not a number")
                })?;
            if declared > limit as u64 {
                return Err(too_large(limit));
            }
            declared as usize
        }
        None if !headers.contains_key(TRANSFER_ENCODING) => {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send the image with a Content-Length header or chunked transfer encoding",
            ));
        }
        None => 0,
    };
    let mut share = budget.map(|b| b.share());
    let mut reserved = 0usize;
    let take = |share: &mut Option<BodyShare>, reserved: &mut usize, upto: usize| {
        if let (Some(b), Some(s)) = (budget, share.as_mut()) {
            if upto > *reserved {
                if !b.grow(s, (upto - *reserved) as u64) {
                    return Err(memory_full());
                }
                *reserved = upto;
            }
        }
        Ok(())
    };
    take(&mut share, &mut reserved, declared)?;
    let mut data = Vec::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "incomplete_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        let len = data.len() + chunk.len();
        if len > limit {
            return Err(too_large(limit));
        }
        take(&mut share, &mut reserved, len)?;
        data.extend_from_slice(&chunk);
    }
    Ok(match share {
        Some(s) => body_bytes(data, s),
        None => Bytes::from(data),
    })
}

/// What the `Content-Type` says the body is.
pub enum BodyKind {
    /// `multipart/form-data` with this boundary.
    Multipart(String),
    /// The image itself (`image/*` or `application/octet-stream`).
    Raw,
}

/// Classifies the request's `Content-Type`, or answers 415 (400 for a multipart without boundary).
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_string();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "multipart/form-data" {
        let boundary = multer::parse_boundary(&ct).map_err(|_| {
            ApiError::bad_request("bad_multipart", "multipart/form-data without a boundary")
        })?;
        return Ok(BodyKind::Multipart(boundary));
    }
    if essence.starts_with("image/") || essence == "application/octet-stream" {
        return Ok(BodyKind::Raw);
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "Content-Type '{}' is not accepted: send multipart/form-data with a field 'file', \
             or the image itself as image/* (e.g. curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg')",
            if ct.is_empty() { "(none)" } else { &ct }
        ),
    ))
}

/// The parts of a multipart body that carry files: those named `field`, or (with `None`) every
/// part that has a file name or is named `file`/`files`. At most `max_parts`.
pub async fn multipart_files(
    body: Bytes,
    boundary: String,
    field: Option<&str>,
    max_parts: usize,
) -> Result<Vec<Upload>, ApiError> {
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    loop {
        let next = mp.next_field().await.map_err(|e| {
            ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
        })?;
        let Some(part) = next else { break };
        let name = part.name().map(str::to_string);
        let file_name = part.file_name().map(str::to_string);
        let wanted = match field {
            Some(f) => name.as_deref() == Some(f),
            None => file_name.is_some() || matches!(name.as_deref(), Some("file" | "files")),
        };
        let bytes = part.bytes().await.map_err(|e| {
            ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
        })?;
        if !wanted {
            continue;
        }
        if out.len() == max_parts {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_parts",
                format!("at most {max_parts} images per request"),
            ));
        }
        out.push(Upload {
            name: file_name.or(name).unwrap_or_else(|| "upload".into()),
            bytes,
        });
    }
    Ok(out)
}

/// The one image of a classify/cam/predict request: multipart field `file`, or the raw body.
pub async fn single_image(kind: BodyKind, body: Bytes) -> Result<Upload, ApiError> {
    match kind {
        BodyKind::Raw => Ok(Upload {
            name: "upload".into(),
            bytes: body,
        }),
        BodyKind::Multipart(boundary) => multipart_files(body, boundary, Some("file"), 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ApiError::bad_request(
                    "missing_file",
                    "the multipart body has no field named 'file'",
                )
            }),
    }
}
