//! One conversation turn, whatever API dialect asked for it: the session it belongs to (locked
//! for the turn, created, seeded with earlier history, or resumed), the CLI run, and the
//! session's bookkeeping when the run ends. The HTTP handlers translate to and from this.

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::error::ApiError;
use crate::runner::protocol::UserInput;
use crate::runner::{RunSpec, SessionArg, SystemPromptMode};
use crate::sandbox::SecurityLevel;
use crate::sessions::transcript::{self, Turn};
use crate::sessions::{now_secs, ClientSessionId, SessionMeta};
use crate::tenant::credential::Credential;
use crate::tenant::identity::TenantId;
use crate::turn::{self, Item};
use crate::usage::Owner;

pub struct TurnRequest {
    pub credential: Credential,
    pub tenant: TenantId,
    /// The client's session id; `None` starts a new session.
    pub session: Option<ClientSessionId>,
    pub model: String,
    pub system_prompt: Option<(String, SystemPromptMode)>,
    /// Earlier turns (`"user"`/`"assistant"`, content), used to seed a new session.
    pub history: Vec<(&'static str, Value)>,
    /// The new user turn's content.
    pub prompt: Value,
    pub max_output_tokens: Option<u32>,
    pub level: SecurityLevel,
    pub show_tools: bool,
    /// The request's MCP servers (already parsed; the policy is applied here).
    pub mcp: std::collections::BTreeMap<String, crate::mcp::ServerConfig>,
    /// Sampling, thinking and stop sequences for the model calls.
    pub call: crate::sandbox::masking::CallSettings,
    /// Tools the client offers and runs (with its results, on a continuation).
    pub client_tools: Option<crate::runner::client_tools::ClientTools>,
    /// On a continuation: the client tool calls (internal names) the client's results answer.
    /// The turn then has no new input: the CLI runs the deferred call again, gets the client's
    /// result, and goes on.
    pub deferred: Option<transcript::Deferred>,
    /// The JSON schema the answer must match (`output_format`, OpenAI `response_format`).
    pub output_schema: Option<Value>,
    /// None of the CLI's own tools, and no agent prompt of the CLI's ([`RunSpec::lean`]), as
    /// the request (or the operator's default) asked; `None`: chosen here ([`auto_lean`]).
    pub lean: Option<bool>,
    /// The request's audit record, when the audit log is on.
    pub audit: Option<crate::telemetry::audit::AuditHandle>,
    /// What admitted the request, when access control is on: its usage is counted under the
    /// grant's name too, within the grant's budgets.
    pub grant: Option<crate::access::Grant>,
}

/// Chooses how a new session starts: fresh, or resuming a transcript written from the
/// request's earlier turns.
fn seed_session(
    state: &AppState,
    req: &TurnRequest,
    key: uuid::Uuid,
    cli_cwd: &std::path::Path,
    version: &str,
) -> Result<SessionArg, ApiError> {
    if req.history.is_empty() {
        // A transcript left by a failed first turn would make `--session-id` refuse.
        state
            .sessions
            .remove_transcript(&req.tenant, cli_cwd, key)?;
        return Ok(SessionArg::New(key));
    }
    let turns: Vec<Turn<'_>> = req
        .history
        .iter()
        .map(|(role, content)| Turn {
            role,
            content: content.clone(),
        })
        .collect();
    let seeded = transcript::seed(
        key,
        cli_cwd,
        version,
        &req.model,
        &turns,
        req.deferred.as_ref(),
    );
    state
        .sessions
        .seed_transcript(&req.tenant, cli_cwd, key, &seeded)
        .map_err(|e| ApiError::Internal(format!("cannot write the history: {e}")))?;
    Ok(SessionArg::Resume(key))
}

/// What the request may still spend under its tenant's budgets and its access key's (`None`:
/// no budget), or 429 naming the spent budget and when it resets: before anything is locked,
/// admitted or spawned.
async fn within_budget(
    state: &AppState,
    tenant: &TenantId,
    grant: Option<&crate::access::Grant>,
) -> Result<Option<f64>, ApiError> {
    let tenant_budgets = crate::usage::Budgets {
        daily_usd: state.config.tenant_daily_budget_usd,
        monthly_usd: state.config.tenant_monthly_budget_usd,
    };
    let now = now_secs();
    let mut owners = vec![(Owner::Tenant(tenant), tenant_budgets, "this tenant's")];
    if let Some(grant) = grant {
        owners.push((
            Owner::AccessKey(&grant.name),
            grant.budgets,
            if grant.is_jwt() {
                "this identity's"
            } else {
                "this access key's"
            },
        ));
    }
    let mut left: Option<f64> = None;
    for (owner, budgets, whose) in owners {
        match budgets
            .remaining(&state.usage, owner, now)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
        {
            Ok(Some(more)) => left = Some(left.map_or(more, |l| l.min(more))),
            Ok(None) => {}
            Err(spent) => {
                return Err(ApiError::RateLimited {
                    message: format!(
                        "{whose} {} budget of ${:.2} is spent (${:.4} used); it resets at {}",
                        spent.period,
                        spent.budget_usd,
                        spent.used_usd,
                        crate::clock::iso8601(spent.resets_at as i64 * 1000)
                    ),
                    retry_after: Some(spent.resets_at.saturating_sub(now).max(1)),
                    limit: None,
                })
            }
        }
    }
    Ok(left)
}

/// Counts a turn's usage for its tenant and, when an access key or token admitted it, for that
/// grant (across every tenant that uses it).
async fn record_spent(
    state: &AppState,
    tenant: &TenantId,
    grant: Option<&str>,
    model: &str,
    counts: &crate::usage::Counts,
) {
    let day = crate::usage::day_of(now_secs());
    let mut owners = vec![Owner::Tenant(tenant)];
    owners.extend(grant.map(Owner::AccessKey));
    for owner in owners {
        if let Err(e) = state.usage.record(owner, day, model, counts).await {
            tracing::warn!(error = %e, "could not record the turn's usage");
        }
    }
}

/// How long a warm process may take to start up.
const WARM_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where a tenant's warm process for `req`'s settings waits, and what it was started with
/// (never the credential: the process's placeholder is bound to the next request's).
fn warm_key(state: &AppState, req: &TurnRequest) -> (uuid::Uuid, String) {
    let settings = state.install_key.keyed_hash(
        "warm-process",
        serde_json::json!([
            req.model,
            req.system_prompt.as_ref().map(|(text, mode)| (text, mode)),
            req.level.as_str(),
            req.max_output_tokens,
            req.lean == Some(true),
            // Which variable the CLI reads its credential from.
            format!("{:?}", req.credential.kind()),
            // Whose budget capped the process (`--max-budget-usd`): another grant's request
            // must not run under it, nor under none.
            req.grant.as_ref().map(|g| &g.name),
        ])
        .to_string()
        .as_bytes(),
    );
    let slot = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{}:{settings}", req.tenant.as_dir_name()).as_bytes(),
    );
    (slot, settings)
}

