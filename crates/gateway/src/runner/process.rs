//! One supervised CLI process: spawned in its own process group, fed user turns on stdin, read
//! line by line from stdout, and killed with its whole group and reaped when dropped.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

use super::command::CommandLine;
use super::protocol::{CliLine, UserInput};
use super::rundir::RunDir;
use super::RunError;

/// How much of the CLI's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

pub struct CliProcess {
    child: Child,
    pgid: Option<Pid>,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    deadline: Instant,
    max_line_bytes: usize,
    line: Vec<u8>,
    // Dropped after the process group is killed (see Drop), so nothing still writes into it.
    _dir: RunDir,
    /// What must live exactly as long as the process (e.g. its MCP bridge routes).
    held: Vec<Box<dyn Send>>,
    /// The run's credential placeholder (it stops working with the process).
    placeholder: Option<crate::sandbox::masking::Lease>,
    /// The CLI session the process was started to begin or resume.
    pub cli_session: Option<uuid::Uuid>,
    /// What the gateway's upstream proxy saw of this run's calls (isolated network only).
    pub observed: Option<std::sync::Arc<crate::sandbox::net::Observed>>,
    /// Ends the run when the kernel kills one of its processes for want of memory.
    oom_watch: Option<tokio::task::JoinHandle<()>>,
}

impl CliProcess {
    pub(super) async fn spawn(
        cmd: CommandLine,
        dir: RunDir,
        deadline: Instant,
        max_line_bytes: usize,
    ) -> Result<Self, RunError> {
        let (mut command, _fds) = cmd.command().map_err(RunError::Spawn)?;
        if let Some(cgroup) = &dir.cgroup {
            cgroup.attach(&mut command);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut attempt = 0;
        let mut child = loop {
            match command.spawn() {
                Ok(child) => break child,
                // fork's EAGAIN: the host is briefly out of processes (a tenant's fork bomb
                // running into its sandbox's limit, say). It means "try again", so a few short
                // retries keep another tenant's request from failing for it.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && attempt < 4 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => return Err(RunError::Spawn(e)),
            }
        };
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RunError::Spawn(std::io::Error::other(
                "child pipes missing",
            )));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(drain_stderr(stderr, stderr_tail.clone()));
        let oom_watch = dir.cgroup.as_ref().map(|cgroup| cgroup.watch_oom());
        Ok(Self {
            child,
            pgid,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            stderr_tail,
            deadline,
            max_line_bytes,
            line: Vec::new(),
            _dir: dir,
            held: Vec::new(),
            placeholder: None,
            cli_session: None,
            observed: None,
            oom_watch,
        })
    }

    /// Keeps `value` until the process is gone.
    pub fn hold(&mut self, value: Box<dyn Send>) {
        self.held.push(value);
    }

    /// Keeps the run's credential placeholder until the process is gone.
    pub fn hold_placeholder(&mut self, lease: crate::sandbox::masking::Lease) {
        self.placeholder = Some(lease);
    }

    /// Makes the process's placeholder stand for `credential` and `call` from now on.
    pub fn rebind(
        &self,
        credential: &crate::tenant::credential::Credential,
        call: crate::sandbox::masking::CallSettings,
    ) {
        if let Some(lease) = &self.placeholder {
            lease.rebind(credential, call);
        }
    }

    /// Sends one user turn.
    pub async fn send(&mut self, input: &UserInput) -> Result<(), RunError> {
        self.send_line(&input.to_line()).await
    }

    /// Writes one newline-terminated protocol line to the CLI's input.
    pub async fn send_line(&mut self, line: &[u8]) -> Result<(), RunError> {
        let stdin = self.stdin.as_mut().ok_or(RunError::InputClosed)?;
        tokio::time::timeout_at(self.deadline, async {
            stdin.write_all(line).await?;
            stdin.flush().await
        })
        .await
        .map_err(|_| RunError::Timeout)?
        .map_err(|e| RunError::Io(e.to_string()))
    }

    /// Asks the CLI to start up now (the SDK's `initialize` control request) and waits, at most
    /// `limit`, for its answer: a process made ready ahead of its request (warm) then answers
    /// it without the CLI's start-up.
    pub async fn initialize(&mut self, limit: std::time::Duration) -> Result<(), RunError> {
        self.send_line(&super::protocol::initialize_line(None))
            .await?;
        let answered = async {
            loop {
                match self.next_line().await? {
                    Some(CliLine::Other(line))
                        if line["type"] == "control_response"
                            && line.pointer("/response/request_id")
                                == Some(&serde_json::Value::from(
                                    super::protocol::INITIALIZE_ID,
                                )) =>
                    {
                        return Ok(());
                    }
                    Some(_) => {}
                    None => return Err(RunError::Exited(self.exit_description().await)),
                }
            }
        };
        tokio::time::timeout(limit, answered)
            .await
            .map_err(|_| RunError::Timeout)?
    }

