//! The DeepStack / CodeProject.AI Server API: `POST /v1/vision/scene` (what Home Assistant's
//! scene component, AITool for Blue Iris and the CodeProject.AI SDKs call), plus
//! `/v1/vision/custom/list` and `/v1/status/updateavailable` answered as CodeProject.AI does.
//! Errors keep that API's shape, `{"success": false, "error": ...}`, with a 4xx/5xx status.

use super::auth::constant_time_eq;
use super::classify::classify_one;
use super::respond::json_response;
use super::AppState;
use crate::api::{CustomModels, SceneResult, UpdateStatus, VersionInfo, VisionError};
use crate::body::{read_limited, Upload};
use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use resnet_core::postprocess::softmax;
use std::sync::Arc;
use std::time::Instant;

/// The label as a stable token: lower case, every run of characters other than letters and
/// digits turned into one `_`, none at the ends (`"great white shark"` -> `great_white_shark`,
/// `"jack-o'-lantern"` -> `jack_o_lantern`). Two ImageNet classes share a name ("crane",
/// "maillot"), so the answer carries the class `index` too.
pub fn label_token(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    let mut gap = false;
    for c in label.chars() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// The DeepStack error body with the error's status (and `Retry-After` when it has one).
pub(super) fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut resp = json_response(
        e.status,
        &VisionError {
            success: false,
            error: &e.message,
            code: e.code,
        },
    );
    if let Some(s) = e.retry_after {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

fn no_image() -> ApiError {
    ApiError::bad_request("missing_file", "No valid image file found")
}

/// What a scene request carries: the image and the `api_key` field.
struct SceneForm {
    image: Option<Upload>,
    api_key: Option<String>,
}

async fn read_form(body: Bytes, boundary: String) -> Result<SceneForm, ApiError> {
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut form = SceneForm {
        image: None,
        api_key: None,
    };
    let malformed = |e: multer::Error| {
        ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
    };
    while let Some(part) = mp.next_field().await.map_err(malformed)? {
        let name = part.name().map(str::to_string);
        let file_name = part.file_name().map(str::to_string);
        let bytes = part.bytes().await.map_err(malformed)?;
        match name.as_deref() {
            Some("image") if form.image.is_none() => {
                form.image = Some(Upload {
                    name: file_name.unwrap_or_else(|| "image".into()),
                    bytes,
                })
            }
            Some("api_key") => form.api_key = Some(String::from_utf8_lossy(&bytes).into_owned()),
            // min_confidence and anything else: ignored, as DeepStack does for scenes.
            _ => {}
        }
    }
    Ok(form)
}

/// With a server token, the request must carry it as the form field `api_key` (DeepStack's
/// way) or as `Authorization: Bearer` (this server's way).
fn check_key(
    state: &AppState,
    req_auth: Option<&str>,
    form_key: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = &state.config.token else {
        return Ok(());
    };
    let bearer = req_auth
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = [form_key, bearer]
        .into_iter()
        .flatten()
        .any(|k| constant_time_eq(k.as_bytes(), token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            if form_key.is_some() {
                "bad_token"
            } else {
                "missing_token"
            },
            "Incorrect api key",
        ))
    }
}

pub(super) async fn scene(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = req.into_parts();
    let auth = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ct = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).ok();
    let body = read_limited(&parts.headers, body, state.config.max_body_bytes).await?;
    let form = match boundary {
        Some(b) => read_form(body, b).await?,
        None => SceneForm {
            image: None,
            api_key: None,
        },
    };
    check_key(&state, auth.as_deref(), form.api_key.as_deref())?;
    let upload = form
        .image
        .filter(|u| !u.bytes.is_empty())
        .ok_or_else(no_image)?;
    let result = classify_one(&state, upload, "scene", started)
        .await
        .map_err(|e| {
            // DeepStack's message for anything that is not a readable image, with our detail.
            if e.status.is_client_error() && e.code != "image_too_large" {
                ApiError {
                    message: format!("No valid image file found ({})", e.message),
                    ..e
                }
            } else {
                e
            }
        })?;
    let logits = &result.done.logits;
    let probs = softmax(logits);
    let index = resnet_core::postprocess::top_k_indices(&probs, 1)
        .first()
        .copied()
        .unwrap_or(0);
    let name = state.model.labels.name(index);
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e3).round() as u64;
    Ok(json_response(
        StatusCode::OK,
        &SceneResult {
            success: true,
            label: label_token(name),
            confidence: probs[index],
            index,
            name: name.to_string(),
            duration: ms(started.elapsed()),
            process_ms: ms(started.elapsed()),
            inference_ms: ms(result.done.inference),
            synthetic_weights: state.model.info.synthetic_weights,
        },
    ))
}

pub(super) fn custom_list() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &CustomModels {
            success: true,
            models: Vec::new(),
            message: "resnet18-rs serves no custom detection models; scene recognition is /v1/vision/scene",
        },
    )
}

pub(super) fn update_available() -> Response<Full<Bytes>> {
    let parse = |s: &str| s.parse::<u32>().unwrap_or(0);
    let version = VersionInfo {
        major: parse(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: parse(env!("CARGO_PKG_VERSION_MINOR")),
        patch: parse(env!("CARGO_PKG_VERSION_PATCH")),
        pre_release: None,
        security_update: false,
        build: 0,
        file: None,
        release_notes: "resnet18-rs does not look for updates over the network".into(),
    };
    json_response(
        StatusCode::OK,
        &UpdateStatus {
            success: true,
            message: "No update available (this server does not check for updates)",
            version: version.clone(),
            current: version.clone(),
            latest: version,
            update_available: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::label_token;

    #[test]
    fn label_tokens_are_lower_case_words_joined_by_underscores() {
        assert_eq!(label_token("great white shark"), "great_white_shark");
        assert_eq!(label_token("jack-o'-lantern"), "jack_o_lantern");
        assert_eq!(label_token("  Band Aid, "), "band_aid");
        assert_eq!(label_token("tabby"), "tabby");
        let labels = resnet_core::labels::Labels::imagenet();
        for i in 0..labels.len() {
            let t = label_token(labels.name(i));
            assert!(!t.is_empty(), "class {i}");
            assert!(
                t.chars().all(|c| c == '_' || c.is_alphanumeric()) && !t.contains("__"),
                "class {i}: {t}"
            );
        }
    }
}