/// Starts a CLI for the tenant's next new conversation, in the background, unless the host is
/// busy with runs (a warm process is an optimisation, never a run's competitor).
fn prepare_warm(
    state: Arc<AppState>,
    tenant: TenantId,
    slot: uuid::Uuid,
    settings: String,
    spec: RunSpec,
) {
    if state.admission.running() >= state.admission.limits().max_runs {
        return;
    }
    tokio::spawn(async move {
        let ready = async {
            let mut process = state.runner.start(&spec).await?;
            // Started up before it waits, not when its request comes.
            process.initialize(WARM_START_LIMIT).await?;
            Ok::<_, crate::runner::RunError>(process)
        };
        match ready.await {
            Ok(process) => state.warm.put(slot, tenant, settings, process),
            Err(e) => tracing::warn!(error = %e, "could not prepare a warm CLI process"),
        }
    });
}

pub struct StartedTurn {
    pub session: ClientSessionId,
    pub events: mpsc::Receiver<Item>,
}

/// Starts the turn; its events follow on the returned channel.
///
/// A new session with earlier history gets a transcript written for it first, so the CLI
/// resumes the conversation with its roles and content blocks intact. For an existing session
/// the history in the request is ignored: the session already holds it, and only the new turn
/// is sent.
/// Whether a request that did not say is run lean: when it cannot use the CLI's own tools.
/// A request that brings its own tools (an agent framework, or the CLI as a client) is
/// answered as the API would, with its tools alone; a PARANOID request offers the model only
/// reading tools, and over an empty workspace there is nothing to read.
fn auto_lean(req: &TurnRequest, workspace: &std::path::Path) -> bool {
    let empty = || std::fs::read_dir(workspace).is_ok_and(|mut d| d.next().is_none());
    req.client_tools.is_some() || (req.level == crate::sandbox::SecurityLevel::Paranoid && empty())
}