    /// Whether the process is still running (a kept process may have died while idle).
    pub fn is_alive(&mut self) -> bool {
        self.stdin.is_some() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Gives the next turn of a kept process its own time limit.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Closes stdin: the CLI finishes the turn in progress and exits.
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// The next output line; `None` once the CLI closed its stdout.
    pub async fn next_line(&mut self) -> Result<Option<CliLine>, RunError> {
        loop {
            self.line.clear();
            let read = tokio::time::timeout_at(
                self.deadline,
                read_line_capped(&mut self.stdout, &mut self.line, self.max_line_bytes),
            )
            .await
            .map_err(|_| RunError::Timeout)??;
            if read == 0 {
                return match self.out_of_memory() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            }
            let trimmed = self.line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            match CliLine::parse(trimmed) {
                Ok(line) => {
                    if let CliLine::Other(v) = &line {
                        tracing::debug!(line_type = %v.get("type").and_then(|t| t.as_str()).unwrap_or("?"), "unhandled CLI line");
                    }
                    return Ok(Some(line));
                }
                Err(e) => {
                    tracing::debug!(error = %e, bytes = trimmed.len(), "CLI printed a non-JSON line");
                }
            }
        }
    }

    /// The run's error when the kernel killed one of its processes for want of memory.
    pub fn out_of_memory(&self) -> Option<RunError> {
        self._dir
            .cgroup
            .as_ref()
            .filter(|c| c.oom_kills() > 0)
            .map(|c| RunError::OutOfMemory(c.memory_bytes()))
    }

    /// Lets the CLI end on its own after its result, for at most `grace`: it writes the
    /// session transcript after printing the result, so killing it at once would lose the turn.
    pub async fn finish(&mut self, grace: std::time::Duration) -> bool {
        self.stdin = None;
        let drained = async {
            while let Ok(Some(_)) = self.next_line().await {}
            self.child.wait().await.is_ok()
        };
        tokio::time::timeout(grace, drained).await.unwrap_or(false)
    }

    /// Kills the process group and waits, at most `wait`, for the CLI (or its sandbox, whose
    /// processes the kernel ends with it) to be gone.
    pub async fn put_down(&mut self, wait: std::time::Duration) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
        if tokio::time::timeout(wait, self.child.wait()).await.is_err() {
            tracing::warn!("a killed CLI run did not exit in time");
        }
    }

    /// Waits for the process to exit after its output ended and describes how it ended.
    pub async fn exit_description(&mut self) -> String {
        let status =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.child.wait()).await;
        let code = match status {
            Ok(Ok(s)) => s
                .code()
                .map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "killed by a signal".into()),
            _ => "did not exit".into(),
        };
        let tail = self.stderr_tail();
        if tail.is_empty() {
            code
        } else {
            format!("{code}; stderr: {tail}")
        }
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        crate::telemetry::redact(String::from_utf8_lossy(&tail).trim())
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        // The tool processes the CLI started share its group; they must not outlive the request.
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        // kill_on_drop reaps the direct child through tokio's orphan queue.
        let _ = self.child.start_kill();
        if let Some(watch) = &self.oom_watch {
            watch.abort();
        }
    }
}

async fn drain_stderr(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_capped(&mut reader, &mut line, 64 * 1024).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                tracing::debug!(stderr = %crate::telemetry::redact(text.trim_end()), "CLI stderr");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&line);
                let excess = tail.len().saturating_sub(STDERR_TAIL);
                tail.drain(..excess);
            }
        }
    }
}

/// Reads through the next newline into `buf`; fails if the line grows past `max` bytes.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, RunError> {
    let mut total = 0;
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|e| RunError::Io(e.to_string()))?;
        if available.is_empty() {
            return Ok(total);
        }
        let (used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + used > max {
            return Err(RunError::LineTooLong(max));
        }
        buf.extend_from_slice(&available[..used]);
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_lines_longer_than_the_buffer_and_enforces_the_cap() {
        let data = format!("{}\nshort\n", "a".repeat(300_000));
        let mut reader = BufReader::with_capacity(1024, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 1 << 20)
                .await
                .expect("line"),
            300_001
        );
        buf.clear();
        assert_eq!(
            read_line_capped(&mut reader, &mut buf, 1 << 20)
                .await
                .expect("line"),
            6
        );
        let mut small = BufReader::new(data.as_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_capped(&mut small, &mut buf, 1000).await,
            Err(RunError::LineTooLong(1000))
        ));
    }
}
