//! What each tenant spends: per UTC day and model, its requests and the tokens the upstream
//! reported through the gateway's own proxy (the CLI's word only where no proxy stood
//! between), and the CLI's cost estimate. Kept with the sessions: on disk
//! (`tenants/<t>/usage/<day>.json`) for one instance, in Redis (a hash per tenant and day,
//! kept 40 days) when instances share it. `GET /v1/usage` shows the calling tenant its own;
//! what the upstream itself allows the tenant is [`crate::quota`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::shared::Redis;
use crate::tenant::identity::TenantId;

/// How long a day's counts are kept in Redis (a month's view and some).
const REDIS_DAYS: u64 = 40;

/// One model's counts over some days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// The CLI's cost estimate, in millionths of a dollar.
    pub cost_microdollars: u64,
}

impl Counts {
    const FIELDS: [&'static str; 6] = [
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cost_microdollars",
    ];

    fn values(&self) -> [u64; 6] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
            self.cost_microdollars,
        ]
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "requests" => &mut self.requests,
            "input_tokens" => &mut self.input_tokens,
            "output_tokens" => &mut self.output_tokens,
            "cache_read_input_tokens" => &mut self.cache_read_input_tokens,
            "cache_creation_input_tokens" => &mut self.cache_creation_input_tokens,
            "cost_microdollars" => &mut self.cost_microdollars,
            _ => return None,
        })
    }

    pub fn add(&mut self, other: &Counts) {
        for (name, value) in Self::FIELDS.iter().zip(other.values()) {
            if let Some(field) = self.field_mut(name) {
                *field += value;
            }
        }
    }
}

/// List prices in cents per million tokens (input, output), by the first name part a model's
/// name holds; cache reads cost a tenth of input, cache writes a quarter more.
const LIST_PRICES: [(&str, (u64, u64)); 9] = [
    ("opus-4-0", (1500, 7500)),
    ("opus-4-1", (1500, 7500)),
    ("opus-4-2025", (1500, 7500)),
    ("3-opus", (1500, 7500)),
    ("opus", (500, 2500)),
    ("sonnet", (300, 1500)),
    ("3-haiku", (25, 125)),
    ("3-5-haiku", (80, 400)),
    ("haiku", (100, 500)),
];

/// A model's list price, in cents per million tokens (input, output); a model the table does
/// not know is priced as the dearest: a budget errs on the side of stopping.
fn list_price(model: &str) -> (u64, u64) {
    let model = model.to_ascii_lowercase();
    LIST_PRICES
        .iter()
        .find(|(part, _)| model.contains(part))
        .map_or((1500, 7500), |(_, price)| *price)
}

impl Counts {
    /// A run that ended without the CLI's result (failed, timed out, its client gone): the
    /// tokens the gateway's proxy saw the upstream report, at `model`'s list price, since the
    /// CLI's own cost estimate never came.
    pub fn of_unfinished_run(model: &str, usage: &crate::sandbox::usage::UpstreamUsage) -> Self {
        let (input, output) = list_price(model);
        Counts {
            requests: 1,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_input_tokens: usage.cache_read_input_tokens,
            cache_creation_input_tokens: usage.cache_creation_input_tokens,
            // A cent per million tokens is a hundredth of a microdollar per token.
            cost_microdollars: (usage.input_tokens * input
                + usage.output_tokens * output
                + usage.cache_read_input_tokens * input / 10
                + usage.cache_creation_input_tokens * input * 5 / 4)
                / 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("usage storage failed: {0}")]
    Storage(String),
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedError),
}

/// Whose spending a count is: a tenant's, or an access key's (the operator's keys, and the
/// subjects of the identity provider's tokens), across every tenant that used it.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Tenant(&'a TenantId),
    AccessKey(&'a str),
}

impl<'a> From<&'a TenantId> for Owner<'a> {
    fn from(tenant: &'a TenantId) -> Self {
        Owner::Tenant(tenant)
    }
}

enum Store {
    Disk {
        tenants_dir: PathBuf,
        /// Access keys' counts, a directory per key (its name in hex: names are the
        /// operator's, but a path is no place to trust them).
        keys_dir: PathBuf,
        /// Days' files are read, added to and written back one at a time.
        lock: Mutex<()>,
    },
    Redis(Redis),
}

pub struct UsageStore {
    store: Store,
}

