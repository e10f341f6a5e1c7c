//! The KServe / Open Inference Protocol v2 wire format, without HTTP: the request and response
//! bodies, the binary tensor extension and the classification extension.
//!
//! A request body is a JSON header, optionally followed by raw tensor bytes: with the binary
//! tensor extension the HTTP header `Inference-Header-Content-Length` gives the JSON's length,
//! and each input whose `parameters.binary_data_size` is set takes that many bytes from what
//! follows, in input order. FP32 tensors travel as little-endian floats; a BYTES tensor as its
//! elements one after another, each a 4-byte little-endian length and then the bytes (that is how
//! `tritonclient` sends raw JPEG/PNG files). In JSON form FP32 data is a (flat or nested) array of
//! numbers and BYTES data an array of base64 strings, since encoded images are not UTF-8.
//!
//! [`parse_infer_request`] checks everything that can be checked without the model (sizes,
//! shapes, datatypes, names) and never panics: it is a fuzz target.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// The name the model is served under.
pub const MODEL_NAME: &str = "resnet18";
/// The one model version.
pub const MODEL_VERSION: &str = "1";
/// The preprocessed input: `FP32 [N, 3, 224, 224]`.
pub const INPUT_TENSOR: &str = "input";
/// The encoded-image input: `BYTES [N]` (or `[N, 1]`), preprocessed server-side.
pub const IMAGE_TENSOR: &str = "image";
/// The raw network output: `FP32 [N, 1000]`.
pub const LOGITS_TENSOR: &str = "logits";
/// The softmax of the logits: `FP32 [N, 1000]`.
pub const PROBABILITIES_TENSOR: &str = "probabilities";
/// The binary tensor extension's HTTP header.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why a v2 request cannot be served: the message the client gets (as `{"error": ...}`, 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad<T>(message: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(message.into()))
}

/// `parameters` of a request, an input or an output (free-form; the known keys are read out).
pub type Parameters = BTreeMap<String, Value>;

/// One input of the JSON header.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct InputHeader {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// `FP32`, `BYTES`, ...
    pub datatype: String,
    /// `binary_data_size` for the binary extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// The data in JSON form (absent when it travels as binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct OutputHeader {
    /// `logits` or `probabilities`.
    pub name: String,
    /// `binary_data` (bool), `classification` (top-k count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
}

/// The JSON header of `POST /v2/models/{name}/infer`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct InferRequestHeader {
    /// Echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `binary_data_output` (bool) for every output not listed in `outputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Exactly one input, `input` or `image`.
    pub inputs: Vec<InputHeader>,
    /// The outputs wanted (default: both, as JSON unless `binary_data_output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputHeader>>,
}

/// The images of a request, in the form they came in.
#[derive(Clone, Debug, PartialEq)]
pub enum Images {
    /// Preprocessed tensors, `N * 3 * 224 * 224` floats.
    Tensors {
        /// N.
        count: usize,
        /// The floats, image after image.
        data: Vec<f32>,
    },
    /// Encoded image files, one per element.
    Encoded(Vec<Vec<u8>>),
}

impl Images {
    /// How many images.
    pub fn len(&self) -> usize {
        match self {
            Images::Tensors { count, .. } => *count,
            Images::Encoded(v) => v.len(),
        }
    }

    /// No image at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// The raw logits.
    Logits,
    /// Their softmax.
    Probabilities,
}

impl OutputKind {
    /// The tensor's name.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Logits => LOGITS_TENSOR,
            OutputKind::Probabilities => PROBABILITIES_TENSOR,
        }
    }

    fn from_name(name: &str) -> Result<OutputKind, WireError> {
        match name {
            LOGITS_TENSOR => Ok(OutputKind::Logits),
            PROBABILITIES_TENSOR => Ok(OutputKind::Probabilities),
            other => bad(format!(
                "unknown output '{other}': {MODEL_NAME} has '{LOGITS_TENSOR}' and '{PROBABILITIES_TENSOR}'"
            )),
        }
    }
}

/// One output as the client asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputRequest {
    /// Which tensor.
    pub kind: OutputKind,
    /// Sent as raw bytes after the JSON header rather than inside it.
    pub binary: bool,
    /// The classification extension: the top `k` classes as `"<value>:<index>:<label>"` strings.
    pub classification: Option<usize>,
}

