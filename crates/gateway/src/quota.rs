//! The limits the upstream itself puts on a tenant's credential, as it reports them: a
//! subscription's windows (`anthropic-ratelimit-unified-*` response headers: the 5-hour and
//! 7-day windows' utilization and reset, and whether the last call was allowed) and an API
//! key's per-minute limits (`anthropic-ratelimit-{requests,tokens,…}-*`). The gateway's upstream
//! proxy reads them off every answer it hands a run (the CLI's `rate_limit_event` lines stand
//! in where no proxy of the gateway's stood between); the latest is kept per tenant and shown
//! at `GET /v1/quota`.
//!
//! Kept in memory on one instance, and in Redis (one key per tenant, 8 days) when instances
//! share it, so a tenant sees what any instance last saw.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::shared::Redis;
use crate::tenant::identity::TenantId;

/// How long a tenant's last observation is kept in Redis (past the 7-day window's reset).
const REDIS_SECS: u64 = 8 * 86_400;
/// Tenants whose last observation one instance keeps in memory; past it the oldest goes.
const LOCAL_TENANTS: usize = 10_000;
/// Windows one observation keeps (the upstream names a handful).
const MAX_WINDOWS: usize = 12;

/// One window of a subscription's limits (`five_hour`, `seven_day`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The share of the window's allowance used, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Unix seconds when the window resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<u64>,
    /// `allowed`, `allowed_warning` or `rejected`, when the upstream said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// One of an API key's limits (`requests`, `tokens`, `input_tokens`, `output_tokens`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// When it is back to its limit, as the upstream wrote it (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
}

/// What the upstream last reported of a tenant's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds of the answer it was read from.
    pub observed_at: u64,
    /// `upstream` (the gateway's proxy read the answer's headers) or `cli` (the CLI's report).
    pub source: String,
    /// The subscription's overall verdict on the last call: `allowed`, `allowed_warning` or
    /// `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Unix seconds when the limit that decides the verdict resets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<u64>,
    /// Which window decides the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub representative_claim: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub windows: BTreeMap<String, Window>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub api: BTreeMap<String, ApiLimit>,
}

/// The upstream refused a call because a limit of the credential's own is reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The window that is spent, when the upstream named it.
    pub window: Option<String>,
    /// Unix seconds when it resets.
    pub resets_at: Option<u64>,
    /// The spent allowance is the one a subscription grants for use outside Anthropic's own
    /// apps (`claude -p`, the Agent SDK and services like this gateway).
    pub third_party: bool,
}

const UNIFIED: &str = "anthropic-ratelimit-unified-";
const API: &str = "anthropic-ratelimit-";

/// The header's short window names, as the CLI spells the long ones.
fn window_name(short: &str) -> String {
    match short {
        "5h" => "five_hour".into(),
        "7d" => "seven_day".into(),
        "7d_oi" => "seven_day_overage_included".into(),
        "7d_oauth_apps" => "seven_day_oauth_apps".into(),
        other => other.replace('-', "_"),
    }
}

/// A name the response may use as a key: short, plain (it comes from the upstream, but
/// through whatever stands in front of it).
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Whether a window or claim is the allowance for use outside Anthropic's own apps.
fn is_third_party(name: &str) -> bool {
    name.contains("oauth_apps") || name.contains("third_party") || name.contains("sdk")
}

fn secs(text: &str) -> Option<u64> {
    let n: f64 = text.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| n.round() as u64)
}

fn fraction(text: &str) -> Option<f64> {
    let n: f64 = text.trim().parse().ok()?;
    n.is_finite().then(|| n.clamp(0.0, 1.0))
}

fn status(text: &str) -> Option<String> {
    let text = text.trim();
    plain(text).then(|| text.to_owned())
}

