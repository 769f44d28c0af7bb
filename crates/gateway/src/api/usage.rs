//! `GET /v1/usage`: what the calling tenant has spent, per model, today, over the last 7 days
//! and this calendar month (UTC), as the upstream reported it ([`crate::usage`]). A tenant sees
//! its own and nobody else's.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Map, Value};

use super::authenticate;
use crate::app::SharedState;
use crate::error::ApiError;
use crate::usage::Counts;

fn period(models: &std::collections::BTreeMap<String, Counts>, from: u64, to: u64) -> Value {
    let mut total = Counts::default();
    let mut by_model = Map::new();
    for (model, counts) in models {
        total.add(counts);
        by_model.insert(model.clone(), json!(counts));
    }
    let date = |day: u64| {
        let (y, m, d) = crate::clock::civil_from_days(day as i64);
        format!("{y:04}-{m:02}-{d:02}")
    };
    let mut body = json!(total);
    body["from"] = json!(date(from));
    body["to"] = json!(date(to));
    body["cost_usd"] = json!(total.cost_microdollars as f64 / 1e6);
    body["models"] = Value::Object(by_model);
    body
}

/// An owner's usage today, over the last 7 days and this month (UTC), from one read.
async fn periods(state: &SharedState, owner: crate::usage::Owner<'_>) -> Result<Value, ApiError> {
    let today = crate::usage::day_of(crate::clock::now_secs());
    let (_, _, day_of_month) = crate::clock::civil_from_days(today as i64);
    let month_start = today - u64::from(day_of_month - 1);
    let week_start = today.saturating_sub(6);
    let first = month_start.min(week_start);
    // One read over the widest span, then each period from its days.
    let days = state
        .usage
        .by_day(owner, first, today)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let over = |from: u64| {
        let models = crate::usage::sum(&days[(from - first) as usize..]);
        period(&models, from, today)
    };
    Ok(json!({
        "today": over(today),
        "last_7_days": over(week_start),
        "month": over(month_start),
    }))
}

/// The calling tenant's usage.
#[utoipa::path(get, path = "/v1/usage", tag = "Sessions",
    responses((status = 200, description = "Requests, tokens (as the upstream reported them) and cost per model: today, the last 7 days and this month (UTC)", body = Object),
              (status = 401, body = crate::api::docs::ErrorBody)))]
pub async fn usage(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let mut body = json!({"object": "usage", "tenant": tenant.fingerprint()});
    if let (Value::Object(body), Value::Object(periods)) =
        (&mut body, periods(&state, (&tenant).into()).await?)
    {
        body.extend(periods);
    }
    Ok(Json(body))
}

#[derive(serde::Deserialize)]
pub struct KeysQuery {
    /// One grant's name (an identity provider subject's, `jwt:…`) instead of every key's.
    name: Option<String>,
}

/// The operator's view: usage per access key (every key of `--access-keys-file`, or the one
/// `?name=` names, such as a JWT subject's `jwt:…`), across every tenant that used it.
#[utoipa::path(get, path = "/v1/admin/usage", tag = "Operations",
    params(("name" = Option<String>, Query, description = "one grant's name, e.g. `jwt:alice@example.com`")),
    responses((status = 200, description = "Per access key: requests, tokens and cost per model, today, the last 7 days and this month (UTC)", body = Object),
              (status = 401, body = crate::api::docs::ErrorBody),
              (status = 403, description = "no --admin-token is set", body = crate::api::docs::ErrorBody)))]
pub async fn by_access_key(
    State(state): State<SharedState>,
    axum::extract::Query(query): axum::extract::Query<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    // It names the operator's keys and what each spent: never open to whoever reaches the port.
    if state.config.admin_token.is_none() {
        return Err(ApiError::Permission(
            "this route needs the operator's token, and this gateway has none: set --admin-token"
                .into(),
        ));
    }
    let names: Vec<String> = match query.name {
        Some(name) if !name.is_empty() && name.len() <= 200 => vec![name],
        Some(_) => return Err(ApiError::InvalidRequest("name: 1 to 200 characters".into())),
        None => state
            .access
            .iter()
            .flat_map(|keys| keys.names())
            .map(str::to_owned)
            .collect(),
    };
    let mut keys = Map::new();
    for name in names {
        let usage = periods(&state, crate::usage::Owner::AccessKey(&name)).await?;
        keys.insert(name, usage);
    }
    Ok(Json(json!({"object": "usage_by_access_key", "keys": keys})))
}

/// The calling tenant's own limits, as the upstream last reported them ([`crate::quota`]).
#[utoipa::path(get, path = "/v1/quota", tag = "Sessions",
    responses((status = 200, description = "The credential's limits as the upstream last reported them: a subscription's windows (five_hour, seven_day, …: utilization 0-1 and reset) and verdict, or an API key's limits (limit, remaining, reset); `observed: false` until a request has run", body = Object),
              (status = 401, body = crate::api::docs::ErrorBody)))]
pub async fn quota(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tenant = authenticate(&state, &headers).await?;
    let latest = state
        .quota
        .latest(&tenant)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    // A reset time is the upstream's word (or, without the sandbox's own network, the CLI's):
    // any number, so it is bounded before it becomes milliseconds.
    const LATEST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let iso = |secs: u64| json!(crate::clock::iso8601(secs.min(LATEST) as i64 * 1000));
    let mut body = json!({
        "object": "quota",
        "tenant": tenant.fingerprint(),
        "observed": latest.is_some(),
    });
    if let Some(snapshot) = latest {
        let mut windows = Map::new();
        for (name, window) in &snapshot.windows {
            let mut w = json!(window);
            if let Some(at) = window.resets_at {
                w["resets_at"] = iso(at);
            }
            windows.insert(name.clone(), w);
        }
        body["observed_at"] = iso(snapshot.observed_at);
        body["source"] = json!(snapshot.source);
        body["status"] = json!(snapshot.status);
        body["resets_at"] = snapshot.resets_at.map_or(Value::Null, iso);
        body["representative_claim"] = json!(snapshot.representative_claim);
        body["windows"] = Value::Object(windows);
        body["api"] = json!(snapshot.api);
    }
    Ok(Json(body))
}
