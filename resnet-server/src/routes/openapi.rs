//! `GET /openapi.json`: the OpenAPI 3.1 document of this server. Its paths are the [`Route`]
//! table (one exhaustive `match` below, so a new route does not compile without its entry); its
//! schemas are derived by utoipa from the typed bodies the handlers read and write
//! ([`crate::api`], [`crate::kserve`], [`crate::explore`], the history); the query parameters
//! come from the same [`IntParam`] values the handlers parse. It describes the running server:
//! the bearer scheme and the 401s appear only when it has a token, the backends `/v1/trace`
//! names are the ones it runs.

use super::kserve::{Live, Ready};
use super::query::{IntParam, CAM_CLASS, STAGE_MAPS, TOP_K, TRACE_MAPS};
use super::respond::respond;
use super::{AppState, ErrorShape, Route};
use crate::api::{
    BatchResponse, Classification, CustomModels, ErrorBody, HistoryResponse, ModelResponse,
    PredictItem, SceneResult, Status, UpdateStatus, VisionError,
};
use crate::config::Config;
use crate::explore::TraceResponse;
use crate::kserve::{
    InferRequestHeader, InferResponseHeader, ModelConfig, ModelMetadata, ServerMetadata,
    HEADER_LENGTH,
};
use crate::model::ModelInfo;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use resnet_core::cam::CamView;
use std::collections::BTreeMap;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
    PathsBuilder,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, Ref, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, LicenseBuilder, OpenApiBuilder, RefOr, Required,
};
use utoipa::ToSchema;

/// The name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

/// The document, serialised once when the server starts.
pub(crate) fn document_json(config: &Config, model: &ModelInfo) -> Bytes {
    let doc = document(config, model);
    Bytes::from(doc.to_json().unwrap_or_else(|_| "{}".into()))
}

pub(super) fn serve(state: &AppState) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, "application/json", state.openapi.clone())
}

/// The OpenAPI document of a server with this configuration and model.
pub fn document(config: &Config, model: &ModelInfo) -> utoipa::openapi::OpenApi {
    let mut doc = Doc {
        config,
        model,
        schemas: BTreeMap::new(),
    };
    let mut paths = PathsBuilder::new();
    for route in Route::ALL {
        let operation = doc.operation(route);
        paths = paths.path(
            route.path(),
            PathItem::new(http_method(&route.method()), operation),
        );
    }
    let mut components = ComponentsBuilder::new();
    for (name, schema) in std::mem::take(&mut doc.schemas) {
        components = components.schema(name, schema);
    }
    if config.token.is_some() {
        components = components.security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the server's --token (or RESNET_TOKEN)"))
                    .build(),
            ),
        );
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("resnet18-rs")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "ResNet-18 image classification on the CPU (`resnet serve`): this server's own \
                     API, the seed service's /predict, the DeepStack / CodeProject.AI scene API and \
                     the KServe v2 (Open Inference Protocol) REST surface. Every error of the own and \
                     KServe routes is {\"error\", \"code\"} with its status; the DeepStack routes keep \
                     DeepStack's {\"success\": false, \"error\"}. This document describes the running \
                     server: its token, backends and limits.",
                ))
                .license(Some(LicenseBuilder::new().name("MIT OR Apache-2.0").build()))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

fn http_method(method: &Method) -> HttpMethod {
    if method == Method::POST {
        HttpMethod::Post
    } else {
        HttpMethod::Get
    }
}

/// What one route takes and answers, before the parts every route shares are added.
struct Spec {
    summary: &'static str,
    parameters: Vec<Parameter>,
    body: Option<RequestBody>,
    /// The answers that are not failures (a 503 `{"ready": false}` of a probe is one).
    answers: Vec<(StatusCode, ApiResponse)>,
    /// The failures, in the body shape of [`Route::error_shape`].
    errors: &'static [StatusCode],
}

impl Spec {
    /// A route without parameters, body or failures.
    fn plain(summary: &'static str, answers: Vec<(StatusCode, ApiResponse)>) -> Spec {
        Spec {
            summary,
            parameters: vec![],
            body: None,
            answers,
            errors: &[],
        }
    }
}

