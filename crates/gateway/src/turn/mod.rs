//! One user turn through the CLI, as a stream of typed turn events ([`event::TurnEvent`]).
//!
//! [`start`] sends the turn to a CLI process and drives it on a task of its own, which
//! forwards what the [`assemble::Assembler`] makes of each output line over a channel. The task
//! owns the process: when the receiver is dropped (the client went away, the request ended)
//! the task ends and the process group is killed with it.

pub mod assemble;
pub mod event;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::runner::protocol::{CliLine, ResultLine, UserInput};
use crate::runner::{CliProcess, RunError};
use assemble::{Assembler, Step};
use event::{TurnEvent, Usage};

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The upstream API answered with an error status (as the CLI reported it).
    #[error("upstream error {status}: {message}")]
    Upstream {
        status: u16,
        message: String,
        /// The upstream's `retry-after`, in seconds, when the gateway's proxy saw one.
        retry_after: Option<u64>,
    },
    /// The upstream refused the call for a limit of the credential's own: one of a
    /// subscription's windows, or its allowance for third-party use.
    #[error(
        "the upstream refused the call: a usage limit of this credential is reached: {message}"
    )]
    UsageLimit {
        refusal: crate::quota::Refusal,
        message: String,
    },
    /// The CLI reported a failure that is not an upstream status.
    #[error("the Claude Code CLI reported an error: {0}")]
    Cli(String),
    #[error(transparent)]
    Run(#[from] RunError),
    /// The run reached what remained of the tenant's budget before its answer.
    #[error("the run reached what remained of this tenant's budget before its answer")]
    BudgetSpent,
    /// The turn could not be recorded in its session.
    #[error(transparent)]
    Session(#[from] crate::sessions::SessionError),
}

/// What the driving task reports.
#[derive(Debug)]
pub enum Item {
    /// The upstream's first `message_start`: the resolved model and the input usage.
    Started {
        model: String,
        usage: Option<Usage>,
    },
    Events(Vec<TurnEvent>),
    Done(Vec<TurnEvent>, Box<ResultLine>),
    Failed(TurnError),
}

/// How long the CLI may take to exit after its result (writing its transcript).
const FINISH_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a killed CLI (and its sandbox) may take to be gone.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Called with a turn's result and, where the gateway's upstream proxy read it, the usage the
/// upstream itself reported for the run (which the metrics prefer to the CLI's word).
pub type OnResult =
    Box<dyn FnOnce(&ResultLine, Option<crate::sandbox::usage::UpstreamUsage>) + Send>;

/// Called with a turn's prompt when it ends without a result, and the usage the upstream
/// reported of the calls its run made ([`Hooks::on_failure`]).
pub type OnFailure = Box<dyn FnOnce(&Value, Option<crate::sandbox::usage::UpstreamUsage>) + Send>;

/// Records the turn in its session once its result is in, before the client hears of it, so
/// that the session is current when the client moves on; called with the transcript uuid of
/// the last record the CLI printed (the transcript holds the turn once it holds that record).
/// A turn that cannot be recorded fails, and its session is put back.
pub type Commit = Box<
    dyn FnOnce(Option<String>) -> futures::future::BoxFuture<'static, Result<(), TurnError>> + Send,
>;

/// What a turn's owner hooks into its end.
pub struct Hooks {
    /// Called with the result as soon as it arrives (the turn's usage).
    pub on_result: OnResult,
    pub commit: Commit,
    /// Dropped only once the CLI has exited or been kept (a session lock).
    pub hold: Box<dyn Send>,
    /// Takes the process after a successful turn to keep it for the next one (live sessions);
    /// without it the process gets no more input and exits.
    pub keep: Option<Box<dyn FnOnce(CliProcess) + Send>>,
    /// Called with the turn's prompt when the turn ends without a result (failed, timed out,
    /// or its client left), once its process is gone and before `hold` is dropped: puts the
    /// session back, and counts what the upstream reported of the calls the run made (they
    /// were paid for all the same).
    pub on_failure: OnFailure,
}

/// What the client asked its message to show.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The CLI's own tool calls and results, as blocks.
    pub show_tools: bool,
    /// Only the run's structured output (a JSON schema was given), as the one text block.
    pub structured: bool,
}

/// Sends `input` to `process` (none: the resumed session goes on by itself, a deferred client
/// tool call) and returns the channel of what follows.
pub fn start(
    process: CliProcess,
    input: Option<UserInput>,
    shape: Shape,
    hooks: Hooks,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(64);
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let Hooks {
                on_result,
                commit,
                hold,
                keep,
                on_failure,
            } = hooks;
            // A failed turn's process is killed and waited for before the roll-back, so nothing
            // writes to the session behind it (a CLI may flush its transcript late).
            if let Err(mut process) = drive(
                process,
                input.as_ref(),
                shape,
                &tx,
                (on_result, commit),
                keep,
            )
            .await
            {
                process.put_down(KILL_WAIT).await;
                let usage = process.observed.as_ref().and_then(|o| o.take_usage());
                on_failure(
                    input.as_ref().map_or(&Value::Null, UserInput::content),
                    usage,
                );
            }
            drop(hold);
        },
        span,
    ));
    rx
}

