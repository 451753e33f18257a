//! The registry over HTTP, mounted under `/v1/registry` (see [`router`]). Thin handlers: parse,
//! call one `herd_registry::Registry` method, map the result.
//!
//! Auth (when a tokens file is in use): tenant tokens see and change only their tenant's models
//! (list is filtered to their tenant; pushing creates models in their tenant); releases and
//! channels span tenants and need an admin token.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/models?tenant=&tag=&search=&limit=&offset=` | list models |
//! | POST | `/models` `{name, tenant?, description?, tags?}` | create a model |
//! | GET | `/models/{model}` | one model with its aliases |
//! | GET | `/models/{model}/versions?data_ref=&code_ref=&limit=&offset=` | versions, newest first |
//! | POST | `/models/{model}/versions?data_ref=&code_ref=&metric=auc=0.9&create=true` body: ONNX bytes, or a bundle as a tar archive (`content-type: application/x-tar`) | push |
//! | GET | `/models/{model}/versions/{version}` | one version (number, alias or `latest`) |
//! | PUT | `/models/{model}/aliases/{alias}` `{version}` | set an alias |
//! | GET | `/models/{model}/aliases/history?alias=` | alias history |
//! | GET | `/releases?limit=&offset=` | list releases |
//! | POST | `/releases` `{entries?, from_alias?, from_channel?, remove?, note?, promote?}` | create |
//! | GET | `/releases/{ref}` | one release (id, short id, prefix or `@channel`) |
//! | GET | `/releases/{from}/diff/{to}` | diff |
//! | POST | `/releases/verify` `{release?}` | recompute ids |
//! | GET | `/channels/{channel}` | channel, its release and history |
//! | POST | `/channels/{channel}/promote` `{release}` | promote |
//! | POST | `/channels/{channel}/rollback` `{model?, to_version?}` | roll back the channel or one model |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use herd_api::ErrorCode;
use herd_registry::{ModelFilter, NewModel, PushRequest, Registry, ReleaseSpec, VersionFilter};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Auth, Principal};
use crate::error::HttpError;

#[derive(Clone)]
struct RegState {
    registry: Arc<Registry>,
    auth: Arc<Auth>,
}

type Res = Result<Json<Value>, HttpError>;

/// The registry routes (relative paths; mount with `Router::nest("/v1/registry", ..)`).
pub fn router(registry: Arc<Registry>, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/models", get(list_models).post(create_model))
        .route("/models/{model}", get(show_model))
        .route("/models/{model}/versions", get(list_versions).post(push))
        .route("/models/{model}/versions/{version}", get(show_version))
        .route("/models/{model}/aliases/history", get(alias_history))
        .route("/models/{model}/aliases/{alias}", put(set_alias))
        .route("/releases", get(list_releases).post(create_release))
        .route("/releases/verify", post(verify_releases))
        .route("/releases/{release}", get(show_release))
        .route("/releases/{from}/diff/{to}", get(diff_releases))
        .route("/channels/{channel}", get(show_channel))
        .route("/channels/{channel}/promote", post(promote))
        .route("/channels/{channel}/rollback", post(rollback))
        .with_state(RegState { registry, auth })
}

fn to_json<T: serde::Serialize>(v: &T) -> Res {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()))
}

fn who(p: &Principal) -> String {
    match p {
        Principal::Open => "api".into(),
        Principal::Admin => "admin".into(),
        Principal::Tenant(t) => format!("tenant:{t}"),
    }
}

/// The caller, checked against the model's tenant (403 for another tenant's model).
async fn check_model(
    s: &RegState,
    headers: &HeaderMap,
    model: &str,
) -> Result<Principal, HttpError> {
    let p = s.auth.principal(headers)?;
    if let Principal::Tenant(_) = p {
        let m = s.registry.model(model).await?;
        s.auth.check_model(headers, model, m.tenant.as_deref())?;
    }
    Ok(p)
}

fn check_admin(s: &RegState, headers: &HeaderMap) -> Result<Principal, HttpError> {
    s.auth.check_admin(headers)?;
    s.auth.principal(headers)
}