/// The failures of a route that reads one image: bad input (400), no length (411), too large
/// (413), not an accepted content type or image format (415), too many pixels (422), queue or
/// memory budget full (503, `Retry-After`), over the deadline (504).
const IMAGE_ERRORS: &[StatusCode] = &[
    StatusCode::BAD_REQUEST,
    StatusCode::LENGTH_REQUIRED,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    StatusCode::UNPROCESSABLE_ENTITY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

/// Building the document: the schemas referenced so far, each registered with its dependencies
/// when first used, so the components hold exactly what the paths need.
struct Doc<'a> {
    config: &'a Config,
    model: &'a ModelInfo,
    schemas: BTreeMap<String, RefOr<Schema>>,
}

impl Doc<'_> {
    /// A reference to `T`'s schema (registered with the schemas it refers to).
    fn schema<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let name = T::name().into_owned();
        if !self.schemas.contains_key(&name) {
            self.schemas.insert(name.clone(), T::schema());
            let mut dependencies = Vec::new();
            T::schemas(&mut dependencies);
            self.schemas.extend(dependencies);
        }
        RefOr::Ref(Ref::from_schema_name(name))
    }

    fn json<T: ToSchema>(&mut self, description: &str) -> ApiResponse {
        let schema = self.schema::<T>();
        response(description, &[("application/json", schema)])
    }

    fn operation(&mut self, route: Route) -> Operation {
        let spec = self.spec(route);
        let mut op = OperationBuilder::new()
            .operation_id(Some(route.metric_label()))
            .summary(Some(spec.summary));
        for p in spec.parameters {
            op = op.parameter(p);
        }
        if let Some(body) = spec.body {
            op = op.request_body(Some(body));
        }
        for (status, answer) in spec.answers {
            op = op.response(status.as_str(), answer);
        }
        let token = self.config.token.is_some();
        let mut errors = spec.errors.to_vec();
        // The token: a bearer header on every route but the public ones; the DeepStack scene
        // route takes it as its form field `api_key` too.
        if token && (!route.is_public() || route == Route::Scene) {
            errors.push(StatusCode::UNAUTHORIZED);
            let bearer = SecurityRequirement::new::<&str, [&str; 0], &str>(BEARER, []);
            op = op.security(bearer);
            if route == Route::Scene {
                op = op.security(SecurityRequirement::default());
            }
        }
        errors.sort();
        for status in errors {
            let answer = self.error(route, status);
            op = op.response(status.as_str(), answer);
        }
        op.build()
    }

    /// The failure `status` of `route`, in the route's error shape.
    fn error(&mut self, route: Route, status: StatusCode) -> ApiResponse {
        let schema = match route.error_shape() {
            ErrorShape::Standard => self.schema::<ErrorBody<'static>>(),
            ErrorShape::Vision => self.schema::<VisionError<'static>>(),
        };
        let mut answer = response(error_description(status), &[("application/json", schema)]);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer.headers.insert(
                "Retry-After".into(),
                HeaderBuilder::new()
                    .schema(integer(Some(0), None))
                    .description(Some("seconds to wait (a full queue or memory budget)"))
                    .build(),
            );
        }
        answer
    }

    /// The route table's half of the document: one arm per route.
    fn spec(&mut self, route: Route) -> Spec {
        let ok = StatusCode::OK;
        let max_parts = self.config.max_batch_parts;
        match route {
            Route::Page => Spec::plain(
                "The web page: upload, top-5, timings, the activation map, history",
                vec![(ok, text("the page", "text/html"))],
            ),
            Route::Explore => Spec::plain(
                "The layer-by-layer explorer page",
                vec![(ok, text("the page", "text/html"))],
            ),
            Route::Healthz => Spec::plain(
                "Liveness: the process answers",
                vec![(ok, self.json::<Status>("alive: {\"status\": \"ok\"}"))],
            ),
            Route::Readyz => Spec {
                summary: "Readiness: the model is warmed up and no shutdown has begun",
                parameters: vec![],
                body: None,
                answers: vec![(ok, self.json::<Status>("ready: {\"status\": \"ready\"}"))],
                errors: &[StatusCode::SERVICE_UNAVAILABLE],
            },
            Route::Metrics => Spec::plain(
                "Prometheus metrics (text exposition format 0.0.4)",
                vec![(ok, text("the metrics", "text/plain"))],
            ),
            Route::Model => Spec::plain(
                "The model, its backend, weights and the limits in force",
                vec![(ok, self.json::<ModelResponse<'static>>("the model"))],
            ),
            Route::History => Spec::plain(
                "The last recognitions, newest first, with thumbnails",
                vec![(ok, self.json::<HistoryResponse>("the history"))],
            ),
            Route::Events => Spec {
                summary: "The --watch sources' events as Server-Sent Events (a stream that stays open)",
                parameters: vec![],
                body: None,
                answers: vec![(
                    ok,
                    text(
                        "`event: watch` or `event: alert`, `data:` the event's JSON",
                        "text/event-stream",
                    ),
                )],
                // 404 no_watch_sources: the server was started without --watch.
                errors: &[StatusCode::NOT_FOUND],
            },
            Route::OpenApi => Spec {
                summary: "This document",
                parameters: vec![],
                body: None,
                answers: vec![(
                    ok,
                    response(
                        "the OpenAPI 3.1 document of this server",
                        &[("application/json", object())],
                    ),
                )],
                errors: &[],
            },
            Route::Classify => Spec {
                summary: "Classify one image: the top-k classes, timings and the image's size",
                parameters: vec![query(&TOP_K)],
                body: Some(image_body(true)),
                answers: vec![(ok, self.json::<Classification>("the classification"))],
                errors: IMAGE_ERRORS,
            },
            Route::ClassifyBatch => Spec {
                summary: "Classify several images of one multipart body: one result or error per part",
                parameters: vec![query(&TOP_K)],
                body: Some(multipart(
                    ObjectBuilder::new()
                        .property(
                            "files",
                            ArrayBuilder::new()
                                .items(binary())
                                .min_items(Some(1))
                                .max_items(Some(max_parts))
                                .description(Some(
                                    "the images: every part with a file name, or named file or files",
                                )),
                        )
                        .required("files")
                        .into(),
                    true,
                )),
                answers: vec![(
                    ok,
                    self.json::<BatchResponse>(
                        "one item per part, in order: a classification or that part's error",
                    ),
                )],
                // A part that fails (e.g. 422, too many pixels) is an item of the 200 answer.
                errors: &[
                    StatusCode::BAD_REQUEST,
                    StatusCode::LENGTH_REQUIRED,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::GATEWAY_TIMEOUT,
                ],
            },
            Route::Cam => Spec {
                summary: "The class activation map of one image, as a PNG",
                parameters: vec![
                    query(&CAM_CLASS),
                    ParameterBuilder::new()
                        .name("view")
                        .parameter_in(ParameterIn::Query)
                        .required(Required::False)
                        .description(Some(
                            "original: over the whole picture; crop: over the 224x224 crop the network saw",
                        ))
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .enum_values(Some(CamView::ALL.map(CamView::name)))
                                .default(Some(CamView::default().name().into())),
                        ))
                        .build(),
                ],
                body: Some(image_body(true)),
                answers: vec![(ok, {
                    let mut png = response(
                        "the map blended over the picture",
                        &[("image/png", binary().into())],
                    );
                    for (name, what) in [
                        ("X-Cam-Class", "the class index drawn"),
                        ("X-Cam-Label", "its name"),
                        ("X-Cam-Probability", "its probability"),
                    ] {
                        png.headers.insert(
                            name.into(),
                            HeaderBuilder::new()
                                .schema(ObjectBuilder::new().schema_type(Type::String))
                                .description(Some(what))
                                .build(),
                        );
                    }
                    png
                })],
                errors: &[
                    StatusCode::BAD_REQUEST,
                    StatusCode::LENGTH_REQUIRED,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    StatusCode::NOT_IMPLEMENTED,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::GATEWAY_TIMEOUT,
                ],
            },
            Route::Predict => Spec {
                summary: "The seed service's API: the top 3 classes, probabilities in percent",
                parameters: vec![],
                body: Some(image_body(false)),
                answers: vec![(ok, {
                    let item = self.schema::<PredictItem>();
                    response(
                        "the top 3 classes",
                        &[(
                            "application/json",
                            ArrayBuilder::new().items(item).into(),
                        )],
                    )
                })],
                errors: IMAGE_ERRORS,
            },
            Route::Trace => {
                let model = self.model;
                let backends: Vec<&str> = model.backends.iter().map(String::as_str).collect();
                let backend = |name: &str, what: &str| {
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Query)
                        .required(Required::False)
                        .description(Some(what))
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .enum_values(Some(backends.clone())),
                        ))
                        .build()
                };
                Spec {
                    summary: "One image layer by layer: statistics, times, feature maps, SQNR",
                    parameters: vec![
                        query(&TRACE_MAPS),
                        query(&TOP_K),
                        query(&STAGE_MAPS),
                        ParameterBuilder::new()
                            .name("block")
                            .parameter_in(ParameterIn::Query)
                            .required(Required::False)
                            .description(Some(
                                "BasicBlocks to recompute stage by stage: a name (layer3.1), \
                                 names joined by commas, `all`, or `list`",
                            ))
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                        backend("backend", "the backend to trace (default: the main one)"),
                        backend("compare", "a backend to compare with, whose outputs are the reference"),
                    ],
                    body: Some(image_body(true)),
                    answers: vec![(ok, self.json::<TraceResponse>("the trace"))],
                    errors: IMAGE_ERRORS,
                }
            }
            Route::Scene => Spec {
                summary: "DeepStack / CodeProject.AI scene recognition: the top-1 class",
                parameters: vec![],
                body: Some(multipart(
                    ObjectBuilder::new()
                        .property("image", binary())
                        .property(
                            "api_key",
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .description(Some("the server's token, when it has one")),
                        )
                        .property(
                            "min_confidence",
                            ObjectBuilder::new()
                                .schema_type(Type::Number)
                                .description(Some("ignored, as DeepStack does for scenes")),
                        )
                        .required("image")
                        .into(),
                    true,
                )),
                answers: vec![(ok, self.json::<SceneResult>("the scene"))],
                errors: IMAGE_ERRORS,
            },
            Route::CustomList => Spec::plain(
                "CodeProject.AI's list of custom detection models (none)",
                vec![(ok, self.json::<CustomModels>("the empty list"))],
            ),
            Route::UpdateAvailable => Spec::plain(
                "CodeProject.AI's update check (never one: the server does not look)",
                vec![(ok, self.json::<UpdateStatus>("no update"))],
            ),
            Route::V2Live => Spec::plain(
                "KServe v2 liveness",
                vec![(ok, self.json::<Live>("alive"))],
            ),
            Route::V2Ready => Spec::plain(
                "KServe v2 readiness",
                self.readiness(),
            ),
            Route::V2Server => Spec::plain(
                "KServe v2 server metadata",
                vec![(ok, self.json::<ServerMetadata>("the server"))],
            ),
            Route::V2Model => Spec {
                summary: "KServe v2 model metadata (also at /v2/models/{name}/versions/1)",
                parameters: vec![model_name()],
                body: None,
                answers: vec![(ok, self.json::<ModelMetadata>("the model"))],
                errors: &[StatusCode::NOT_FOUND],
            },
            Route::V2ModelReady => Spec {
                summary: "KServe v2 model readiness",
                parameters: vec![model_name()],
                body: None,
                answers: self.readiness(),
                errors: &[StatusCode::NOT_FOUND],
            },
            Route::V2ModelConfig => Spec {
                summary: "Triton's model configuration (what perf_analyzer reads)",
                parameters: vec![model_name()],
                body: None,
                answers: vec![(ok, self.json::<ModelConfig>("the configuration"))],
                errors: &[StatusCode::NOT_FOUND],
            },
            Route::V2Infer => Spec {
                summary: "KServe v2 inference: FP32 [N,3,224,224] tensors or BYTES [N] encoded images",
                parameters: vec![
                    model_name(),
                    ParameterBuilder::new()
                    .name("Inference-Header-Content-Length")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "the binary tensor extension: the length of the JSON header, raw tensors follow it",
                    ))
                    .schema(Some(integer(Some(0), None)))
                    .build(),
                ],
                body: Some({
                    let header = self.schema::<InferRequestHeader>();
                    RequestBodyBuilder::new()
                        .required(Some(Required::True))
                        .content(
                            "application/json",
                            ContentBuilder::new().schema(Some(header)).build(),
                        )
                        .content(
                            "application/octet-stream",
                            ContentBuilder::new().schema(Some(binary())).build(),
                        )
                        .build()
                }),
                answers: vec![(ok, {
                    let header = self.schema::<InferResponseHeader>();
                    let mut answer = response(
                        "the outputs: JSON, or (binary outputs) the JSON header followed by raw tensors",
                        &[
                            ("application/json", header),
                            ("application/octet-stream", binary().into()),
                        ],
                    );
                    answer.headers.insert(
                        HEADER_LENGTH.into(),
                        HeaderBuilder::new()
                            .schema(integer(Some(0), None))
                            .description(Some("with binary outputs: the JSON header's length"))
                            .build(),
                    );
                    answer
                })],
                errors: &[
                    StatusCode::BAD_REQUEST,
                    StatusCode::NOT_FOUND,
                    StatusCode::LENGTH_REQUIRED,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    StatusCode::SERVICE_UNAVAILABLE,
                    StatusCode::GATEWAY_TIMEOUT,
                ],
            },
        }
    }

    /// 200 `{"ready": true}` or 503 `{"ready": false}` (warming up, shutting down).
    fn readiness(&mut self) -> Vec<(StatusCode, ApiResponse)> {
        vec![
            (StatusCode::OK, self.json::<Ready>("ready")),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                self.json::<Ready>("not ready: warming up or shutting down"),
            ),
        ]
    }
}