/// Days since the Unix epoch (UTC) of `secs`.
pub fn day_of(secs: u64) -> u64 {
    secs / 86_400
}

impl UsageStore {
    pub fn disk(tenants_dir: PathBuf, keys_dir: PathBuf) -> Self {
        Self {
            store: Store::Disk {
                tenants_dir,
                keys_dir,
                lock: Mutex::new(()),
            },
        }
    }

    pub fn redis(redis: Redis) -> Self {
        Self {
            store: Store::Redis(redis),
        }
    }

    fn day_file(&self, owner: Owner<'_>, day: u64) -> Option<PathBuf> {
        let Store::Disk {
            tenants_dir,
            keys_dir,
            ..
        } = &self.store
        else {
            return None;
        };
        let dir = match owner {
            Owner::Tenant(tenant) => tenants_dir.join(tenant.as_dir_name()),
            Owner::AccessKey(name) => keys_dir.join(hex::encode(name)),
        };
        Some(dir.join("usage").join(format!("{day}.json")))
    }

    fn day_key(redis: &Redis, owner: Owner<'_>, day: u64) -> String {
        match owner {
            Owner::Tenant(tenant) => {
                format!("{}usage:{{{}}}:{day}", redis.prefix, tenant.as_dir_name())
            }
            Owner::AccessKey(name) => {
                format!("{}usage-key:{{{}}}:{day}", redis.prefix, hex::encode(name))
            }
        }
    }

    /// Adds `counts` to the owner's `model` on `day`.
    pub async fn record(
        &self,
        owner: Owner<'_>,
        day: u64,
        model: &str,
        counts: &Counts,
    ) -> Result<(), UsageError> {
        match &self.store {
            Store::Disk { lock, .. } => {
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                let Some(path) = self.day_file(owner, day) else {
                    return Ok(());
                };
                let mut models = read_day(&path)?;
                models.entry(model.to_owned()).or_default().add(counts);
                let bytes =
                    serde_json::to_vec(&models).map_err(|e| UsageError::Storage(e.to_string()))?;
                crate::sessions::records::replace_file(&path, &bytes).map_err(storage)
            }
            Store::Redis(redis) => {
                let key = Self::day_key(redis, owner, day);
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (name, value) in Counts::FIELDS.iter().zip(counts.values()) {
                    pipe.cmd("HINCRBY")
                        .arg(&key)
                        .arg(format!("{model}|{name}"))
                        .arg(value)
                        .ignore();
                }
                pipe.cmd("EXPIRE")
                    .arg(&key)
                    .arg(REDIS_DAYS * 86_400)
                    .ignore();
                redis
                    .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                    .await?;
                Ok(())
            }
        }
    }

    /// The owner's counts per model over the days `from..=to`.
    pub async fn between(
        &self,
        owner: Owner<'_>,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<String, Counts>, UsageError> {
        Ok(sum(&self.by_day(owner, from, to).await?))
    }

    /// The owner's counts per model for each day of `from..=to`, in order, read in one go
    /// (one pipeline in Redis).
    pub async fn by_day(
        &self,
        owner: Owner<'_>,
        from: u64,
        to: u64,
    ) -> Result<Vec<BTreeMap<String, Counts>>, UsageError> {
        match &self.store {
            Store::Disk { .. } => (from..=to)
                .map(|day| match self.day_file(owner, day) {
                    Some(path) => read_day(&path),
                    None => Ok(BTreeMap::new()),
                })
                .collect(),
            Store::Redis(redis) => {
                let mut pipe = redis::pipe();
                for day in from..=to {
                    pipe.cmd("HGETALL").arg(Self::day_key(redis, owner, day));
                }
                let days: Vec<BTreeMap<String, u64>> = redis
                    .run(|mut c| async move { pipe.query_async(&mut c).await })
                    .await?;
                Ok(days
                    .into_iter()
                    .map(|fields| {
                        let mut models: BTreeMap<String, Counts> = BTreeMap::new();
                        for (field, value) in fields {
                            let Some((model, name)) = field.rsplit_once('|') else {
                                continue;
                            };
                            if let Some(slot) =
                                models.entry(model.to_owned()).or_default().field_mut(name)
                            {
                                *slot += value;
                            }
                        }
                        models
                    })
                    .collect())
            }
        }
    }
}