#[derive(Deserialize, Default)]
struct ListQuery {
    tenant: Option<String>,
    tag: Option<String>,
    search: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

async fn list_models(
    State(s): State<RegState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Res {
    let tenant = match s.auth.principal(&headers)? {
        Principal::Tenant(t) => {
            if q.tenant.as_ref().is_some_and(|x| *x != t) {
                return Err(HttpError::new(
                    ErrorCode::Forbidden,
                    "a tenant token lists only its own tenant's models",
                ));
            }
            Some(t)
        }
        Principal::Open | Principal::Admin => q.tenant,
    };
    to_json(
        &s.registry
            .list_models(&ModelFilter {
                tenant,
                tag: q.tag,
                name_contains: q.search,
                limit: q.limit,
                offset: q.offset,
            })
            .await?,
    )
}

async fn create_model(
    State(s): State<RegState>,
    headers: HeaderMap,
    Json(mut m): Json<NewModel>,
) -> Res {
    if let Principal::Tenant(t) = s.auth.principal(&headers)? {
        if m.tenant.as_ref().is_some_and(|x| *x != t) {
            return Err(HttpError::new(
                ErrorCode::Forbidden,
                "a tenant token creates models only in its own tenant",
            ));
        }
        m.tenant = Some(t);
    }
    to_json(&s.registry.create_model(&m).await?)
}

async fn show_model(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Res {
    check_model(&s, &headers, &model).await?;
    let m = s.registry.model(&model).await?;
    let aliases = s.registry.aliases(Some(&model), None).await?;
    Ok(Json(json!({"model": m, "aliases": aliases})))
}

#[derive(Deserialize, Default)]
struct VersionQuery {
    data_ref: Option<String>,
    code_ref: Option<String>,
    limit: Option<u64>,
    offset: Option<u64>,
}

async fn list_versions(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Res {
    check_model(&s, &headers, &model).await?;
    to_json(
        &s.registry
            .list_versions(&VersionFilter {
                model: Some(model),
                data_ref: q.data_ref,
                code_ref: q.code_ref,
                digest: None,
                limit: q.limit,
                offset: q.offset,
            })
            .await?,
    )
}

async fn show_version(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Res {
    check_model(&s, &headers, &model).await?;
    to_json(&s.registry.resolve(&model, &version).await?)
}

/// Push: the body is the ONNX file; lineage and metrics come as query parameters
/// (`metric` repeatable as `metric=NAME=VALUE`). `create=true` creates a missing model.
async fn push(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let mut data_ref = None;
    let mut code_ref = None;
    let mut create = false;
    let mut metrics = BTreeMap::new();
    for (k, v) in url_pairs(raw.as_deref().unwrap_or("")) {
        match k.as_str() {
            "data_ref" => data_ref = Some(v),
            "code_ref" => code_ref = Some(v),
            "create" => create = v == "true" || v == "1",
            "metric" => {
                let (n, x) = v.split_once('=').ok_or_else(|| {
                    HttpError::new(
                        ErrorCode::InvalidInput,
                        format!("metric '{v}' must look like NAME=VALUE"),
                    )
                })?;
                let x: f64 = x.parse().map_err(|_| {
                    HttpError::new(
                        ErrorCode::InvalidInput,
                        format!("metric '{v}': the value must be a number"),
                    )
                })?;
                metrics.insert(n.to_string(), x);
            }
            other => {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "unknown parameter '{other}'; use data_ref, code_ref, metric or create"
                    ),
                ))
            }
        }
    }
    let principal = s.auth.principal(&headers)?;
    // A tenant writes only its own tenant's models (a model without a tenant is admin-only);
    // the registry re-checks inside the push's write transaction.
    let tenant = match &principal {
        Principal::Tenant(t) => Some(t.clone()),
        Principal::Open | Principal::Admin => None,
    };
    let is_tar = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-tar"));
    let (body, files) = if is_tar {
        let mut files = herd_registry::bundle::read_tar(&body)?;
        let model_file = files
            .remove(herd_registry::bundle::MODEL_FILE)
            .unwrap_or_default();
        (model_file, files)
    } else {
        (body, BTreeMap::new())
    };
    let out = s
        .registry
        .push(PushRequest {
            model: model.clone(),
            as_tenant: tenant.clone(),
            files,
            bytes: body,
            metrics,
            data_ref,
            code_ref,
            created_by: who(&principal),
            create: create.then(|| NewModel {
                name: model.clone(),
                tenant,
                description: String::new(),
                tags: Vec::new(),
            }),
        })
        .await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, to_json(&out)?))
}

/// `a=b&c=d` pairs, percent-decoded.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct SetAlias {
    version: i64,
}

async fn set_alias(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path((model, alias)): Path<(String, String)>,
    Json(body): Json<SetAlias>,
) -> Res {
    let p = check_model(&s, &headers, &model).await?;
    let as_tenant = match &p {
        Principal::Tenant(t) => Some(t.as_str()),
        Principal::Open | Principal::Admin => None,
    };
    to_json(
        &s.registry
            .set_alias_as(&model, &alias, body.version, &who(&p), as_tenant)
            .await?,
    )
}

