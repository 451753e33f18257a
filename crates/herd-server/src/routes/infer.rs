//! `POST /v2/models/{model}[/versions/{version}]/infer`: JSON tensors, or Triton's binary tensor
//! extension (`Inference-Header-Content-Length`: a JSON header followed by raw tensor bytes).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herd_api::v2::{InferResponseBody, RequestInput, ResponseOutputBody, Tensor, TensorData};
use herd_api::ErrorCode;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::error::HttpError;
use crate::service::Infer;
use crate::AppState;

const HEADER_LEN: &str = "inference-header-content-length";

pub async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(s, model, None, headers, body).await
}

pub async fn infer_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(s, model, Some(version), headers, body).await
}

async fn run(
    s: AppState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&s, model, version, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    s: &AppState,
    model: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let caller = s.service.identify(bearer(headers))?;
    let (json_part, mut binary) = split_body(headers, &body)?;
    let req: herd_api::v2::InferRequest = serde_json::from_slice(json_part).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidInput,
            format!("invalid inference request JSON: {e}"),
        )
    })?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        inputs.push(decode_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!(
                "{} bytes of binary data were not claimed by any input's binary_data_size",
                binary.len()
            ),
        ));
    }
    let all_binary = param_bool(req.parameters.as_ref(), "binary_data_output");
    let requested: Option<Vec<(String, bool)>> = req.outputs.as_ref().map(|outs| {
        outs.iter()
            .map(|o| {
                let bin = o
                    .parameters
                    .as_ref()
                    .and_then(|p| p.get("binary_data"))
                    .and_then(Value::as_bool)
                    .unwrap_or(all_binary);
                (o.name.clone(), bin)
            })
            .collect()
    });
    let classes = classification_params(req.outputs.as_deref().unwrap_or(&[]))?;
    let mut out = s
        .service
        .infer(
            &caller,
            Infer {
                model,
                version,
                inputs,
                outputs: requested
                    .as_ref()
                    .map(|r| r.iter().map(|(n, _)| n.clone()).collect()),
            },
        )
        .await?;
    s.service.classify_outputs(&mut out, &classes)?;

    let mut binary_out: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(out.outputs.len());
    for t in out.outputs {
        let bin = match &requested {
            Some(r) => r.iter().any(|(n, b)| *n == t.name && *b),
            None => all_binary,
        };
        outputs.push(encode_output(t, bin, &mut binary_out));
    }
    let response = InferResponseBody {
        model_name: out.model,
        model_version: Some(out.version),
        id: req.id,
        parameters: None,
        outputs,
    };
    let header_json = serde_json::to_vec(&response)
        .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()))?;
    let mut resp = if binary_out.is_empty() {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header_json,
        )
            .into_response()
    } else {
        let len = header_json.len();
        let mut all = header_json;
        all.extend_from_slice(&binary_out);
        let mut r = (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            all,
        )
            .into_response();
        r.headers_mut().insert(HEADER_LEN, HeaderValue::from(len));
        r
    };
    super::timing_headers(resp.headers_mut(), &out.timing, out.batch_rows);
    Ok(resp)
}

/// Splits the body into the JSON header and the binary tail.
fn split_body<'a>(headers: &HeaderMap, body: &'a Bytes) -> Result<(&'a [u8], &'a [u8]), HttpError> {
    match headers.get(HEADER_LEN) {
        None => Ok((&body[..], &[])),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    HttpError::new(
                        ErrorCode::InvalidInput,
                        "Inference-Header-Content-Length must be a number of bytes",
                    )
                })?;
            if n > body.len() {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                        body.len()
                    ),
                ));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Outputs asked for with Triton's classification extension (`"classification": k`).
fn classification_params(
    outputs: &[herd_api::v2::RequestOutput],
) -> Result<Vec<(String, usize)>, HttpError> {
    let mut out = Vec::new();
    for o in outputs {
        let Some(v) = o.parameters.as_ref().and_then(|p| p.get("classification")) else {
            continue;
        };
        match v.as_u64() {
            Some(k) if k >= 1 => out.push((o.name.clone(), k as usize)),
            _ => {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "output '{}': classification must be a positive integer (the number of classes to return), not {v}",
                        o.name
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn param_bool(p: Option<&herd_api::v2::Parameters>, key: &str) -> bool {
    p.and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn decode_input(input: RequestInput, binary: &mut &[u8]) -> Result<Tensor, HttpError> {
    let bin_size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                HttpError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "input '{}': binary_data_size must be a non-negative integer",
                        input.name
                    ),
                )
            })
        })
        .transpose()?;
    let data = match (bin_size, input.data) {
        (Some(n), _) => {
            let n = n as usize;
            if n > binary.len() {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "input '{}': binary_data_size is {n} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    ),
                ));
            }
            let (mine, rest) = binary.split_at(n);
            *binary = rest;
            TensorData::from_binary(input.datatype, mine, &input.name)?
        }
        // Decoded into a typed vector while the request JSON was parsed.
        (None, Some(d)) => d,
        (None, None) => {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "input '{}' has neither 'data' nor a binary_data_size parameter",
                    input.name
                ),
            ))
        }
    };
    if data.datatype() != input.datatype {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!(
                "input '{}': the data is {} but the input says datatype {}",
                input.name,
                data.datatype(),
                input.datatype
            ),
        ));
    }
    Ok(Tensor::new(input.name, input.shape, data))
}

fn encode_output(t: Tensor, binary: bool, out: &mut Vec<u8>) -> ResponseOutputBody {
    let datatype = t.data.datatype();
    if binary {
        let raw = t.data.to_binary();
        let mut params = herd_api::v2::Parameters::new();
        params.insert("binary_data_size".into(), json!(raw.len()));
        out.extend_from_slice(&raw);
        ResponseOutputBody {
            name: t.name,
            shape: t.shape,
            datatype,
            parameters: Some(params),
            data: None,
        }
    } else {
        ResponseOutputBody {
            name: t.name,
            shape: t.shape,
            datatype,
            parameters: None,
            // Serialized straight from the typed vector.
            data: Some(t.data),
        }
    }
}
