//! Finding the Claude Code CLI and its version.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CLI to run: `--claude-bin`, else the project's pinned `node_modules/.bin/claude` (looked
/// for beside the working directory and beside the gateway binary's ancestors), else `claude`
/// on PATH.
pub fn find_claude(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots
        .iter()
        .map(|r| r.join("node_modules/.bin/claude"))
        .find(|p| p.is_file())
        .or_else(|| on_path("claude"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `claude --version`; `Err` says why the CLI is not usable.
pub async fn version(bin: &Path) -> Result<String, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(bin)
            .arg("--version")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DISABLE_AUTOUPDATER", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{} --version timed out", bin.display()))?
    .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --version failed with {}",
            bin.display(),
            output.status
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}