/// Drives the turn to its end: `Ok` once its result is in (the process kept or finished),
/// else the process, for the caller to put down before it rolls the session back.
async fn drive(
    mut process: CliProcess,
    input: Option<&UserInput>,
    shape: Shape,
    tx: &mpsc::Sender<Item>,
    (on_result, commit): (OnResult, Commit),
    keep: Option<Box<dyn FnOnce(CliProcess) + Send>>,
) -> Result<(), CliProcess> {
    {
        let mut assembler = Assembler::new(shape.show_tools).structured(shape.structured);
        if let Some(input) = input {
            if let Err(e) = process.send(input).await {
                let _ = tx.send(Item::Failed(e.into())).await;
                return Err(process);
            }
        }
        // Input stays open until the result has been read whole, even when no further turn
        // will come: a CLI whose input has ended exits right after printing its result, and
        // exiting drops whatever of a large result line its output pipe had not yet taken (a
        // 2 MiB answer arrived cut short). `finish` closes it once the result is in.
        let mut started = false;
        let began = std::time::Instant::now();
        let mut first_output = false;
        // The transcript uuid of the last record of the main conversation the CLI printed.
        let mut last_record: Option<String> = None;
        loop {
            let line = tokio::select! {
                _ = tx.closed() => return Err(process),
                line = process.next_line() => line,
            };
            if let Ok(Some(CliLine::Assistant(m) | CliLine::User(m))) = &line {
                if m.parent_tool_use_id.is_none() && m.uuid.is_some() {
                    last_record.clone_from(&m.uuid);
                }
            }
            let item = match line {
                Ok(Some(line)) => match assembler.on_line(line) {
                    Step::Continue(events) if events.is_empty() => None,
                    Step::Continue(events) => Some(Item::Events(events)),
                    // A process the kernel killed for want of memory ends the run, even when
                    // the CLI carried on to a result without it.
                    Step::Finished(events, result) => match process.out_of_memory() {
                        Some(e) => Some(Item::Failed(e.into())),
                        None => Some(Item::Done(events, result)),
                    },
                    Step::Failed(e) => Some(Item::Failed(with_observed(e, &process))),
                },
                Ok(None) => Some(Item::Failed(
                    RunError::Exited(process.exit_description().await).into(),
                )),
                Err(e) => Some(Item::Failed(e.into())),
            };
            if !started {
                if let Some(model) = assembler.model.clone() {
                    started = true;
                    let usage = assembler.start_usage;
                    if tx.send(Item::Started { model, usage }).await.is_err() {
                        return Err(process);
                    }
                }
            }
            let Some(item) = item else { continue };
            if let Item::Events(events) = &item {
                if !first_output && events.iter().any(TurnEvent::is_output) {
                    first_output = true;
                    metrics::histogram!("gateway_time_to_first_token_seconds")
                        .record(began.elapsed().as_secs_f64());
                }
            }
            if let Item::Done(_, result) = &item {
                // A result counts even if the client has gone: the transcript holds the turn.
                on_result(
                    result,
                    process.observed.as_ref().and_then(|o| o.take_usage()),
                );
                if let Err(e) = commit(last_record).await {
                    tracing::error!(error = %e, "could not record the session's turn");
                    let _ = tx.send(Item::Failed(e)).await;
                    return Err(process);
                }
                let _ = tx.send(item).await;
                if let Some(keep) = keep {
                    keep(process);
                    return Ok(());
                }
                if !process.finish(FINISH_GRACE).await {
                    tracing::warn!("the CLI did not exit after its result; killing it");
                }
                return Ok(());
            }
            let last = matches!(item, Item::Failed(_));
            if tx.send(item).await.is_err() || last {
                return Err(process);
            }
        }
    }
}

/// A failed turn's error with what the gateway's own proxy saw of the run's refused call,
/// which it trusts over the CLI's account: the upstream's `retry-after`, and the limit of the
/// credential's own the call was refused for.
fn with_observed(e: TurnError, process: &CliProcess) -> TurnError {
    let Some(observed) = &process.observed else {
        return e;
    };
    match e {
        TurnError::Upstream {
            status, message, ..
        } => match observed.refusal() {
            Some(refusal) if matches!(status, 400 | 403 | 429) => {
                TurnError::UsageLimit { refusal, message }
            }
            _ => TurnError::Upstream {
                status,
                message,
                retry_after: observed.retry_after(),
            },
        },
        TurnError::UsageLimit { refusal, message } => TurnError::UsageLimit {
            refusal: observed.refusal().unwrap_or(refusal),
            message,
        },
        other => other,
    }
}