pub async fn start(state: &Arc<AppState>, mut req: TurnRequest) -> Result<StartedTurn, ApiError> {
    if req.max_output_tokens == Some(0) {
        // The API refuses it; the CLI would silently take its own default instead.
        return Err(ApiError::InvalidRequest(
            "max_tokens: must be at least 1".into(),
        ));
    }
    if state.runner.sandbox.is_none()
        && req
            .client_tools
            .as_ref()
            .is_some_and(|c| c.resume_text.is_some())
    {
        // It could reach the CLI only through its environment, a host process's here.
        return Err(ApiError::InvalidRequest(
            "messages: text beside tool_result blocks needs the sandbox, which this gateway runs without".into(),
        ));
    }
    let sessions = &state.sessions;
    let workspace = state.workspace(&req.tenant)?;
    if req.lean.is_none() {
        req.lean = Some(auto_lean(&req, &workspace));
    }
    let version = state.claude.version.as_ref().map_err(|_| {
        ApiError::BadGateway("the Claude Code CLI is not installed on this gateway".into())
    })?;
    tracing::Span::current().record("tenant", req.tenant.fingerprint());
    let mcp = state.mcp.resolve(req.level, &req.mcp)?;
    state.rate.check_tenant(&req.tenant).await?;
    let budget_left = within_budget(state, &req.tenant, req.grant.as_ref()).await?;
    let id = req
        .session
        .clone()
        .unwrap_or_else(ClientSessionId::generate);
    let key = sessions.key(&req.tenant, &id);
    if let Some(audit) = &req.audit {
        audit.update(|r| {
            r.tenant = Some(req.tenant.fingerprint().to_owned());
            r.model = Some(req.model.clone());
            r.session = Some(key.to_string());
        });
    }
    let guard = Arc::new(sessions.lock(&req.tenant, key, &id).await?);
    let permit = state.admission.admit(&req.tenant).await?;
    let existing = sessions.load(&req.tenant, &id).await?;
    let projects = sessions.projects_dir(&req.tenant)?;
    let cli_cwd = state.runner.cli_cwd(&workspace);

    // Everything a live process was started with; a turn that differs needs a new one.
    let fingerprint = state.install_key.keyed_hash(
        "live-process",
        serde_json::json!([
            req.model,
            req.system_prompt.as_ref().map(|(text, mode)| (text, mode)),
            req.level.as_str(),
            req.max_output_tokens,
            mcp.identity(),
            req.call,
            req.output_schema,
            req.lean == Some(true),
            req.credential.secret().expose_secret(),
            // The process's spending cap is its grant's budget: another grant starts anew.
            req.grant.as_ref().map(|g| &g.name),
        ])
        .to_string()
        .as_bytes(),
    );
    // A turn with client tools ends at a deferred call, which only a resumed process picks up:
    // such turns neither use nor leave a live process.
    let client_tools = req.client_tools.is_some();
    // A live process holds the conversation as it was after its own last turn: it serves
    // only that very session state (a turn since, on another instance, or the session
    // deleted and begun anew, leaves it behind).
    let generation = |created_at: u64, turns: u64| format!("{fingerprint}:{created_at}:{turns}");
    let live = match &existing {
        Some(meta) if !client_tools => state
            .live
            .take(key, &generation(meta.created_at, meta.turns)),
        _ => None,
    };
    let reused = live.is_some();
    // A new conversation with nothing but its first prompt, in settings a warm process can
    // have been started with, begins in one when the tenant has it ready; either way, one is
    // made ready for its next.
    let warm_for = (existing.is_none()
        && req.history.is_empty()
        && req.deferred.is_none()
        && !client_tools
        && req.output_schema.is_none()
        && mcp.servers.is_empty()
        && state.warm.enabled())
    .then(|| warm_key(state, &req));
    let warm = match &warm_for {
        Some((slot, settings)) => {
            let taken = state.warm.take(*slot, settings);
            let outcome = if taken.is_some() { "hit" } else { "miss" };
            metrics::counter!("gateway_warm_starts_total", "outcome" => outcome).increment(1);
            taken
        }
        None => None,
    };
    let warmed = warm.is_some();
    // The CLI session this turn continues or starts; a live process continues its own, and a
    // warm one begins the session it was started with.
    let had_turns = existing.is_some();
    let assigned = match (&existing, warm.as_ref().and_then(|p| p.cli_session)) {
        (Some(meta), _) => meta.cli_session_id,
        (None, Some(started)) => started,
        (None, None) => key,
    };
    let next_warm = warm_for.map(|(slot, settings)| {
        let spec = RunSpec {
            credential: req.credential.clone(),
            tenant: req.tenant.clone(),
            model: req.model.clone(),
            system_prompt: req.system_prompt.clone(),
            workspace: workspace.clone(),
            session: Some(SessionArg::New(uuid::Uuid::new_v4())),
            projects_dir: Some(projects.clone()),
            max_output_tokens: req.max_output_tokens,
            level: req.level,
            mcp: None,
            call: req.call.clone(),
            client_tools: None,
            output_schema: None,
            max_budget_usd: budget_left,
            lean: req.lean == Some(true),
        };
        (slot, settings, spec, req.tenant.clone())
    });
    let process = match live.or(warm) {
        Some(mut process) => {
            process.set_deadline(tokio::time::Instant::now() + state.runner.run_timeout);
            // A warm process was started with an earlier request's credential and settings.
            process.rebind(&req.credential, req.call.clone());
            if warmed {
                sessions.forget_local(&req.tenant, key, None)?;
            }
            process
        }
        None => {
            // Remote servers are connected (and offered on the bridge) only for a new process;
            // a live one keeps the routes it was started with.
            let offered =
                crate::mcp::connect_all(&mcp, &state.mcp_connector, &state.mcp_bridge).await?;
            let session_arg = match &existing {
                Some(meta) => {
                    // The last turn may have run on another instance.
                    sessions
                        .restore_transcript(&req.tenant, &cli_cwd, meta)
                        .await?;
                    if let Some(deferred) = &req.deferred {
                        sessions.answer_deferred(&req.tenant, assigned, deferred)?;
                    }
                    SessionArg::Resume(assigned)
                }
                None => {
                    // What this instance kept of a session since deleted elsewhere.
                    sessions.forget_local(&req.tenant, key, None)?;
                    seed_session(state, &req, key, &cli_cwd, version)?
                }
            };
            let spec = RunSpec {
                credential: req.credential,
                tenant: req.tenant.clone(),
                model: req.model.clone(),
                system_prompt: req.system_prompt,
                workspace,
                session: Some(session_arg),
                projects_dir: Some(projects),
                max_output_tokens: req.max_output_tokens,
                level: req.level,
                mcp: (!mcp.servers.is_empty()).then(|| mcp.run(&offered)),
                call: req.call.clone(),
                client_tools: req.client_tools.clone(),
                output_schema: req.output_schema.clone(),
                max_budget_usd: budget_left,
                lean: req.lean == Some(true),
            };
            let mut process = state.runner.start(&spec).await?;
            for (_, route) in offered {
                process.hold(Box::new(route.lease));
            }
            process
        }
    };
    // A continuation of client tool calls starts with no process of the session running (such
    // turns leave none), so its transcript is final: a failed one is cut back to this length.
    let continuation_length = match (&existing, &req.deferred) {
        (Some(_), Some(_)) => sessions.transcript_len(&req.tenant, assigned)?,
        _ => None,
    };
    tracing::info!(
        tenant = req.tenant.fingerprint(),
        model = %req.model,
        security_level = req.level.as_str(),
        resumed = existing.is_some(),
        live = reused,
        warm = warmed,
        "starting CLI run"
    );

    let tenant = req.tenant.clone();
    let audit = req.audit.clone();
    let warm_state = state.clone();
    // The turn's usage, handed from its result to its commit, which records it before the
    // client hears the turn's end (so a budget check on the next request counts it).
    let spent: Arc<std::sync::Mutex<Option<(String, crate::usage::Counts)>>> = Arc::default();
    let spent_at_result = spent.clone();
    let model_label = crate::telemetry::metrics::model_label(&req.model, &state.config.models);
    let failed_label = model_label.clone();
    let on_result = Box::new(
        move |result: &crate::runner::protocol::ResultLine,
              upstream: Option<crate::sandbox::usage::UpstreamUsage>| {
            // The upstream's own report where the gateway read it; the CLI's otherwise.
            let usage = match upstream {
                Some(upstream) => crate::runner::protocol::ResultUsage {
                    input_tokens: upstream.input_tokens,
                    output_tokens: upstream.output_tokens,
                    cache_creation_input_tokens: upstream.cache_creation_input_tokens,
                    cache_read_input_tokens: upstream.cache_read_input_tokens,
                },
                None => result.usage.clone().unwrap_or_default(),
            };
            crate::telemetry::metrics::record_usage(&model_label, &usage, result.total_cost_usd);
            let counts = crate::usage::Counts {
                requests: 1,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_input_tokens: usage.cache_read_input_tokens,
                cache_creation_input_tokens: usage.cache_creation_input_tokens,
                cost_microdollars: result
                    .total_cost_usd
                    .map_or(0, |usd| (usd.max(0.0) * 1e6).round() as u64),
            };
            *spent_at_result.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((model_label.clone(), counts));
            if let Some(audit) = audit {
                audit.update(|r| {
                    r.input_tokens += usage.input_tokens;
                    r.output_tokens += usage.output_tokens;
                    r.cache_read_input_tokens += usage.cache_read_input_tokens;
                    r.cache_creation_input_tokens += usage.cache_creation_input_tokens;
                    r.cost_usd = result.total_cost_usd;
                });
            }
            if let Some((slot, settings, spec, tenant)) = next_warm {
                prepare_warm(warm_state, tenant, slot, settings, spec);
            }
            // The CLI's output is untrusted (a tool in the sandbox may be able to write to it):
            // the session keeps the id the gateway assigned, whatever a result line claims.
            if result.session_id.as_deref() != Some(assigned.to_string().as_str()) {
                tracing::warn!(
                    tenant = tenant.fingerprint(),
                    "the CLI reported another session id than the one assigned; keeping ours"
                );
            }
        },
    );
    let now = now_secs();
    let meta = match &existing {
        Some(meta) => SessionMeta {
            cli_session_id: assigned,
            last_used_at: now,
            turns: meta.turns + 1,
            model: req.model.clone(),
            ..meta.clone()
        },
        None => SessionMeta {
            id: id.as_str().to_owned(),
            cli_session_id: assigned,
            created_at: now,
            last_used_at: now,
            turns: 1,
            model: req.model.clone(),
            transcript_sha256: None,
            transcript_len: None,
        },
    };
    let kept_generation = generation(meta.created_at, meta.turns);
    let commit: turn::Commit = {
        let state = state.clone();
        let tenant = req.tenant.clone();
        let grant = req.grant.as_ref().map(|g| g.name.clone());
        let lock = guard.clone();
        Box::new(move |last_record: Option<String>| {
            Box::pin(async move {
                let spent = spent.lock().unwrap_or_else(|e| e.into_inner()).take();
                // Counted whatever becomes of the session (the upstream was paid), beside the
                // session's own commit rather than before it.
                let record_usage = async {
                    if let Some((model, counts)) = spent {
                        record_spent(&state, &tenant, grant.as_deref(), &model, &counts).await;
                    }
                };
                let sessions = &state.sessions;
                let commit = async {
                    let mut meta = meta;
                    let transcript = if sessions.keeps_transcripts() {
                        let bytes = sessions
                            .settled_transcript(&tenant, assigned, last_record.as_deref())
                            .await?;
                        meta.transcript_sha256 = Some(crate::sessions::sha256_hex(&bytes));
                        meta.transcript_len = Some(bytes.len() as u64);
                        Some(bytes)
                    } else {
                        None
                    };
                    sessions
                        .commit(&tenant, &meta, transcript.as_deref(), &lock)
                        .await
                };
                let ((), committed) = tokio::join!(record_usage, commit);
                committed?;
                Ok(())
            })
        })
    };
    // Only a session the client named is likely to be continued; a generated one gets a
    // process that exits after its turn.
    let named = req.session.is_some() && !client_tools;
    let keep: Option<Box<dyn FnOnce(crate::runner::CliProcess) + Send>> =
        if named && state.live.enabled() {
            let state = state.clone();
            let tenant = req.tenant.clone();
            Some(Box::new(move |process| {
                state.live.put(key, tenant, kept_generation, process)
            }))
        } else {
            None
        };
    let on_failure = {
        let state = state.clone();
        let tenant = req.tenant.clone();
        let grant = req.grant.as_ref().map(|g| g.name.clone());
        let model = req.model.clone();
        let checkpoint =
            crate::sessions::Checkpoint::new(assigned, had_turns).at_length(continuation_length);
        Box::new(
            move |prompt: &Value, upstream: Option<crate::sandbox::usage::UpstreamUsage>| {
                if let Err(e) = state.sessions.roll_back(&tenant, checkpoint, prompt) {
                    tracing::error!(error = %e, "could not put the session back after a failed turn");
                }
                // The upstream was paid for the calls the run made, whatever became of it: a
                // turn its client abandons (or that fails late) counts against the budgets.
                if let Some(upstream) = upstream {
                    let counts = crate::usage::Counts::of_unfinished_run(&model, &upstream);
                    tokio::spawn(async move {
                        record_spent(&state, &tenant, grant.as_deref(), &failed_label, &counts)
                            .await;
                    });
                }
            },
        )
    };
    let hooks = turn::Hooks {
        on_result,
        commit,
        on_failure,
        // The session stays locked until its process has exited or been kept.
        hold: Box::new((guard, permit)),
        keep,
    };
    let input = req.deferred.is_none().then(|| UserInput::new(req.prompt));
    let shape = turn::Shape {
        show_tools: req.show_tools,
        structured: req.output_schema.is_some(),
    };
    let events = turn::start(process, input, shape, hooks);
    Ok(StartedTurn {
        session: id,
        events,
    })
}