fn error_description(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad input: a parameter, the body, or not an image",
        StatusCode::UNAUTHORIZED => "the token is missing or wrong",
        StatusCode::NOT_FOUND => "no such model or version",
        StatusCode::LENGTH_REQUIRED => "neither Content-Length nor chunked transfer encoding",
        StatusCode::PAYLOAD_TOO_LARGE => "the body is over --max-body-mb, or too many parts",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "a content type or image format not accepted",
        StatusCode::UNPROCESSABLE_ENTITY => "the image has more pixels than --max-megapixels",
        StatusCode::NOT_IMPLEMENTED => "this model carries no f32 fc.weight (e.g. an INT8 file)",
        StatusCode::SERVICE_UNAVAILABLE => {
            "busy (queue or memory budget full: retry after Retry-After), warming up, or shutting down"
        }
        StatusCode::GATEWAY_TIMEOUT => "the request took longer than --timeout-s",
        _ => "failed",
    }
}

/// A response with one schema per content type.
fn response(description: &str, contents: &[(&str, RefOr<Schema>)]) -> ApiResponse {
    let mut answer = ResponseBuilder::new().description(description);
    for (content_type, schema) in contents {
        answer = answer.content(
            *content_type,
            ContentBuilder::new().schema(Some(schema.clone())).build(),
        );
    }
    answer.build()
}