#[derive(Deserialize, Default)]
struct HistoryQuery {
    alias: Option<String>,
}

async fn alias_history(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(model): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Res {
    check_model(&s, &headers, &model).await?;
    to_json(&s.registry.alias_history(&model, q.alias.as_deref()).await?)
}

#[derive(Deserialize, Default)]
struct PageQuery {
    limit: Option<u64>,
    offset: Option<u64>,
}

async fn list_releases(
    State(s): State<RegState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Res {
    check_admin(&s, &headers)?;
    to_json(&s.registry.list_releases(q.limit, q.offset).await?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateRelease {
    /// model -> version number, alias or "latest" (applied on top of from_alias/from_channel).
    #[serde(default)]
    entries: BTreeMap<String, Value>,
    from_alias: Option<String>,
    from_channel: Option<String>,
    #[serde(default)]
    remove: Vec<String>,
    note: Option<String>,
    promote: Option<String>,
}

async fn create_release(
    State(s): State<RegState>,
    headers: HeaderMap,
    Json(body): Json<CreateRelease>,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let p = check_admin(&s, &headers)?;
    let mut entries: BTreeMap<String, String> = match (&body.from_alias, &body.from_channel) {
        (Some(_), Some(_)) => {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                "use from_alias or from_channel, not both",
            ))
        }
        (Some(a), None) => s.registry.spec_from_alias(a).await?,
        (None, Some(c)) => s
            .registry
            .channel_release(c)
            .await?
            .ok_or_else(|| {
                HttpError::new(
                    ErrorCode::NotFound,
                    format!("channel '{c}' has no release yet"),
                )
            })?
            .entries
            .into_iter()
            .map(|(m, e)| (m, e.version.to_string()))
            .collect(),
        (None, None) => BTreeMap::new(),
    };
    for (m, v) in body.entries {
        let sel = match v {
            Value::Number(n) => n.to_string(),
            Value::String(x) => x,
            other => {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    format!("entry '{m}': {other} is not a version number, alias or \"latest\""),
                ))
            }
        };
        entries.insert(m, sel);
    }
    for m in &body.remove {
        if entries.remove(m).is_none() {
            return Err(HttpError::new(
                ErrorCode::InvalidInput,
                format!("remove: '{m}' is not in the set"),
            ));
        }
    }
    let (release, created) = s
        .registry
        .create_release(&ReleaseSpec {
            entries,
            note: body.note,
            created_by: who(&p),
        })
        .await?;
    let promoted = match &body.promote {
        Some(c) => Some(s.registry.promote(c, &release.id, &who(&p)).await?),
        None => None,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"release": release, "created": created, "promoted": promoted})),
    ))
}

async fn show_release(State(s): State<RegState>, headers: HeaderMap, Path(r): Path<String>) -> Res {
    check_admin(&s, &headers)?;
    to_json(&s.registry.release(&r).await?)
}

async fn diff_releases(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path((from, to)): Path<(String, String)>,
) -> Res {
    check_admin(&s, &headers)?;
    to_json(&s.registry.diff_releases(&from, &to).await?)
}

#[derive(Deserialize, Default)]
struct VerifyBody {
    release: Option<String>,
}

async fn verify_releases(
    State(s): State<RegState>,
    headers: HeaderMap,
    body: Option<Json<VerifyBody>>,
) -> Res {
    check_admin(&s, &headers)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let (n, problems) = s.registry.verify_releases(body.release.as_deref()).await?;
    Ok(Json(
        json!({"releases": n, "ok": problems.is_empty(), "problems": problems}),
    ))
}

