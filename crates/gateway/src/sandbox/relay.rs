//! The relay inside a network-isolated sandbox (`claude-gateway sandbox-relay`).
//!
//! A sandbox has its own network namespace with nothing but loopback, so nothing inside can
//! reach the host, its other services or the cloud metadata server. What a run needs from
//! outside arrives through unix sockets the gateway serves and binds in ([`super::net`]): this
//! relay listens on loopback ports inside and passes each connection to its socket, then runs
//! the sandboxed command and exits with its status. It runs on one thread, so a process limit
//! that a fork bomb exhausts cannot stop it from serving the run's next connection.

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

/// Serves `forwards`, runs `command` with the variables of `env_file` added, and returns the
/// exit code to leave with.
pub fn run(
    forwards: &[Forward],
    env_file: Option<&std::path::Path>,
    command: &[std::ffi::OsString],
) -> i32 {
    // The relay holds the CLI's output pipe to the gateway: non-dumpable, no tool of the run
    // (the same uid) may open it through /proc/<relay>/fd and write lines into it.
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
    runtime.block_on(async {
        for forward in forwards {
            let listener = match tokio::net::TcpListener::bind(forward.listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sandbox-relay: cannot listen on {}: {e}", forward.listen);
                    return 125;
                }
            };
            tokio::spawn(serve(listener, forward.socket.clone()));
        }
        let Some((program, args)) = command.split_first() else {
            eprintln!("sandbox-relay: no command");
            return 125;
        };
        let mut child = match tokio::process::Command::new(program)
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
        match child.wait().await {
            Ok(status) => status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            }),
            Err(_) => 125,
        }
    })
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