fn text(description: &str, content_type: &str) -> ApiResponse {
    response(
        description,
        &[(
            content_type,
            ObjectBuilder::new().schema_type(Type::String).into(),
        )],
    )
}

fn object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

fn binary() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
}

fn integer(min: Option<usize>, max: Option<usize>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(min)
        .maximum(max)
}

fn query(param: &IntParam) -> Parameter {
    ParameterBuilder::new()
        .name(param.key)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(param.description))
        .schema(Some(
            integer(Some(param.min), Some(param.max)).default(param.default.map(Into::into)),
        ))
        .build()
}

fn model_name() -> Parameter {
    ParameterBuilder::new()
        .name("name")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("the model: resnet18 (any other name is 404)"))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some("^[^/]+$"))
                .examples([crate::kserve::MODEL_NAME]),
        ))
        .build()
}

/// An image upload: a multipart field `file`, or (`raw`) the image itself as the body.
fn image_body(raw: bool) -> RequestBody {
    let form: RefOr<Schema> = ObjectBuilder::new()
        .property("file", binary().description(Some("the image")))
        .required("file")
        .into();
    let mut body = RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(
            "multipart/form-data",
            ContentBuilder::new().schema(Some(form)).build(),
        );
    if raw {
        for content_type in ["image/*", "application/octet-stream"] {
            body = body.content(
                content_type,
                ContentBuilder::new().schema(Some(binary())).build(),
            );
        }
    }
    body.build()
}