/// A checked inference request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed.
    pub id: Option<String>,
    /// The input tensor's name (echoed in errors).
    pub input_name: String,
    /// The images.
    pub images: Images,
    /// The outputs, in the order to answer them.
    pub outputs: Vec<OutputRequest>,
}

fn flag(params: Option<&Parameters>, key: &str) -> Result<Option<bool>, WireError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => bad(format!(
            "parameter '{key}' must be true or false, got {other}"
        )),
    }
}

fn count(params: Option<&Parameters>, key: &str) -> Result<Option<u64>, WireError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => bad(format!(
                "parameter '{key}' must be a non-negative integer, got {v}"
            )),
        },
    }
}

/// Splits a request body into its JSON header and the binary data after it, as the
/// `Inference-Header-Content-Length` header (when present) says.
pub fn split_body<'a>(
    header_length: Option<&str>,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), WireError> {
    let Some(declared) = header_length else {
        return Ok((body, &[]));
    };
    let n: usize = match declared.trim().parse() {
        Ok(n) => n,
        Err(_) => {
            return bad(format!(
                "Inference-Header-Content-Length must be a byte count, got '{declared}'"
            ))
        }
    };
    if n > body.len() {
        return bad(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        ));
    }
    Ok(body.split_at(n))
}

/// Parses and checks an inference request: `header_length` is the value of
/// `Inference-Header-Content-Length`, if any; `max_images` bounds N (more is an error).
pub fn parse_infer_request(
    header_length: Option<&str>,
    body: &[u8],
    max_images: usize,
) -> Result<InferRequest, WireError> {
    let (json, mut binary) = split_body(header_length, body)?;
    let header: InferRequestHeader = serde_json::from_slice(json)
        .map_err(|e| WireError(format!("the request is not a v2 inference request: {e}")))?;
    let [input] = header.inputs.as_slice() else {
        return bad(format!(
            "{MODEL_NAME} takes exactly one input ('{INPUT_TENSOR}' FP32 [N,3,224,224] or \
             '{IMAGE_TENSOR}' BYTES [N]), got {}",
            header.inputs.len()
        ));
    };
    let binary_size = count(input.parameters.as_ref(), "binary_data_size")?;
    let raw = match binary_size {
        None => None,
        Some(size) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return bad(format!(
                    "input '{}' declares binary_data_size {size} but only {} bytes follow the JSON header",
                    input.name,
                    binary.len()
                ));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            Some(mine)
        }
    };
    if !binary.is_empty() {
        return bad(format!(
            "{} bytes follow the JSON header that no input claims (binary_data_size)",
            binary.len()
        ));
    }
    if raw.is_some() && input.data.is_some() {
        return bad(format!(
            "input '{}' has both JSON 'data' and binary_data_size",
            input.name
        ));
    }
    let images = match (input.name.as_str(), input.datatype.as_str()) {
        (INPUT_TENSOR, "FP32") => fp32_images(input, raw)?,
        (IMAGE_TENSOR, "BYTES") => bytes_images(input, raw)?,
        (INPUT_TENSOR | IMAGE_TENSOR, other) => {
            return bad(format!(
                "input '{}' must be {}, got datatype {other}",
                input.name,
                if input.name == INPUT_TENSOR {
                    "FP32"
                } else {
                    "BYTES"
                }
            ))
        }
        (other, _) => {
            return bad(format!(
                "unknown input '{other}': {MODEL_NAME} takes '{INPUT_TENSOR}' (FP32 [N,3,224,224]) \
                 or '{IMAGE_TENSOR}' (BYTES [N], encoded images)"
            ))
        }
    };
    if images.is_empty() {
        return bad("the request holds no image (N = 0)");
    }
    if images.len() > max_images {
        return bad(format!(
            "{} images in one request; this server takes at most {max_images}",
            images.len()
        ));
    }
    let outputs = outputs(&header)?;
    Ok(InferRequest {
        id: header.id,
        input_name: input.name.clone(),
        images,
        outputs,
    })
}