async fn show_channel(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Res {
    check_admin(&s, &headers)?;
    let c = s.registry.channel(&channel).await?.ok_or_else(|| {
        HttpError::new(
            ErrorCode::NotFound,
            format!("channel '{channel}' has no release yet"),
        )
    })?;
    let release = s.registry.release(&c.release_id).await?;
    let history = s.registry.channel_history(&channel).await?;
    Ok(Json(
        json!({"channel": c, "release": release, "history": history}),
    ))
}

#[derive(Deserialize)]
struct PromoteBody {
    release: String,
}

async fn promote(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(b): Json<PromoteBody>,
) -> Res {
    let p = check_admin(&s, &headers)?;
    to_json(&s.registry.promote(&channel, &b.release, &who(&p)).await?)
}

#[derive(Deserialize, Default)]
struct RollbackBody {
    model: Option<String>,
    to_version: Option<String>,
}

async fn rollback(
    State(s): State<RegState>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> Res {
    let p = check_admin(&s, &headers)?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    match b.model {
        Some(m) => {
            let (release, event) = s
                .registry
                .rollback_model(&channel, &m, b.to_version.as_deref(), &who(&p))
                .await?;
            Ok(Json(json!({"release": release, "event": event})))
        }
        None => {
            if b.to_version.is_some() {
                return Err(HttpError::new(
                    ErrorCode::InvalidInput,
                    "to_version needs model",
                ));
            }
            to_json(&s.registry.rollback(&channel, &who(&p)).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fx {
        app: Router,
        dir: std::path::PathBuf,
    }

    impl Drop for Fx {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn fx(auth: Auth) -> Fx {
        let dir = std::env::temp_dir().join(format!(
            "herd-reg-routes-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // As the server opens it: with the serving core's config check.
        let reg = crate::serving::open_registry(
            &format!("sqlite://{}", dir.join("r.db").display()),
            dir.join("a").to_str().unwrap(),
        )
        .await
        .unwrap();
        Fx {
            app: router(Arc::new(reg), Arc::new(auth)),
            dir,
        }
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Body,
        json_body: bool,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if json_body {
            req = req.header("content-type", "application/json");
        }
        let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn onnx(seed: u64) -> Body {
        Body::from(herd_onnx::LinearClassifier::random(4, 2, seed).to_onnx("m"))
    }

    #[tokio::test]
    async fn push_alias_release_promote_rollback() {
        let f = fx(Auth::open()).await;
        let app = &f.app;
        let data = "dvc:0123456789abcdef0123456789abcdef";
        for seed in 1..=2 {
            let (st, v) = call(
                app,
                "POST",
                &format!("/models/m1/versions?create=true&data_ref={data}&metric=auc%3D0.9"),
                None,
                onnx(seed),
                false,
            )
            .await;
            assert_eq!(st, 201, "{v}");
            assert_eq!(v["version"]["version"], seed);
            assert_eq!(v["version"]["metrics"]["auc"], 0.9);
        }
        // Bad input: not ONNX, mutable ref, unknown parameter.
        let (st, v) = call(
            app,
            "POST",
            "/models/m1/versions",
            None,
            Body::from("hello"),
            false,
        )
        .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("invalid_input")),
            "{v}"
        );
        let (st, _) = call(
            app,
            "POST",
            "/models/m1/versions?data_ref=main",
            None,
            onnx(3),
            false,
        )
        .await;
        assert_eq!(st, 400);
        let (st, _) = call(app, "POST", "/models/m1/versions?x=1", None, onnx(3), false).await;
        assert_eq!(st, 400);
        let (st, _) = call(app, "POST", "/models/nope/versions", None, onnx(3), false).await;
        assert_eq!(st, 404);

        let (st, v) = call(app, "GET", "/models?search=m", None, Body::empty(), false).await;
        assert_eq!(st, 200);
        assert_eq!(v["items"][0]["latest_version"], 2);
        let (st, v) = call(
            app,
            "GET",
            "/models/m1/versions/latest",
            None,
            Body::empty(),
            false,
        )
        .await;
        assert_eq!((st, v["version"].as_i64()), (200, Some(2)));
        let (st, _) = call(
            app,
            "PUT",
            "/models/m1/aliases/production",
            None,
            Body::from(r#"{"version":1}"#),
            true,
        )
        .await;
        assert_eq!(st, 200);
        let (_, h) = call(
            app,
            "GET",
            "/models/m1/aliases/history",
            None,
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(h[0]["to_version"], 1);

        let (st, r1) = call(
            app,
            "POST",
            "/releases",
            None,
            Body::from(r#"{"from_alias":"production","promote":"production"}"#),
            true,
        )
        .await;
        assert_eq!(st, 201, "{r1}");
        let (st, r2) = call(
            app,
            "POST",
            "/releases",
            None,
            Body::from(r#"{"from_channel":"production","entries":{"m1":2}}"#),
            true,
        )
        .await;
        assert_eq!(st, 201, "{r2}");
        let id2 = r2["release"]["short_id"].as_str().unwrap().to_string();
        let id1 = r1["release"]["short_id"].as_str().unwrap().to_string();
        let (_, d) = call(
            app,
            "GET",
            &format!("/releases/{id1}/diff/{id2}"),
            None,
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(d["changed"]["m1"][1]["version"], 2);
        let (st, _) = call(
            app,
            "POST",
            "/channels/production/promote",
            None,
            Body::from(format!(r#"{{"release":"{id2}"}}"#)),
            true,
        )
        .await;
        assert_eq!(st, 200);
        let (_, c) = call(
            app,
            "GET",
            "/channels/production",
            None,
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(c["release"]["short_id"], id2.as_str());
        let (st, e) = call(
            app,
            "POST",
            "/channels/production/rollback",
            None,
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(st, 200, "{e}");
        assert_eq!(&e["to_release"].as_str().unwrap()[..12], id1.as_str());
        let (_, v) = call(app, "POST", "/releases/verify", None, Body::empty(), false).await;
        assert_eq!(v["ok"], true);
        // A release naming a missing version: 404, nothing created.
        let (st, _) = call(
            app,
            "POST",
            "/releases",
            None,
            Body::from(r#"{"entries":{"m1":9}}"#),
            true,
        )
        .await;
        assert_eq!(st, 404);
        let (_, l) = call(app, "GET", "/releases", None, Body::empty(), false).await;
        assert_eq!(l["items"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn tenant_tokens_see_only_their_models() {
        let toml = format!(
            "[[token]]\nsha256 = \"{}\"\ntenant = \"acme\"\n[[token]]\nsha256 = \"{}\"\ntenant = \"globex\"\n[[token]]\nsha256 = \"{}\"\nadmin = true\n",
            crate::auth::hash_token("acme-token"),
            crate::auth::hash_token("globex-token"),
            crate::auth::hash_token("admin-token")
        );
        let f = fx(Auth::from_toml(&toml).unwrap()).await;
        let app = &f.app;
        let (st, v) = call(
            app,
            "POST",
            "/models/acme-m/versions?create=true",
            Some("acme-token"),
            onnx(1),
            false,
        )
        .await;
        assert_eq!(st, 201, "{v}");
        call(
            app,
            "POST",
            "/models/globex-m/versions?create=true",
            Some("globex-token"),
            onnx(2),
            false,
        )
        .await;
        let (_, v) = call(
            app,
            "GET",
            "/models",
            Some("acme-token"),
            Body::empty(),
            false,
        )
        .await;
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["acme-m"]);
        let (_, v) = call(
            app,
            "GET",
            "/models",
            Some("admin-token"),
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
        let (st, _) = call(
            app,
            "GET",
            "/models/globex-m",
            Some("acme-token"),
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(st, 403);
        let (st, _) = call(
            app,
            "POST",
            "/models/globex-m/versions",
            Some("acme-token"),
            onnx(3),
            false,
        )
        .await;
        assert_eq!(st, 403);
        let (st, _) = call(
            app,
            "GET",
            "/releases",
            Some("acme-token"),
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(st, 403);
        let (st, _) = call(app, "GET", "/releases", None, Body::empty(), false).await;
        assert_eq!(st, 401);
        let (st, _) = call(
            app,
            "GET",
            "/releases",
            Some("admin-token"),
            Body::empty(),
            false,
        )
        .await;
        assert_eq!(st, 200);
    }

    /// A ustar archive of `files` (regular files only).
    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[tokio::test]
    async fn a_bundle_with_a_bad_config_is_refused_at_push() {
        let f = fx(Auth::open()).await;
        let model = herd_onnx::LinearClassifier::random(4, 2, 1).to_onnx("m");
        let push = |config: &'static str| {
            let body = tar(&[("model.onnx", &model), ("config.toml", config.as_bytes())]);
            let req = Request::builder()
                .method("POST")
                .uri("/models/m/versions?create=true")
                .header("content-type", "application/x-tar")
                .body(Body::from(body))
                .unwrap();
            f.app.clone().oneshot(req)
        };
        for (config, says) in [
            ("instances = 0\n", "instances must be between 1 and 64"),
            ("no_such_key = 1\n", "unknown field `no_such_key`"),
            ("max_batch_size = \"x\"\n", "max_batch_size"),
        ] {
            let resp = push(config).await.unwrap();
            assert_eq!(resp.status().as_u16(), 400, "{config}");
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let msg = v["error"].as_str().unwrap();
            assert!(
                msg.contains("config.toml") && msg.contains(says) && msg.contains("'m'"),
                "{msg}"
            );
        }
        // Nothing was stored; a good config pushes.
        let (st, _) = call(&f.app, "GET", "/models/m", None, Body::empty(), false).await;
        assert_eq!(st, 404);
        let resp = push("instances = 2\nmax_batch_size = 8\n").await.unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            url_pairs("metric=auc%3D0.9&data_ref=lakefs%3A%2F%2Fr%2Fc&x"),
            [
                ("metric".to_string(), "auc=0.9".to_string()),
                ("data_ref".to_string(), "lakefs://r/c".to_string()),
                ("x".to_string(), String::new())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