/// Days' counts added up per model.
pub fn sum<'a>(
    days: impl IntoIterator<Item = &'a BTreeMap<String, Counts>>,
) -> BTreeMap<String, Counts> {
    let mut total: BTreeMap<String, Counts> = BTreeMap::new();
    for day in days {
        for (model, counts) in day {
            total.entry(model.clone()).or_default().add(counts);
        }
    }
    total
}

/// The first day of the month `day` is in, and of the next.
fn month_of(day: u64) -> (u64, u64) {
    let (_, _, dom) = crate::clock::civil_from_days(day as i64);
    let start = day - u64::from(dom - 1);
    let mut next = day + 1;
    while crate::clock::civil_from_days(next as i64).2 != 1 {
        next += 1;
    }
    (start, next)
}

/// Spending limits per tenant, in dollars (`--tenant-daily-budget-usd`,
/// `--tenant-monthly-budget-usd`), checked against the recorded cost before anything runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budgets {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

/// A budget that is spent: which, how much was used, and when it resets.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub period: &'static str,
    pub budget_usd: f64,
    pub used_usd: f64,
    /// Unix seconds of the reset (the next UTC midnight, or the next month's first).
    pub resets_at: u64,
}

impl Budgets {
    pub fn is_on(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }

    /// What the owner may still spend at `now` (seconds), or which budget is spent. `None`:
    /// no budget applies.
    pub async fn remaining(
        &self,
        store: &UsageStore,
        owner: Owner<'_>,
        now: u64,
    ) -> Result<Result<Option<f64>, Spent>, UsageError> {
        if !self.is_on() {
            return Ok(Ok(None));
        }
        let today = day_of(now);
        let (month_start, next_month) = month_of(today);
        // The month's days, read once: today's are the last of them.
        let days = store.by_day(owner, month_start, today).await?;
        let cost = |from: u64| {
            let skip = (from - month_start) as usize;
            sum(&days[skip..])
                .values()
                .map(|c| c.cost_microdollars)
                .sum::<u64>() as f64
                / 1e6
        };
        let mut remaining: Option<f64> = None;
        for (period, budget, from, resets_day) in [
            ("daily", self.daily_usd, today, today + 1),
            ("monthly", self.monthly_usd, month_start, next_month),
        ] {
            let Some(budget) = budget else { continue };
            let used = cost(from);
            if used >= budget {
                return Ok(Err(Spent {
                    period,
                    budget_usd: budget,
                    used_usd: used,
                    resets_at: resets_day * 86_400,
                }));
            }
            let left = budget - used;
            remaining = Some(remaining.map_or(left, |r: f64| r.min(left)));
        }
        Ok(Ok(remaining))
    }
}

fn storage(e: std::io::Error) -> UsageError {
    UsageError::Storage(e.to_string())
}

