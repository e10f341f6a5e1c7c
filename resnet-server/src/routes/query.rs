//! The query string: `a=1&b=2`, undecoded (the parameters are numbers and names).

use crate::error::ApiError;

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

    /// An integer in `min..=max`, `default` when absent; anything else is 400 `bad_parameter`.
    pub(crate) fn int(
        &self,
        key: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_parameter",
                        format!("{key} must be an integer from {min} to {max}, got '{v}'"),
                    )
                }),
        }
    }
}
