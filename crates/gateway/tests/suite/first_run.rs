//! A new user's first minutes: the README's "Try it" commands, run as written, from a fresh
//! copy of the repository; `claude-gateway check`; and start-up refusing paths it cannot use.
//! Everything listens on and talks to 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::common::repo_root;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the README's "Try it" section tells a user to run.
struct TryIt {
    serve: String,
    curl: String,
    python: String,
}

/// The fenced blocks of `lang` in `text`, in order.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    text.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect()
}

fn try_it() -> TryIt {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Try it\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a \"Try it\" section");
    let sh = blocks(section, "sh");
    let sh = sh.first().expect("a sh block");
    let serve = sh
        .lines()
        .find(|l| l.starts_with("scripts/serve.sh"))
        .expect("the serve command")
        .to_owned();
    // The curl command with its continuation lines.
    let mut curl = String::new();
    for line in sh.lines().skip_while(|l| !l.starts_with("curl ")) {
        curl.push_str(line);
        curl.push('\n');
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(!curl.is_empty(), "a curl command in {sh}");
    let python = blocks(section, "python")
        .first()
        .expect("a python block")
        .to_string();
    TryIt {
        serve,
        curl,
        python,
    }
}

/// The README's commands use port 8080; a test takes a free one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh copy of the repository: its tracked files (as they are in the work tree), the
/// installed CLI by symlink (as `npm ci` would leave it), and the binary under test as the
/// release binary, newer than every source so `scripts/serve.sh` does not rebuild.
fn fresh_copy() -> tempfile::TempDir {
    let root = repo_root();
    let copy = tempfile::tempdir().expect("tempdir");
    let listed = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output()
        .expect("git ls-files");
    assert!(listed.status.success());
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = Path::new(std::str::from_utf8(name).expect("utf-8 path"));
        let from = root.join(name);
        if !from.exists() {
            continue; // deleted in the work tree, not yet committed
        }
        let to = copy.path().join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to).expect("copy");
    }
    // The link is only safe while setup.sh sees the install as current: otherwise the copy's
    // `npm ci` would empty the repository's own node_modules through it.
    let marker =
        std::fs::read_to_string(root.join("node_modules/.installed-from")).unwrap_or_default();
    let lock = std::process::Command::new("sha256sum")
        .arg(root.join("package-lock.json"))
        .output()
        .expect("sha256sum");
    let lock = String::from_utf8_lossy(&lock.stdout);
    assert_eq!(
        marker.trim(),
        lock.split_whitespace().next().unwrap_or_default(),
        "node_modules was not installed by scripts/setup.sh from this lock file: run it first"
    );
    std::os::unix::fs::symlink(root.join("node_modules"), copy.path().join("node_modules"))
        .expect("symlink node_modules");
    let bin = copy.path().join("target/release/claude-gateway");
    std::fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir");
    std::fs::copy(env!("CARGO_BIN_EXE_claude-gateway"), &bin).expect("copy the binary");
    std::fs::File::options()
        .write(true)
        .open(&bin)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(60)))
        .expect("touch the binary");
    copy
}

