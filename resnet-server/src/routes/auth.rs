//! `Authorization: Bearer TOKEN` when the server has a token.

use super::Route;
use crate::config::Config;
use crate::error::ApiError;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};

/// Checks the bearer token of a request for `route` (constant-time compare). Public routes and
/// servers without a token let everything through.
pub(super) fn authorize<B>(
    config: &Config,
    route: Route,
    req: &Request<B>,
) -> Result<(), ApiError> {
    let Some(token) = &config.token else {
        return Ok(());
    };
    if route.is_public() {
        return Ok(());
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this server requires 'Authorization: Bearer <token>'",
        )),
    }
}

/// Equal bytes, in time that depends only on the lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