fn outputs(header: &InferRequestHeader) -> Result<Vec<OutputRequest>, WireError> {
    let all_binary = flag(header.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let Some(wanted) = &header.outputs else {
        return Ok([OutputKind::Logits, OutputKind::Probabilities]
            .into_iter()
            .map(|kind| OutputRequest {
                kind,
                binary: all_binary,
                classification: None,
            })
            .collect());
    };
    let mut out: Vec<OutputRequest> = Vec::with_capacity(wanted.len());
    for o in wanted {
        let kind = OutputKind::from_name(&o.name)?;
        if out.iter().any(|r| r.kind == kind) {
            return bad(format!("output '{}' is requested twice", o.name));
        }
        let params = o.parameters.as_ref();
        let classification = match count(params, "classification")? {
            None | Some(0) => None,
            Some(k) if k <= 1000 => Some(k as usize),
            Some(k) => return bad(format!("classification asks for {k} classes; at most 1000")),
        };
        out.push(OutputRequest {
            kind,
            binary: flag(params, "binary_data")?.unwrap_or(all_binary),
            classification,
        });
    }
    if out.is_empty() {
        return bad("'outputs' is empty: ask for 'logits' and/or 'probabilities', or omit it");
    }
    Ok(out)
}

/// The element count a shape describes, or an error for negative or overflowing dims.
fn elements(name: &str, shape: &[i64]) -> Result<usize, WireError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| {
            WireError(format!(
                "input '{name}' has a negative dimension in {shape:?}"
            ))
        })?;
        acc.checked_mul(d)
            .ok_or_else(|| WireError(format!("input '{name}' shape {shape:?} is too large")))
    })
}

const IMAGE_FLOATS: usize = 3 * 224 * 224;