/// A command with nothing of this environment that would change where requests go or which
/// credential they carry.
fn clean(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for var in [
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CLAUDE_GATEWAY_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// Ends the process group `serve.sh` started (the gateway and its output reader) when the test
/// ends, however it ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

#[tokio::test]
async fn the_readmes_first_command_serves_its_curl_and_python_examples_from_a_fresh_copy() {
    let steps = try_it();
    let port = free_port().to_string();
    let copy = fresh_copy();
    let serve = steps.serve.replace("8080", &port);
    assert!(
        serve.starts_with("scripts/serve.sh --demo"),
        "the first command is still the demo: {serve}"
    );

    let mut gateway = tokio::process::Command::new("bash");
    clean(gateway.arg("-c").arg(&serve).current_dir(copy.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut gateway = gateway.spawn().expect("serve.sh starts");
    let _group = Group(gateway.id().expect("pid"));
    let stderr = gateway.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut out = BufReader::new(gateway.stdout.take().expect("stdout")).lines();
    // Until the first request the script prints: the listening line, then the announcement.
    let printed = tokio::time::timeout(Duration::from_secs(45), async {
        let mut printed = String::new();
        while let Ok(Some(line)) = out.next_line().await {
            printed.push_str(&line);
            printed.push('\n');
            if line.trim_start().starts_with("-d '") {
                return printed;
            }
        }
        panic!("serve.sh ended:\n{printed}");
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "serve.sh did not announce the gateway within 45 s; its stderr:\n{}",
            log.lock().unwrap_or_else(|e| e.into_inner())
        )
    });
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        printed.contains(&format!("claude-gateway listening on {url}")),
        "{printed}"
    );
    assert!(printed.contains("upstream: demo"), "{printed}");
    assert!(
        printed.contains(&format!("curl -s {url}/v1/messages")),
        "{printed}"
    );
    // The gateway holds its data where the README says: ./data of the checkout, made absolute.
    assert!(copy.path().join("data/install.key").exists());

    // The README's curl, with its port; -w adds the status after the body.
    let curl = format!(
        "{} -w '\\n%{{http_code}}'",
        steps.curl.replace("8080", &port).trim()
    );
    let answered = clean(tokio::process::Command::new("bash").arg("-c").arg(&curl))
        .output()
        .await
        .expect("curl runs");
    let answered = String::from_utf8_lossy(&answered.stdout).into_owned();
    let (body, status) = answered.rsplit_once('\n').expect("body and status");
    assert_eq!(status, "200", "{curl}\n{answered}");
    let message: Value = serde_json::from_str(body).expect("a JSON message");
    assert_eq!(message["type"], "message", "{message}");
    assert!(
        message["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.trim().is_empty()),
        "{message}"
    );

    // The request serve.sh printed works as pasted.
    let pasted: String = printed
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("curl "))
        .map(|l| format!("{l}\n"))
        .collect();
    let answered = clean(
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{} -w '\\n%{{http_code}}'", pasted.trim())),
    )
    .output()
    .await
    .expect("curl runs");
    let answered = String::from_utf8_lossy(&answered.stdout).into_owned();
    assert!(answered.ends_with("\n200"), "{pasted}\n{answered}");

    // The README's Python SDK example, with its port and a demo token.
    let python = steps
        .python
        .replace("8080", &port)
        .replace("sk-ant-oat01-…", "sk-ant-oat01-demo");
    let script = copy.path().join("try_it.py");
    std::fs::write(&script, &python).expect("write the example");
    let ran = clean(&mut tokio::process::Command::new(
        repo_root().join(".venv/bin/python"),
    ))
    .arg(&script)
    .output()
    .await
    .expect("python runs (scripts/setup.sh --tests makes .venv)");
    let printed = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success() && !printed.trim().is_empty(),
        "{python}\nstdout: {printed}\nstderr: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

/// Runs the gateway binary with `args` in `cwd` to its end; (exit code, stdout, stderr).
async fn run_to_end(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_claude-gateway"));
    clean(cmd.args(args).current_dir(cwd)).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ends within 60 s")
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_in_demo_mode_passes_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let claude = crate::common::claude_bin();
    let (code, out, err) = run_to_end(
        &[
            "check",
            "--demo",
            "--data-dir",
            "data",
            "--claude-bin",
            claude.to_str().expect("utf-8"),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get(6..16))
        .map(str::trim)
        .collect();
    assert_eq!(
        names[..5],
        ["config", "cli", "sandbox", "data dir", "upstream"],
        "{out}"
    );
    for line in &lines[..5] {
        assert!(
            line.starts_with("ok ") || line.starts_with("warn "),
            "{out}"
        );
    }
    assert!(
        lines[1].contains(&crate::common::cli_version()),
        "the CLI's version: {}",
        lines[1]
    );
    assert!(
        lines[2].contains("bwrap"),
        "the sandbox probe: {}",
        lines[2]
    );
    let data = dir.path().join("data");
    assert!(lines[3].contains(data.to_str().expect("utf-8")), "{out}");
    assert!(lines[4].contains("demo"), "{out}");
    assert!(lines[5].starts_with("verdict: ok"), "{out}");
    assert!(!data.exists(), "check creates nothing in the data dir");
}

#[tokio::test]
async fn check_fails_with_exit_1_when_the_upstream_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let claude = crate::common::claude_bin();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (code, out, _) = run_to_end(
        &[
            "check",
            "--claude-bin",
            claude.to_str().expect("utf-8"),
            "--anthropic-base-url",
            &closed,
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("fail  upstream") && l.contains(&closed)),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("verdict: FAIL (upstream failed)"),
        "{out}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_path_it_cannot_use_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file"), "").expect("write");
    let claude = crate::common::claude_bin();
    let claude = claude.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--data-dir", "file/data", "--claude-bin", claude],
            "--data-dir",
        ),
        (&["--claude-bin", "/nonexistent/claude"], "--claude-bin"),
        (
            &["--claude-bin", claude, "--mcp-dir", "no-such-dir"],
            "--mcp-dir",
        ),
    ];
    for (args, flag) in cases {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (code, out, err) = run_to_end(&all, dir.path()).await;
        assert_ne!(code, Some(0), "{args:?} started");
        assert!(!out.contains("listening"), "{args:?}: {out}");
        assert!(
            err.contains(flag),
            "{args:?}: the error names {flag}: {err}"
        );
    }
}

#[tokio::test]
async fn a_relative_data_dir_serves_from_another_working_directory() {
    // The original failure: ./data reached bubblewrap, which runs in the run's own directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_dir: PathBuf = dir.path().join("launch");
    std::fs::create_dir_all(&gw_dir).expect("mkdir");
    let claude = crate::common::claude_bin();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_claude-gateway"));
    clean(
        cmd.args(["serve", "--demo", "--listen", "127.0.0.1:0", "--claude-bin"])
            .arg(&claude)
            .current_dir(&gw_dir),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("claude-gateway listening on ") {
                return url.to_owned();
            }
        }
        panic!("the gateway ended before listening");
    })
    .await
    .expect("listens within 30 s");
    let res = crate::common::client()
        .post(format!("{url}/v1/messages"))
        .bearer_auth("sk-ant-oat01-demo")
        .json(&crate::common::body("relative hello"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    assert!(gw_dir.join("data/install.key").exists());
}