impl Snapshot {
    /// The limits an upstream answer's headers report, if it reported any.
    pub fn from_headers(headers: &http::HeaderMap, now: u64) -> Option<Self> {
        let mut snapshot = Snapshot {
            observed_at: now,
            source: "upstream".into(),
            ..Snapshot::default()
        };
        let mut seen = false;
        for (name, value) in headers {
            let Ok(value) = value.to_str() else { continue };
            let name = name.as_str();
            if let Some(rest) = name.strip_prefix(UNIFIED) {
                seen = true;
                match rest {
                    "status" => snapshot.status = status(value),
                    "reset" => snapshot.resets_at = secs(value),
                    "representative-claim" => snapshot.representative_claim = status(value),
                    _ => {
                        let Some((window, field)) = rest.rsplit_once('-') else {
                            continue;
                        };
                        if !plain(window)
                            || window.contains("overage-")
                            || !matches!(field, "utilization" | "reset" | "status")
                        {
                            continue;
                        }
                        let window = window_name(window);
                        if !snapshot.windows.contains_key(&window)
                            && snapshot.windows.len() >= MAX_WINDOWS
                        {
                            continue;
                        }
                        let entry = snapshot.windows.entry(window).or_default();
                        match field {
                            "utilization" => entry.utilization = fraction(value),
                            "reset" => entry.resets_at = secs(value),
                            _ => entry.status = status(value),
                        }
                    }
                }
            } else if let Some(rest) = name.strip_prefix(API) {
                for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
                    let Some(field) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix('-'))
                    else {
                        continue;
                    };
                    let entry = snapshot.api.entry(kind.replace('-', "_")).or_default();
                    match field {
                        "limit" => entry.limit = value.trim().parse().ok(),
                        "remaining" => entry.remaining = value.trim().parse().ok(),
                        "reset" if value.len() <= 40 => entry.reset = Some(value.trim().into()),
                        _ => continue,
                    }
                    seen = true;
                }
            }
        }
        snapshot
            .api
            .retain(|_, limit| limit != &ApiLimit::default());
        seen.then_some(snapshot)
    }

    /// The limits a CLI `rate_limit_event` line's `rate_limit_info` reports.
    pub fn from_cli_event(info: &Value, now: u64) -> Option<Self> {
        let info = info.as_object()?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).and_then(status);
        let number = |v: Option<&Value>| v.and_then(Value::as_f64);
        let mut snapshot = Snapshot {
            observed_at: now,
            source: "cli".into(),
            status: text(info.get("status")),
            resets_at: number(info.get("resetsAt")).map(|n| n.max(0.0).round() as u64),
            representative_claim: text(info.get("rateLimitType")),
            ..Snapshot::default()
        };
        let window = |w: &serde_json::Map<String, Value>| Window {
            utilization: number(w.get("utilization")).map(|n| n.clamp(0.0, 1.0)),
            resets_at: number(w.get("resetsAt")).map(|n| n.max(0.0).round() as u64),
            status: text(w.get("status")),
        };
        if let Some(windows) = info.get("unifiedWindows").and_then(Value::as_object) {
            for (name, w) in windows.iter().take(MAX_WINDOWS) {
                if let (true, Some(w)) = (plain(name), w.as_object()) {
                    snapshot.windows.insert(name.clone(), window(w));
                }
            }
        }
        // Without the windows, the one the event is about.
        if let (Some(claim), true) = (&snapshot.representative_claim, snapshot.windows.is_empty()) {
            snapshot.windows.insert(claim.clone(), window(info));
        }
        Some(snapshot)
    }

    /// The refusal this observation reports, if the upstream refused the call for a limit of
    /// the credential's own.
    pub fn refusal(&self) -> Option<Refusal> {
        let rejected_window = self
            .windows
            .iter()
            .find(|(_, w)| w.status.as_deref() == Some("rejected"));
        if self.status.as_deref() != Some("rejected") && rejected_window.is_none() {
            return None;
        }
        let window = self
            .representative_claim
            .clone()
            .or_else(|| rejected_window.map(|(name, _)| name.clone()));
        let resets_at = window
            .as_ref()
            .and_then(|w| self.windows.get(w))
            .and_then(|w| w.resets_at)
            .or(self.resets_at);
        let third_party = window.as_deref().is_some_and(is_third_party)
            || rejected_window.is_some_and(|(name, _)| is_third_party(name));
        Some(Refusal {
            window,
            resets_at,
            third_party,
        })
    }
}