fn fp32_images(input: &InputHeader, raw: Option<&[u8]>) -> Result<Images, WireError> {
    let shape = &input.shape;
    let n = match shape.as_slice() {
        [n, 3, 224, 224] if *n >= 0 => *n as usize,
        _ => {
            return bad(format!(
                "input '{INPUT_TENSOR}' must have shape [N,3,224,224] (preprocessed as by \
                 `resnet preprocess`), got {shape:?}; send encoded images as '{IMAGE_TENSOR}' BYTES [N]"
            ))
        }
    };
    let want = elements(&input.name, shape)?;
    let data: Vec<f32> = match raw {
        Some(bytes) => {
            if Some(bytes.len()) != want.checked_mul(4) {
                return bad(format!(
                    "input '{INPUT_TENSOR}' shape {shape:?} needs {want} floats ({} bytes) but \
                     binary_data_size is {}",
                    want.saturating_mul(4),
                    bytes.len()
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        None => {
            let Some(value) = &input.data else {
                return bad(format!(
                    "input '{INPUT_TENSOR}' has neither 'data' nor binary_data_size"
                ));
            };
            let mut out = Vec::with_capacity(want.min(IMAGE_FLOATS * 64));
            flatten_numbers(value, &mut out, want)?;
            if out.len() != want {
                return bad(format!(
                    "input '{INPUT_TENSOR}' shape {shape:?} needs {want} numbers, 'data' has {}",
                    out.len()
                ));
            }
            out
        }
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return bad(format!(
            "input '{INPUT_TENSOR}' element {i} is {} (not a finite number)",
            data[i]
        ));
    }
    Ok(Images::Tensors { count: n, data })
}

/// Appends the numbers of a nested array, refusing more than `limit` (a bound on memory).
fn flatten_numbers(value: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), WireError> {
    match value {
        Value::Number(n) => {
            if out.len() == limit {
                return bad("'data' has more numbers than the shape says");
            }
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| flatten_numbers(v, out, limit)),
        other => bad(format!(
            "FP32 'data' must hold numbers, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bytes_images(input: &InputHeader, raw: Option<&[u8]>) -> Result<Images, WireError> {
    let shape = &input.shape;
    let n = match shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => *n as usize,
        _ => {
            return bad(format!(
                "input '{IMAGE_TENSOR}' must have shape [N] or [N,1] (one encoded image per element), got {shape:?}"
            ))
        }
    };
    let elems = match raw {
        Some(bytes) => deserialize_bytes_tensor(bytes)?,
        None => {
            let Some(value) = &input.data else {
                return bad(format!(
                    "input '{IMAGE_TENSOR}' has neither 'data' nor binary_data_size"
                ));
            };
            let mut strings = Vec::new();
            flatten_strings(value, &mut strings)?;
            strings
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| {
                            WireError(format!(
                                "input '{IMAGE_TENSOR}' element {i} is not base64 ({e}); in JSON \
                                 form BYTES elements are base64 strings of the image files"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    if elems.len() != n {
        return bad(format!(
            "input '{IMAGE_TENSOR}' shape {shape:?} says {n} images but the data holds {}",
            elems.len()
        ));
    }
    Ok(Images::Encoded(elems))
}

fn flatten_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) -> Result<(), WireError> {
    match value {
        Value::String(s) => {
            out.push(s);
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| flatten_strings(v, out)),
        other => bad(format!(
            "BYTES 'data' must hold base64 strings, found {}",
            json_kind(other)
        )),
    }
}

/// The elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes.
pub fn deserialize_bytes_tensor(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return bad(format!(
                "BYTES element {} is cut short: {} bytes left where a 4-byte length should be",
                out.len(),
                raw.len()
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return bad(format!(
                "BYTES element {} says it has {len} bytes but only {} follow",
                out.len(),
                rest.len()
            ));
        }
        let (elem, rest) = rest.split_at(len);
        out.push(elem.to_vec());
        raw = rest;
    }
    Ok(out)
}

/// Joins elements as a binary BYTES tensor (the inverse of [`deserialize_bytes_tensor`]).
pub fn serialize_bytes_tensor<T: AsRef<[u8]>>(elems: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elems.iter().map(|e| 4 + e.as_ref().len()).sum());
    for e in elems {
        let e = e.as_ref();
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// One output tensor of the response header.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputTensor {
    /// `logits` or `probabilities`.
    pub name: String,
    /// `FP32`, or `BYTES` for the classification extension.
    pub datatype: &'static str,
    /// `[N, 1000]`, or `[N, k]` for the classification extension.
    pub shape: Vec<usize>,
    /// `binary_data_size` when the data follows the JSON header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<&'static str, usize>>,
    /// The data in JSON form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// The JSON header of an inference response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InferResponseHeader {
    /// `resnet18`.
    pub model_name: &'static str,
    /// `1`.
    pub model_version: &'static str,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs asked for.
    pub outputs: Vec<OutputTensor>,
}

/// A response body: the JSON header and the binary data after it; `header_length` is the value
/// for `Inference-Header-Content-Length` when there is binary data.
pub struct EncodedResponse {
    /// The whole body.
    pub body: Vec<u8>,
    /// The JSON header's length, when binary data follows it.
    pub header_length: Option<usize>,
}

/// Builds the response for `request` from each image's 1000 logits. `label` names class `i`.
pub fn encode_response<'l>(
    request: &InferRequest,
    logits: &[Vec<f32>],
    label: impl Fn(usize) -> &'l str,
) -> EncodedResponse {
    let n = logits.len();
    let mut binary = Vec::new();
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for o in &request.outputs {
        let rows: Vec<Vec<f32>> = match o.kind {
            OutputKind::Logits => logits.to_vec(),
            OutputKind::Probabilities => logits
                .iter()
                .map(|l| resnet_core::postprocess::softmax(l))
                .collect(),
        };
        let (datatype, shape, json, raw) = match o.classification {
            Some(k) => {
                let k = k.min(rows.first().map_or(0, Vec::len));
                let strings: Vec<String> = rows
                    .iter()
                    .flat_map(|row| {
                        resnet_core::postprocess::top_k_indices(row, k)
                            .into_iter()
                            .map(|i| format!("{}:{i}:{}", row[i], label(i)))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let raw = o.binary.then(|| serialize_bytes_tensor(&strings));
                ("BYTES", vec![n, k], Value::from(strings), raw)
            }
            None => {
                let width = rows.first().map_or(0, Vec::len);
                let flat: Vec<f32> = rows.into_iter().flatten().collect();
                let raw = o.binary.then(|| {
                    flat.iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>()
                });
                ("FP32", vec![n, width], Value::from(flat), raw)
            }
        };
        let (parameters, data) = match raw {
            Some(raw) => {
                let size = raw.len();
                binary.extend_from_slice(&raw);
                (Some(BTreeMap::from([("binary_data_size", size)])), None)
            }
            None => (None, Some(json)),
        };
        outputs.push(OutputTensor {
            name: o.kind.name().to_string(),
            datatype,
            shape,
            parameters,
            data,
        });
    }
    let header = InferResponseHeader {
        model_name: MODEL_NAME,
        model_version: MODEL_VERSION,
        id: request.id.clone(),
        outputs,
    };
    let mut body = serde_json::to_vec(&header).unwrap_or_else(|_| b"{}".to_vec());
    let header_length = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    EncodedResponse {
        body,
        header_length,
    }
}

/// A tensor in the metadata.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    /// Its name.
    pub name: &'static str,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape, `-1` for the batch dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/resnet18`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    /// `resnet18`.
    pub name: &'static str,
    /// `["1"]`.
    pub versions: Vec<&'static str>,
    /// What runs it.
    pub platform: &'static str,
    /// The two alternative inputs (a request gives exactly one).
    pub inputs: Vec<TensorMetadata>,
    /// The outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// The model's metadata.
pub fn model_metadata() -> ModelMetadata {
    ModelMetadata {
        name: MODEL_NAME,
        versions: vec![MODEL_VERSION],
        platform: "resnet18-rs",
        inputs: vec![
            TensorMetadata {
                name: INPUT_TENSOR,
                datatype: "FP32",
                shape: vec![-1, 3, 224, 224],
            },
            TensorMetadata {
                name: IMAGE_TENSOR,
                datatype: "BYTES",
                shape: vec![-1],
            },
        ],
        outputs: [LOGITS_TENSOR, PROBABILITIES_TENSOR]
            .into_iter()
            .map(|name| TensorMetadata {
                name,
                datatype: "FP32",
                shape: vec![-1, 1000],
            })
            .collect(),
    }
}

/// `GET /v2`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `resnet18-rs`.
    pub name: &'static str,
    /// The crate version.
    pub version: &'static str,
    /// The protocol extensions supported.
    pub extensions: Vec<&'static str>,
}

/// The server's metadata.
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "resnet18-rs",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec![
            "binary_tensor_data",
            "classification",
            "model_configuration",
        ],
    }
}

/// One tensor of Triton's model configuration.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConfigTensor {
    /// Its name.
    pub name: &'static str,
    /// `TYPE_FP32`, `TYPE_STRING`.
    pub data_type: &'static str,
    /// Its dims without the batch dimension.
    pub dims: Vec<i64>,
    /// The inputs are alternatives: each is optional.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Triton's dynamic batching settings, as reported.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DynamicBatching {
    /// How long the first request waits for others, in microseconds.
    pub max_queue_delay_microseconds: u64,
}

/// `GET /v2/models/resnet18/config` (Triton's model configuration, which `perf_analyzer` reads).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelConfig {
    /// `resnet18`.
    pub name: &'static str,
    /// What runs it.
    pub platform: &'static str,
    /// Most images per forward pass (the server's `--max-batch`).
    pub max_batch_size: usize,
    /// The inputs.
    pub input: Vec<ConfigTensor>,
    /// The outputs.
    pub output: Vec<ConfigTensor>,
    /// The dynamic batcher's settings.
    pub dynamic_batching: DynamicBatching,
}

/// The model configuration for a server batching up to `max_batch` images, waiting `wait_us`.
pub fn model_config(max_batch: usize, wait_us: u64) -> ModelConfig {
    let tensor = |name, data_type, dims: &[i64], optional| ConfigTensor {
        name,
        data_type,
        dims: dims.to_vec(),
        optional,
    };
    ModelConfig {
        name: MODEL_NAME,
        platform: "resnet18-rs",
        max_batch_size: max_batch,
        input: vec![
            tensor(INPUT_TENSOR, "TYPE_FP32", &[3, 224, 224], true),
            tensor(IMAGE_TENSOR, "TYPE_STRING", &[1], true),
        ],
        output: vec![
            tensor(LOGITS_TENSOR, "TYPE_FP32", &[1000], false),
            tensor(PROBABILITIES_TENSOR, "TYPE_FP32", &[1000], false),
        ],
        dynamic_batching: DynamicBatching {
            max_queue_delay_microseconds: wait_us,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn binary_bytes_input_is_split_into_its_elements() {
        let elems = [b"\xff\xd8jpeg".to_vec(), Vec::new(), b"png".to_vec()];
        let raw = serialize_bytes_tensor(&elems);
        assert_eq!(raw.len(), 4 * 3 + 6 + 3);
        let header = json_body(json!({
            "id": "r1",
            "inputs": [{"name": "image", "shape": [3, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": raw.len()}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": true, "classification": 2}}]
        }));
        let mut body = header.clone();
        body.extend_from_slice(&raw);
        let req = parse_infer_request(Some(&header.len().to_string()), &body, 8).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.images, Images::Encoded(elems.to_vec()));
        assert_eq!(
            req.outputs,
            [OutputRequest {
                kind: OutputKind::Probabilities,
                binary: true,
                classification: Some(2)
            }]
        );
    }

    #[test]
    fn json_fp32_input_may_be_nested_and_defaults_to_both_outputs() {
        let nested: Vec<Vec<Vec<f32>>> = vec![vec![vec![0.5; 224]; 224]; 3];
        let body = json_body(json!({
            "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [nested]}],
            "parameters": {"binary_data_output": true}
        }));
        let req = parse_infer_request(None, &body, 8).unwrap();
        match &req.images {
            Images::Tensors { count, data } => {
                assert_eq!(*count, 1);
                assert_eq!(data.len(), IMAGE_FLOATS);
                assert!(data.iter().all(|&v| v == 0.5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(req.outputs.len(), 2);
        assert!(req
            .outputs
            .iter()
            .all(|o| o.binary && o.classification.is_none()));
    }

    #[test]
    fn binary_fp32_input_is_little_endian() {
        let floats: Vec<f32> = (0..IMAGE_FLOATS).map(|i| i as f32 * 0.25).collect();
        let raw: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = json_body(json!({
            "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                        "parameters": {"binary_data_size": raw.len()}}]
        }));
        let mut body = header.clone();
        body.extend_from_slice(&raw);
        let req = parse_infer_request(Some(&header.len().to_string()), &body, 8).unwrap();
        assert_eq!(
            req.images,
            Images::Tensors {
                count: 1,
                data: floats
            }
        );
    }

    fn error_of(header_length: Option<&str>, body: &[u8]) -> String {
        parse_infer_request(header_length, body, 4)
            .expect_err("must be refused")
            .0
    }

    #[test]
    fn malformed_requests_get_a_message_naming_the_problem() {
        let bytes_input = |size: usize, shape: Value| {
            json_body(
                json!({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                         "parameters": {"binary_data_size": size}}]}),
            )
        };
        // Header length past the body.
        assert!(error_of(Some("999"), b"{}").contains("only 2 bytes"));
        assert!(error_of(Some("x"), b"{}").contains("byte count"));
        // binary_data_size past the data.
        let h = bytes_input(10, json!([1]));
        assert!(error_of(Some(&h.len().to_string()), &h).contains("only 0 bytes follow"));
        // An element length past the data.
        let mut body = bytes_input(6, json!([1]));
        let hl = body.len().to_string();
        body.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        assert!(error_of(Some(&hl), &body).contains("says it has 200 bytes"));
        // A cut length prefix.
        let mut body = bytes_input(2, json!([1]));
        let hl = body.len().to_string();
        body.extend_from_slice(&[1, 0]);
        assert!(error_of(Some(&hl), &body).contains("cut short"));
        // Shape and element count disagree.
        let raw = serialize_bytes_tensor(&[b"a", b"b"]);
        let mut body = bytes_input(raw.len(), json!([3]));
        let hl = body.len().to_string();
        body.extend_from_slice(&raw);
        assert!(error_of(Some(&hl), &body).contains("says 3 images but the data holds 2"));
        // Bytes nobody claims.
        let mut body = bytes_input(raw.len(), json!([2]));
        let hl = body.len().to_string();
        body.extend_from_slice(&raw);
        body.push(0);
        assert!(error_of(Some(&hl), &body).contains("no input claims"));
        // Too many images.
        let raw = serialize_bytes_tensor(&[b"a"; 5]);
        let mut body = bytes_input(raw.len(), json!([5]));
        let hl = body.len().to_string();
        body.extend_from_slice(&raw);
        assert!(error_of(Some(&hl), &body).contains("at most 4"));
    }

    #[test]
    fn wrong_names_datatypes_shapes_and_values_are_refused() {
        let req = |input: Value| json_body(json!({"inputs": [input]}));
        let cases = [
            (
                json!({"name": "x", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}),
                "unknown input 'x'",
            ),
            (
                json!({"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}),
                "must be BYTES",
            ),
            (
                json!({"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0]}),
                "[N,3,224,224]",
            ),
            (
                json!({"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [1.0, 2.0]}),
                "needs 150528 numbers, 'data' has 2",
            ),
            (
                json!({"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": ["a"]}),
                "must hold numbers",
            ),
            (
                json!({"name": "input", "shape": [-1, 3, 224, 224], "datatype": "FP32", "data": []}),
                "[N,3,224,224]",
            ),
            (
                json!({"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}),
                "not base64",
            ),
            (
                json!({"name": "image", "shape": [0], "datatype": "BYTES", "data": []}),
                "no image",
            ),
            (
                json!({"name": "image", "shape": [1], "datatype": "BYTES"}),
                "neither 'data'",
            ),
        ];
        for (input, expected) in cases {
            let message = error_of(None, &req(input.clone()));
            assert!(message.contains(expected), "{input}: {message}");
        }
        assert!(error_of(None, b"not json").contains("not a v2 inference request"));
        assert!(error_of(None, br#"{"inputs": []}"#).contains("exactly one input"));
        let two_outputs = json_body(json!({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}],
            "outputs": [{"name": "logits"}, {"name": "logits"}]
        }));
        assert!(error_of(None, &two_outputs).contains("twice"));
        let unknown_output = json_body(json!({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}],
            "outputs": [{"name": "features"}]
        }));
        assert!(error_of(None, &unknown_output).contains("unknown output 'features'"));
    }

    #[test]
    fn response_puts_binary_outputs_after_the_header_in_request_order() {
        let request = InferRequest {
            id: Some("7".into()),
            input_name: IMAGE_TENSOR.into(),
            images: Images::Encoded(vec![vec![1], vec![2]]),
            outputs: vec![
                OutputRequest {
                    kind: OutputKind::Logits,
                    binary: true,
                    classification: None,
                },
                OutputRequest {
                    kind: OutputKind::Probabilities,
                    binary: false,
                    classification: Some(2),
                },
                // (A third output kind does not exist; binary classification is covered below.)
            ],
        };
        let logits = vec![vec![0.0, 3.0, 1.0], vec![2.0, 0.0, 0.0]];
        let labels = ["a", "b", "c"];
        let encoded = encode_response(&request, &logits, |i| labels[i]);
        let hl = encoded.header_length.expect("binary data follows");
        let header: Value = serde_json::from_slice(&encoded.body[..hl]).unwrap();
        assert_eq!(header["id"], "7");
        assert_eq!(header["outputs"][0]["shape"], json!([2, 3]));
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 24);
        let floats: Vec<f32> = encoded.body[hl..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, [0.0, 3.0, 1.0, 2.0, 0.0, 0.0]);
        let classes = header["outputs"][1]["data"].as_array().unwrap();
        assert_eq!(header["outputs"][1]["shape"], json!([2, 2]));
        // Image 0: class 1 first, then 2; image 1: class 0 first.
        let fields: Vec<Vec<&str>> = classes
            .iter()
            .map(|s| s.as_str().unwrap().split(':').collect())
            .collect();
        assert_eq!(
            fields.iter().map(|f| (f[1], f[2])).collect::<Vec<_>>(),
            [("1", "b"), ("2", "c"), ("0", "a"), ("1", "b")]
        );
        let p: f32 = fields[0][0].parse().unwrap();
        let expected = 3f32.exp() / (1.0 + 3f32.exp() + 1f32.exp());
        // Softmax of three values in f32: a few ulps.
        assert!((p - expected).abs() < 1e-6, "{p} vs {expected}");
    }

    #[test]
    fn binary_classification_output_round_trips() {
        let request = InferRequest {
            id: None,
            input_name: IMAGE_TENSOR.into(),
            images: Images::Encoded(vec![vec![1]]),
            outputs: vec![OutputRequest {
                kind: OutputKind::Logits,
                binary: true,
                classification: Some(1),
            }],
        };
        let encoded = encode_response(&request, &[vec![1.5, -1.0]], |i| ["x y", "z"][i]);
        let hl = encoded.header_length.unwrap();
        let elems = deserialize_bytes_tensor(&encoded.body[hl..]).unwrap();
        assert_eq!(elems, [b"1.5:0:x y".to_vec()]);
    }
}