fn multipart(form: RefOr<Schema>, required: bool) -> RequestBody {
    RequestBodyBuilder::new()
        .required(Some(if required {
            Required::True
        } else {
            Required::False
        }))
        .content(
            "multipart/form-data",
            ContentBuilder::new().schema(Some(form)).build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc(token: Option<&str>) -> Value {
        let config = Config {
            token: token.map(str::to_string),
            ..Config::default()
        };
        let model = ModelInfo {
            name: "resnet18".into(),
            backend: "native".into(),
            description: String::new(),
            isa: "portable".into(),
            threads: 1,
            labels: 1000,
            weights_source: "synthetic".into(),
            weights_sha256: None,
            synthetic_weights: true,
            backends: vec!["native".into(), "reference".into()],
        };
        serde_json::from_slice(&document_json(&config, &model)).unwrap()
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_in_the_document_with_its_method_and_nothing_else_is() {
        let doc = doc(None);
        let paths = doc["paths"].as_object().unwrap();
        for route in Route::ALL {
            let method = route.method().as_str().to_ascii_lowercase();
            let op = &paths
                .get(route.path())
                .unwrap_or_else(|| panic!("{route:?}: {} is not in the document", route.path()))
                [&method];
            assert!(op.is_object(), "{route:?}: no {method} operation");
            assert_eq!(op["operationId"], route.metric_label(), "{route:?}");
            assert!(op["responses"]["200"].is_object(), "{route:?}: no 200");
            // Each `{name}` of the path is a path parameter (schemathesis refuses the
            // operation otherwise: it found /v2/models/{name}/infer without one).
            let templated: Vec<&str> = route
                .path()
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(templated, declared, "{route:?}: path parameters");
        }
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(operations, Route::ALL.len(), "operations for no route");
    }

    #[test]
    fn every_schema_reference_resolves() {
        for token in [None, Some("t")] {
            let doc = doc(token);
            let mut found = Vec::new();
            refs(&doc, &mut found);
            assert!(found.len() > 20, "{found:?}");
            for r in found {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{r}"));
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{r} does not resolve"
                );
            }
        }
    }

    #[test]
    fn the_bearer_scheme_and_401s_appear_only_with_a_token() {
        let open = doc(None);
        assert!(open["components"]["securitySchemes"].is_null());
        let keyed = doc(Some("t"));
        assert_eq!(
            keyed["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        for route in Route::ALL {
            let method = route.method().as_str().to_ascii_lowercase();
            let with = &keyed["paths"][route.path()][&method];
            let without = &open["paths"][route.path()][&method];
            assert!(without["responses"]["401"].is_null(), "{route:?}");
            assert!(without["security"].is_null(), "{route:?}");
            let guarded = !route.is_public() || route == Route::Scene;
            assert_eq!(with["responses"]["401"].is_object(), guarded, "{route:?}");
            assert_eq!(with["security"].is_array(), guarded, "{route:?}");
        }
    }

    #[test]
    fn query_parameters_are_the_ones_the_handlers_parse() {
        let doc = doc(None);
        let classify = &doc["paths"]["/v1/classify"]["post"]["parameters"][0];
        assert_eq!(classify["name"], TOP_K.key);
        assert_eq!(classify["schema"]["maximum"], TOP_K.max as u64);
        let trace = doc["paths"]["/v1/trace"]["post"]["parameters"]
            .as_array()
            .unwrap();
        let backend = trace.iter().find(|p| p["name"] == "backend").unwrap();
        assert_eq!(
            backend["schema"]["enum"],
            serde_json::json!(["native", "reference"])
        );
    }
}
