//! gzip and deflate on the `/v2` routes (Triton's and KServe's surface), as tritonclient's
//! `request_compression_algorithm` / `response_compression_algorithm` use them:
//!
//! - a request body with `Content-Encoding: gzip` or `deflate` (zlib, as HTTP means it; raw
//!   deflate is accepted too) is decompressed before the route sees it, at most `--max-body`
//!   bytes after decompression (413 naming the limit beyond), a corrupt stream is a 400, any
//!   other encoding a 400 naming the two that work;
//! - a response is compressed when the request's `Accept-Encoding` asks for gzip or deflate
//!   (gzip preferred at equal weight) and the body is at least [`MIN_COMPRESS_BYTES`]; smaller
//!   answers are sent as they are (clients read `Content-Encoding` to tell). Compression uses
//!   level 1 (fast): on a busy server the CPU matters more than the last few percent.
//!
//! `Inference-Header-Content-Length` keeps meaning the length of the JSON header inside the
//! uncompressed body, as in Triton.

use std::io::{Read, Write};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herd_api::ErrorCode;

use crate::error::HttpError;

/// Responses smaller than this are not compressed.
pub const MIN_COMPRESS_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

fn applies(path: &str) -> bool {
    path.starts_with("/v2/") && !path.starts_with("/v2/health/")
}

/// The middleware (installed by [`crate::app`], inside the 413 layer).
pub(crate) async fn codec(max_body: u64, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !applies(&path) {
        return next.run(req).await;
    }
    let accept = accepted(req.headers());
    let req = match decode_request(&path, max_body, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let resp = next.run(req).await;
    match accept {
        Some(c) if !resp.headers().contains_key(header::CONTENT_ENCODING) => {
            encode_response(resp, c).await
        }
        _ => resp,
    }
}

/// The coding the client accepts, from `Accept-Encoding` (q=0 excludes; `*` means gzip).
pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
    let mut best: Option<(f32, Coding)> = None;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            let coding = match name.as_str() {
                "gzip" | "x-gzip" | "*" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                _ => continue,
            };
            if q <= 0.0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, bc)) => q > bq || (q == bq && coding == Coding::Gzip && bc != coding),
            };
            if better {
                best = Some((q, coding));
            }
        }
    }
    best.map(|(_, c)| c)
}

fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, HttpError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
        "deflate" => Ok(Some(Coding::Deflate)),
        other => Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!(
                "Content-Encoding '{other}' is not supported; send the body as is, gzip or deflate"
            ),
        )),
    }
}

async fn decode_request(path: &str, max_body: u64, req: Request) -> Result<Request, Response> {
    let coding = match content_coding(req.headers()) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(req),
        Err(e) => return Err(e.into_response()),
    };
    let (mut parts, body) = req.into_parts();
    let compressed = match axum::body::to_bytes(body, max_body as usize).await {
        Ok(b) => b,
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(match over {
                true => crate::http::too_large(path, max_body, None),
                false => HttpError::new(
                    ErrorCode::InvalidInput,
                    format!("the request body could not be read: {e}"),
                )
                .into_response(),
            });
        }
    };
    let plain = tokio::task::spawn_blocking(move || decompress(coding, &compressed, max_body))
        .await
        .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()).into_response())?;
    let plain = match plain {
        Ok(p) => p,
        Err(Inflate::TooLarge) => {
            return Err(HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the {} request body decompresses to more than the limit of {max_body} bytes ({}, --max-body)",
                    coding.as_str(),
                    herd_api::units::human_bytes(max_body)
                ),
            )
            .into_response())
        }
        Err(Inflate::Corrupt(e)) => {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the request body is not valid {} data (Content-Encoding: {}): {e}",
                    coding.as_str(),
                    coding.as_str()
                ),
            )
            .into_response())
        }
    };
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(plain.len()));
    Ok(Request::from_parts(parts, Body::from(plain)))
}

#[derive(Debug)]
pub enum Inflate {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Decompresses at most `max` bytes. `deflate` is zlib-wrapped (RFC 9110), or raw deflate when
/// the data has no zlib header.
pub fn decompress(coding: Coding, data: &[u8], max: u64) -> Result<Vec<u8>, Inflate> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Coding::Deflate if zlib_header(data) => Box::new(flate2::read::ZlibDecoder::new(data)),
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(data)),
    };
    let mut out = Vec::new();
    reader
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Inflate::Corrupt)?;
    if out.len() as u64 > max {
        return Err(Inflate::TooLarge);
    }
    Ok(out)
}

fn zlib_header(d: &[u8]) -> bool {
    d.len() >= 2 && d[0] & 0x0f == 8 && (u16::from(d[0]) << 8 | u16::from(d[1])) % 31 == 0
}

pub fn compress(coding: Coding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = flate2::Compression::fast();
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data)?;
            e.finish()
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data)?;
            e.finish()
        }
    }
}

async fn encode_response(resp: Response, coding: Coding) -> Response {
    let (mut parts, body) = resp.into_parts();
    // The /v2 answers are built in memory, so collecting them costs no extra wait.
    let bytes: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return HttpError::new(ErrorCode::Internal, format!("response body: {e}"))
                .into_response()
        }
    };
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if bytes.len() < MIN_COMPRESS_BYTES {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let packed =
        tokio::task::spawn_blocking(move || compress(coding, &bytes).map(|p| (p, bytes))).await;
    match packed {
        Ok(Ok((packed, _))) => {
            parts.headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.as_str()),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(packed.len()));
            Response::from_parts(parts, Body::from(packed))
        }
        Ok(Err(e)) => {
            HttpError::new(ErrorCode::Internal, format!("compressing: {e}")).into_response()
        }
        Err(e) => HttpError::new(ErrorCode::Internal, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        h
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        assert_eq!(accepted(&headers("gzip")), Some(Coding::Gzip));
        assert_eq!(accepted(&headers("deflate")), Some(Coding::Deflate));
        assert_eq!(accepted(&headers("deflate, gzip")), Some(Coding::Gzip));
        assert_eq!(
            accepted(&headers("gzip;q=0.5, deflate")),
            Some(Coding::Deflate)
        );
        assert_eq!(accepted(&headers("gzip;q=0")), None);
        assert_eq!(accepted(&headers("br, identity")), None);
        assert_eq!(accepted(&headers("*")), Some(Coding::Gzip));
        assert_eq!(accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn round_trips_and_limits() {
        let data = b"{\"inputs\": []}".repeat(100);
        for c in [Coding::Gzip, Coding::Deflate] {
            let packed = compress(c, &data).unwrap();
            assert!(packed.len() < data.len());
            assert_eq!(decompress(c, &packed, 1 << 20).unwrap(), data);
            assert!(matches!(
                decompress(c, &packed, data.len() as u64 - 1),
                Err(Inflate::TooLarge)
            ));
            assert_eq!(
                decompress(c, &packed, data.len() as u64).unwrap().len(),
                data.len()
            );
        }
        // Raw deflate (no zlib header) is accepted as `deflate` too.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let raw = e.finish().unwrap();
        assert_eq!(decompress(Coding::Deflate, &raw, 1 << 20).unwrap(), data);
        assert!(matches!(
            decompress(Coding::Gzip, b"not gzip at all", 1 << 20),
            Err(Inflate::Corrupt(_))
        ));
    }
}
