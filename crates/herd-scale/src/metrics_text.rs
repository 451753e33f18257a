//! Reading the serving signals out of a `herd serve` `/metrics` page (Prometheus text format).

use crate::decide::InstanceObs;
use crate::error::{Result, ScaleError};

/// Sum of every sample of metric `name` (all label sets), or `None` if it does not appear.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `herd_x_total` is not `herd_x_total_more`.
        let value_part = if let Some(after) = rest.strip_prefix('{') {
            match after.rfind('}') {
                Some(end) => &after[end + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') || rest.starts_with('\t') {
            rest
        } else {
            continue;
        };
        // "value [timestamp]"
        let Some(v) = value_part.split_whitespace().next() else {
            continue;
        };
        let v = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => match other.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        if v.is_finite() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The names the serving core exports (see the serving core's `/metrics`).
pub const REQUESTS_TOTAL: &str = "herd_infer_requests_total";
pub const MEMORY_USED: &str = "herd_cache_memory_used_bytes";
pub const MEMORY_BUDGET: &str = "herd_cache_memory_budget_bytes";

/// Parses one instance's page into its observation.
pub fn instance_from_text(id: &str, text: &str) -> InstanceObs {
    InstanceObs {
        id: id.to_string(),
        requests_total: sum_metric(text, REQUESTS_TOTAL),
        memory_used_bytes: sum_metric(text, MEMORY_USED),
        memory_budget_bytes: sum_metric(text, MEMORY_BUDGET),
    }
}

/// Reads the bearer token the autoscaler sends when scraping (`--metrics-token-file`): the
/// whole file, trimmed; an empty file is an error (it would be sent as no token).
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let err = |message: String| ScaleError::MetricsToken {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err(
            "the file is empty; put the token printed by `herd token new --scope metrics` in it"
                .into(),
        ));
    }
    Ok(token.to_string())
}

/// Fetches `url` (a `/metrics` address) and parses it, sending `token` as a bearer token when
/// given. A server that is still starting, or answers with an error, gives an error the caller
/// logs; a refusal for want of a (valid) token is [`ScaleError::MetricsAuth`], whose message
/// says which flag to set.
pub async fn scrape(
    client: &reqwest::Client,
    id: &str,
    url: &str,
    token: Option<&str>,
) -> Result<InstanceObs> {
    let what = || format!("{id} at {url}");
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| ScaleError::Observe {
        what: format!("metrics of {}", what()),
        message: e.to_string(),
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let hint = match (token, status.as_u16()) {
            (None, _) => "the server requires a token for /metrics; give the autoscaler an admin token or one with scopes = [\"metrics\"] (`herd token new --scope metrics`) with --metrics-token-file PATH or HERD_METRICS_TOKEN_FILE",
            (Some(_), 401) => "the server does not know the token from --metrics-token-file / HERD_METRICS_TOKEN_FILE; add its sha256 entry (`herd token new --scope metrics`) to the server's tokens file",
            (Some(_), _) => "the token from --metrics-token-file / HERD_METRICS_TOKEN_FILE may not read /metrics; give it scopes = [\"metrics\"] in the server's tokens file (or use an admin token)",
        };
        return Err(ScaleError::MetricsAuth {
            what: what(),
            status: status.as_u16(),
            hint: hint.to_string(),
        });
    }
    if !status.is_success() {
        return Err(ScaleError::Observe {
            what: format!("metrics of {}", what()),
            message: format!("HTTP {status}"),
        });
    }
    let text = resp.text().await.map_err(|e| ScaleError::Observe {
        what: format!("metrics of {}", what()),
        message: e.to_string(),
    })?;
    Ok(instance_from_text(id, &text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP herd_infer_requests_total Inference requests.
# TYPE herd_infer_requests_total counter
herd_infer_requests_total{model="a",status="ok"} 120
herd_infer_requests_total{model="b",status="error"} 5
herd_infer_requests_total{model="c,}",status="ok"} 3 1700000000000
herd_infer_requests_total_extra 1000
# TYPE herd_cache_memory_used_bytes gauge
herd_cache_memory_used_bytes 2.5e8
herd_cache_memory_budget_bytes 268435456
herd_cache_loaded_models 3
"#;

    #[test]
    fn sums_all_label_sets_of_one_metric_only() {
        assert_eq!(sum_metric(PAGE, REQUESTS_TOTAL), Some(128.0));
        assert_eq!(sum_metric(PAGE, MEMORY_USED), Some(2.5e8));
        assert_eq!(sum_metric(PAGE, "herd_missing"), None);
        let o = instance_from_text("s1", PAGE);
        assert_eq!(o.memory_budget_bytes, Some(268435456.0));
    }

    #[test]
    fn garbage_is_ignored_not_fatal() {
        let page = "herd_infer_requests_total{model=\"a\" 12\nherd_infer_requests_total nope\nherd_infer_requests_total 7\n";
        assert_eq!(sum_metric(page, REQUESTS_TOTAL), Some(7.0));
    }
}