/// Whether an upstream error message says a subscription's allowance for third-party use is
/// spent (where no header said which limit it was).
pub fn message_is_third_party_allowance(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    (lower.contains("third-party") || lower.contains("third party"))
        && (lower.contains("allowance")
            || lower.contains("credit")
            || lower.contains("limit")
            || lower.contains("usage"))
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedError),
}

/// The last observation per tenant.
pub struct QuotaStore {
    local: Mutex<HashMap<String, Snapshot>>,
    redis: Option<Redis>,
}

impl QuotaStore {
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis,
        }
    }

    fn key(redis: &Redis, tenant: &TenantId) -> String {
        format!("{}quota:{{{}}}", redis.prefix, tenant.as_dir_name())
    }

    /// Keeps `snapshot` as the tenant's latest (an older one never replaces a newer), here at
    /// once and in Redis on its own task: the proxy that reads it must not wait on Redis.
    pub fn record(&self, tenant: &TenantId, snapshot: Snapshot) {
        {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            if local
                .get(tenant.as_dir_name())
                .is_some_and(|kept| kept.observed_at > snapshot.observed_at)
            {
                return;
            }
            if local.len() >= LOCAL_TENANTS && !local.contains_key(tenant.as_dir_name()) {
                if let Some(oldest) = local
                    .iter()
                    .min_by_key(|(_, s)| s.observed_at)
                    .map(|(k, _)| k.clone())
                {
                    local.remove(&oldest);
                }
            }
            local.insert(tenant.as_dir_name().to_owned(), snapshot.clone());
        }
        if let Some(redis) = &self.redis {
            let redis = redis.clone();
            let key = Self::key(&redis, tenant);
            let Ok(json) = serde_json::to_string(&snapshot) else {
                return;
            };
            tokio::spawn(async move {
                let stored = redis
                    .run(|mut c| async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(json)
                            .arg("EX")
                            .arg(REDIS_SECS)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not share a tenant's quota observation");
                }
            });
        }
    }

    /// The tenant's latest observation, on any instance when they share Redis.
    pub async fn latest(&self, tenant: &TenantId) -> Result<Option<Snapshot>, QuotaError> {
        let local = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant.as_dir_name())
            .cloned();
        let Some(redis) = &self.redis else {
            return Ok(local);
        };
        let key = Self::key(redis, tenant);
        let shared: Option<String> = redis
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        let shared = shared.and_then(|json| serde_json::from_str::<Snapshot>(&json).ok());
        Ok(match (local, shared) {
            (Some(l), Some(s)) => Some(if l.observed_at > s.observed_at { l } else { s }),
            (l, s) => l.or(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_subscriptions_windows_are_read_from_the_unified_headers() {
        let snapshot = Snapshot::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-reset", "1796317200"),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                ),
                ("anthropic-ratelimit-unified-5h-utilization", "0.92"),
                ("anthropic-ratelimit-unified-5h-reset", "1796317200"),
                ("anthropic-ratelimit-unified-5h-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.31"),
                ("anthropic-ratelimit-unified-7d-reset", "1796749200"),
                ("anthropic-ratelimit-unified-overage-disabled-reason", "x"),
                ("content-type", "application/json"),
            ]),
            100,
        )
        .expect("seen");
        assert_eq!(snapshot.status.as_deref(), Some("allowed_warning"));
        assert_eq!(snapshot.representative_claim.as_deref(), Some("five_hour"));
        assert_eq!(
            snapshot.windows["five_hour"],
            Window {
                utilization: Some(0.92),
                resets_at: Some(1_796_317_200),
                status: Some("allowed_warning".into()),
            }
        );
        assert_eq!(snapshot.windows["seven_day"].utilization, Some(0.31));
        assert_eq!(snapshot.windows.len(), 2, "{:?}", snapshot.windows);
        assert_eq!(snapshot.refusal(), None);
    }

    #[test]
    fn an_api_keys_limits_are_read_and_no_headers_is_no_observation() {
        let snapshot = Snapshot::from_headers(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "49"),
                ("anthropic-ratelimit-requests-reset", "2026-12-03T12:00:30Z"),
                ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ]),
            100,
        )
        .expect("seen");
        assert_eq!(snapshot.api["requests"].remaining, Some(49));
        assert_eq!(snapshot.api["input_tokens"].limit, Some(30_000));
        assert!(!snapshot.api.contains_key("tokens"));
        assert_eq!(
            Snapshot::from_headers(&headers(&[("retry-after", "3")]), 1),
            None
        );
    }

    #[test]
    fn a_rejection_names_its_window_and_whether_it_is_the_third_party_allowance() {
        let spent = Snapshot::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "seven_day_oauth_apps",
                ),
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-status",
                    "rejected",
                ),
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-reset",
                    "1796749200",
                ),
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-utilization",
                    "1.0",
                ),
            ]),
            100,
        )
        .expect("seen");
        assert_eq!(
            spent.refusal(),
            Some(Refusal {
                window: Some("seven_day_oauth_apps".into()),
                resets_at: Some(1_796_749_200),
                third_party: true,
            })
        );
        let five_hour = Snapshot::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", "1796317200"),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour",
                ),
            ]),
            100,
        )
        .expect("seen");
        let refusal = five_hour.refusal().expect("refused");
        assert!(!refusal.third_party);
        assert_eq!(refusal.resets_at, Some(1_796_317_200));
        assert!(message_is_third_party_allowance(
            "Your subscription's third-party usage allowance is used up for this month"
        ));
        assert!(!message_is_third_party_allowance("rate limited"));
    }

    #[test]
    fn the_clis_rate_limit_event_reads_as_the_headers_do() {
        let info = serde_json::json!({
            "status": "allowed_warning", "resetsAt": 1796317200, "rateLimitType": "five_hour",
            "utilization": 0.9,
            "unifiedWindows": {
                "five_hour": {"utilization": 0.9, "resetsAt": 1796317200, "status": "allowed_warning"},
                "seven_day": {"utilization": 0.2, "resetsAt": 1796749200},
                "Bad Name!": {"utilization": 1.0, "resetsAt": 1}
            }
        });
        let snapshot = Snapshot::from_cli_event(&info, 5).expect("read");
        assert_eq!(snapshot.source, "cli");
        assert_eq!(snapshot.windows["five_hour"].utilization, Some(0.9));
        assert_eq!(snapshot.windows["seven_day"].resets_at, Some(1_796_749_200));
        assert_eq!(snapshot.windows.len(), 2);
        let bare = serde_json::json!({"status": "rejected", "resetsAt": 7, "rateLimitType": "seven_day", "utilization": 1.0});
        let snapshot = Snapshot::from_cli_event(&bare, 5).expect("read");
        assert_eq!(snapshot.windows["seven_day"].utilization, Some(1.0));
        assert_eq!(snapshot.refusal().expect("refused").resets_at, Some(7));
    }

    #[tokio::test]
    async fn the_latest_observation_is_kept_per_tenant() {
        let store = QuotaStore::new(None);
        let (a, b) = (
            TenantId::from_dir_name("a".into()),
            TenantId::from_dir_name("b".into()),
        );
        let at = |t: u64| Snapshot {
            observed_at: t,
            source: "upstream".into(),
            ..Snapshot::default()
        };
        store.record(&a, at(10));
        store.record(&a, at(5));
        assert_eq!(store.latest(&a).await.expect("read"), Some(at(10)));
        assert_eq!(store.latest(&b).await.expect("read"), None);
        store.record(&a, at(20));
        assert_eq!(store.latest(&a).await.expect("read"), Some(at(20)));
    }
}
