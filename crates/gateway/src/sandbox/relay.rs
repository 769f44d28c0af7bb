//! The relay inside a network-isolated sandbox (`claude-gateway sandbox-relay`).
//!
//! A sandbox has its own network namespace with nothing but loopback, so nothing inside can
//! reach the host, its other services or the cloud metadata server. What a run needs from
//! outside arrives through unix sockets the gateway serves and binds in ([`super::net`]): this
//! relay listens on loopback ports inside and passes each connection to its socket, then runs
//! the sandboxed command, reaps what the sandbox leaves behind as its pid 1, and exits with the
//! command's status.

use std::net::SocketAddr;
use std::path::PathBuf;

/// One loopback port inside and the socket it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub socket: PathBuf,
}

impl std::str::FromStr for Forward {
    type Err = String;

    /// `ADDR=SOCKET`, e.g. `127.0.0.1:4000=/run/gateway/net/upstream.sock`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, socket) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ADDR=SOCKET, got {s:?}"))?;
        Ok(Self {
            listen: listen.parse().map_err(|e| format!("{listen}: {e}"))?,
            socket: socket.into(),
        })
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.listen, self.socket.display())
    }
}

/// Reads the variables a command gets from `env_file` (a JSON object of strings).
fn read_env(env_file: Option<&std::path::Path>) -> Result<Vec<(String, String)>, String> {
    let Some(path) = env_file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let vars: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(vars.into_iter().collect())
}

/// Serves `forwards`, runs `command` with the variables of `env_file` added, reaps every
/// process the sandbox leaves behind, and returns the exit code to leave with.
///
/// The relay is the sandbox's pid 1 (bubblewrap `--as-pid-1`): bubblewrap's own init would
/// otherwise hold the gateway's pipes, dumpable, for any tool to write into through
/// `/proc/1/fd/1`. As pid 1 it inherits every orphan, so it reaps them; when it leaves, the
/// kernel ends everything else in the sandbox.
pub fn run(
    forwards: &[Forward],
    env_file: Option<&std::path::Path>,
    command: &[std::ffi::OsString],
) -> i32 {
    // The relay holds the CLI's pipes to the gateway: non-dumpable, no tool of the run (the
    // same uid) may open them through /proc/<relay>/fd and write lines into them.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("sandbox-relay: cannot make the relay non-dumpable: {e}");
        return 125;
    }
    let env = match read_env(env_file) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("sandbox-relay: {e}");
            return 125;
        }
    };
    let mut listeners = Vec::with_capacity(forwards.len());
    for forward in forwards {
        match std::net::TcpListener::bind(forward.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(listener) => listeners.push((listener, forward.socket.clone())),
            Err(e) => {
                eprintln!("sandbox-relay: cannot listen on {}: {e}", forward.listen);
                return 125;
            }
        }
    }
    // The ports are served on one thread started before the command, so a process limit that
    // a fork bomb exhausts cannot stop the relay serving the run's next connection.
    if !listeners.is_empty() {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("sandbox-relay: {e}");
                return 125;
            }
        };
        let started = std::thread::Builder::new()
            .name("relay-ports".into())
            .spawn(move || {
                runtime.block_on(async {
                    let mut served = tokio::task::JoinSet::new();
                    for (listener, socket) in listeners {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                served.spawn(serve(listener, socket));
                            }
                            Err(e) => eprintln!("sandbox-relay: {e}"),
                        }
                    }
                    served.join_all().await;
                });
            });
        if let Err(e) = started {
            eprintln!("sandbox-relay: {e}");
            return 125;
        }
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("sandbox-relay: no command");
        return 125;
    };
    let child = match std::process::Command::new(program)
        .args(args)
        .envs(env)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("sandbox-relay: cannot run {program:?}: {e}");
            return 127;
        }
    };
    let Ok(child) = i32::try_from(child.id()).map(nix::unistd::Pid::from_raw) else {
        return 125;
    };
    reap_until(child)
}

/// Reaps every child (as pid 1, orphans too) until `command` ends; its exit code.
fn reap_until(command: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                return 128 + signal as i32
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 125,
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, socket: PathBuf) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::UnixStream::connect(&socket).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_read_as_address_then_socket() {
        let f: Forward = "127.0.0.1:4000=/run/gateway/net/upstream.sock"
            .parse()
            .expect("valid");
        assert_eq!(f.listen.port(), 4000);
        assert_eq!(f.socket, PathBuf::from("/run/gateway/net/upstream.sock"));
        assert_eq!(
            f.to_string(),
            "127.0.0.1:4000=/run/gateway/net/upstream.sock"
        );
        assert!("127.0.0.1:4000".parse::<Forward>().is_err());
        assert!("nowhere=/x".parse::<Forward>().is_err());
    }
}
