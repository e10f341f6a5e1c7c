//! The query string: `a=1&b=2`, undecoded (the parameters are numbers and names).

use crate::error::ApiError;
use resnet_core::trace::MAX_SHEET_CHANNELS;

/// An integer query parameter: the handlers read it and the OpenAPI document describes it from
/// this one value, so the two cannot disagree on its name, default or range.
pub(crate) struct IntParam {
    /// The key in the query string.
    pub key: &'static str,
    /// The value when absent (`None`: absent means "not given", e.g. `class`).
    pub default: Option<usize>,
    /// The smallest value accepted.
    pub min: usize,
    /// The largest value accepted.
    pub max: usize,
    /// What it means, for the document.
    pub description: &'static str,
}

/// `top_k` of `/v1/classify`, `/v1/classify/batch` and `/v1/trace`.
pub(crate) const TOP_K: IntParam = IntParam {
    key: "top_k",
    default: Some(5),
    min: 1,
    max: 1000,
    description: "how many of the most probable classes to answer with",
};

/// `class` of `/v1/cam`.
pub(crate) const CAM_CLASS: IntParam = IntParam {
    key: "class",
    default: None,
    min: 0,
    max: 999,
    description: "the class whose activation map to draw (default: the most probable one)",
};

/// `maps` of `/v1/trace`.
pub(crate) const TRACE_MAPS: IntParam = IntParam {
    key: "maps",
    default: Some(0),
    min: 0,
    max: MAX_SHEET_CHANNELS,
    description: "the most active channels of each feature map to draw as a sprite sheet",
};

/// `stage_maps` of `/v1/trace`: tiles per stage of a recomputed block (absent: as many as
/// `maps`, at most the maximum).
pub(crate) const STAGE_MAPS: IntParam = IntParam {
    key: "stage_maps",
    default: None,
    min: 0,
    max: crate::explore::MAX_STAGE_CHANNELS,
    description: "the most active channels of each stage of a recomputed block (`block=`) to draw",
};

/// The parameters of one request, in order.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Splits `a=1&b=2`; a key without `=` has an empty value.
    pub(crate) fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                })
                .collect(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `param`'s value: absent gives its default (`None` when it has none); a value that is not
    /// an integer in its range is 400 `bad_parameter`.
    pub(crate) fn param(&self, param: &IntParam) -> Result<Option<usize>, ApiError> {
        let Some(v) = self.get(param.key) else {
            return Ok(param.default);
        };
        let (key, min, max) = (param.key, param.min, param.max);
        v.parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_parameter",
                    format!("{key} must be an integer from {min} to {max}, got '{v}'"),
                )
            })
    }

    /// `param`'s value, for a parameter that has a default.
    pub(crate) fn param_or_default(&self, param: &IntParam) -> Result<usize, ApiError> {
        Ok(self.param(param)?.unwrap_or(param.min))
    }
}