fn read_day(path: &std::path::Path) -> Result<BTreeMap<String, Counts>, UsageError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| UsageError::Storage(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(storage(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_run_is_priced_at_its_models_list_price_and_the_unknown_dearest() {
        let usage = crate::sandbox::usage::UpstreamUsage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_input_tokens: 1_000_000,
            cache_creation_input_tokens: 0,
            calls: 2,
        };
        let cost = |model: &str| Counts::of_unfinished_run(model, &usage).cost_microdollars;
        // $3 in, $1.50 out, $0.30 of cache reads.
        assert_eq!(cost("sonnet"), 4_800_000);
        assert_eq!(cost("claude-sonnet-4-5"), 4_800_000);
        assert_eq!(cost("claude-opus-4-1-20250805"), 24_000_000);
        assert!(cost("claude-haiku-4-5") < cost("sonnet"));
        assert_eq!(cost("some-new-model"), cost("claude-opus-4-1"));
        assert_eq!(Counts::of_unfinished_run("sonnet", &usage).requests, 1);
    }

    #[tokio::test]
    async fn days_add_up_per_model_and_tenants_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UsageStore::disk(dir.path().join("tenants"), dir.path().join("keys"));
        let (a, b) = (
            TenantId::from_dir_name("a".into()),
            TenantId::from_dir_name("b".into()),
        );
        let one = Counts {
            requests: 1,
            input_tokens: 10,
            output_tokens: 2,
            cost_microdollars: 5,
            ..Counts::default()
        };
        store
            .record((&a).into(), 100, "sonnet", &one)
            .await
            .expect("record");
        store
            .record((&a).into(), 101, "sonnet", &one)
            .await
            .expect("record");
        store
            .record((&a).into(), 101, "opus", &one)
            .await
            .expect("record");
        store
            .record((&b).into(), 101, "sonnet", &one)
            .await
            .expect("record");
        let both = store.between((&a).into(), 100, 101).await.expect("read");
        assert_eq!(both["sonnet"].requests, 2);
        assert_eq!(both["sonnet"].input_tokens, 20);
        assert_eq!(both["opus"].output_tokens, 2);
        let today = store.between((&a).into(), 101, 101).await.expect("read");
        assert_eq!(today["sonnet"].requests, 1);
        assert_eq!(
            store
                .between((&b).into(), 100, 101)
                .await
                .expect("read")
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn an_access_keys_counts_are_its_own_whatever_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UsageStore::disk(dir.path().join("tenants"), dir.path().join("keys"));
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        let tenant = TenantId::from_dir_name("team-a".into());
        for name in ["team-a", "..", "jwt:alice@example.test"] {
            store
                .record(Owner::AccessKey(name), 7, "sonnet", &one)
                .await
                .expect("record");
        }
        for name in ["team-a", "..", "jwt:alice@example.test"] {
            let counts = store
                .between(Owner::AccessKey(name), 7, 7)
                .await
                .expect("read");
            assert_eq!(counts["sonnet"].requests, 1, "{name}");
        }
        assert!(store
            .between((&tenant).into(), 7, 7)
            .await
            .expect("read")
            .is_empty());
        // Every key's files stay in the keys' own directory.
        assert!(!dir.path().join("usage").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("keys"))
                .expect("keys dir")
                .count(),
            3
        );
    }

    #[tokio::test]
    async fn a_spent_budget_holds_until_its_period_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UsageStore::disk(dir.path().join("tenants"), dir.path().join("keys"));
        let t = TenantId::from_dir_name("spender".into());
        let budgets = Budgets {
            daily_usd: Some(0.02),
            monthly_usd: Some(0.05),
        };
        // 2026-12-03 12:00 UTC.
        let noon = 1_796_299_200;
        let day = day_of(noon);
        let spend = |usd: f64| Counts {
            requests: 1,
            cost_microdollars: (usd * 1e6) as u64,
            ..Counts::default()
        };
        assert_eq!(
            budgets
                .remaining(&store, (&t).into(), noon)
                .await
                .expect("read"),
            Ok(Some(0.02))
        );
        store
            .record((&t).into(), day, "sonnet", &spend(0.015))
            .await
            .expect("record");
        // Under the budget: the next request runs (and may cross it).
        let left = budgets
            .remaining(&store, (&t).into(), noon)
            .await
            .expect("read");
        assert!(
            matches!(left, Ok(Some(l)) if (l - 0.005).abs() < 1e-9),
            "{left:?}"
        );
        store
            .record((&t).into(), day, "sonnet", &spend(0.015))
            .await
            .expect("record");
        let spent = budgets
            .remaining(&store, (&t).into(), noon)
            .await
            .expect("read")
            .expect_err("spent");
        assert_eq!(spent.period, "daily");
        assert_eq!(spent.resets_at, (day + 1) * 86_400);
        // The next day the daily budget is back; the month's holds what was spent.
        let tomorrow = noon + 86_400;
        let left = budgets
            .remaining(&store, (&t).into(), tomorrow)
            .await
            .expect("read");
        assert!(
            matches!(left, Ok(Some(l)) if (l - 0.02).abs() < 1e-9),
            "{left:?}"
        );
        store
            .record((&t).into(), day + 1, "sonnet", &spend(0.021))
            .await
            .expect("record");
        let spent = budgets
            .remaining(&store, (&t).into(), tomorrow + 3600)
            .await
            .expect("read")
            .expect_err("spent");
        assert_eq!(spent.period, "daily");
        // The month: 0.051 spent by the 4th; it resets on January 1st.
        store
            .record((&t).into(), day + 1, "opus", &spend(0.001))
            .await
            .expect("record");
        let spent = budgets
            .remaining(&store, (&t).into(), tomorrow + 86_400)
            .await
            .expect("read")
            .expect_err("spent");
        assert_eq!(spent.period, "monthly");
        assert_eq!(
            crate::clock::iso8601(spent.resets_at as i64 * 1000),
            "2027-01-01T00:00:00.000Z"
        );
    }
}
