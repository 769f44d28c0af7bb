//! The syscall filter on every sandboxed run, compiled to BPF with `seccompiler` (Firecracker's)
//! and handed to bubblewrap, which installs it before the run's first instruction.
//!
//! Everything is allowed except what a run has no use for and what widens the kernel surface a
//! tenant can attack: new namespaces (`unshare`, `setns`, `clone` with namespace flags), mounts
//! (old and new API), `bpf`, `perf_event_open`, the key rings, kernel modules and `kexec`,
//! `userfaultfd`, `io_uring`, `personality` changes and terminal injection (`ioctl` `TIOCSTI`,
//! `TIOCLINUX`) and making a process dumpable again (`prctl(PR_SET_DUMPABLE, 1)`): refused with
//! `EPERM`. `clone3` is refused with `ENOSYS`, its flags being out of
//! a filter's reach in memory: the C library then falls back to `clone`, whose flags are checked.
//! `ptrace` stays allowed: a run's pid namespace holds only its own processes, and the CLI itself
//! is not traceable (see [`super::bwrap::execute_only_copy`]).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no syscall filter for this architecture ({0})")]
    Arch(String),
    #[error("the syscall filter does not compile: {0}")]
    Compile(String),
}

const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// Personalities a run may ask for: the default, and the query that changes nothing.
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|e| SeccompError::Compile(e.to_string()))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_owned()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
}

/// The filter's programs, each as bytes (`struct sock_filter` in native order), ready for
/// bubblewrap's `--add-seccomp-fd`.
pub fn programs() -> Result<Vec<Vec<u8>>, SeccompError> {
    let refused: &[i64] = &[
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        refused.iter().map(|nr| (*nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|flag| rule(vec![condition(0, SeccompCmpOp::MaskedEq(*flag), *flag)?]))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(
        libc::SYS_personality,
        vec![rule(vec![
            condition(0, SeccompCmpOp::Ne, 0)?,
            condition(0, SeccompCmpOp::Ne, PERSONALITY_QUERY)?,
        ])?],
    );
    rules.insert(
        libc::SYS_ioctl,
        [libc::TIOCSTI, libc::TIOCLINUX]
            .iter()
            // The ioctl request type differs between C libraries; u64 on glibc.
            .map(|request| {
                #[allow(clippy::unnecessary_cast)]
                rule(vec![SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    *request as u64,
                )
                .map_err(|e| SeccompError::Compile(e.to_string()))?])
            })
            .collect::<Result<_, _>>()?,
    );
    // Nothing in a run may make itself dumpable again: the processes that hold the gateway's
    // pipes (the CLI, the relay) are non-dumpable so that the run's tools, of the same uid,
    // cannot open their descriptors through /proc; one that turned dumpable would lend them.
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![
            condition(0, SeccompCmpOp::Eq, libc::PR_SET_DUMPABLE as u64)?,
            condition(1, SeccompCmpOp::Ne, 0)?,
        ])?],
    );
    let refused = compile(rules, libc::EPERM)?;
    let clone3 = compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
    )?;
    Ok([refused, clone3].iter().map(to_bytes).collect())
}

fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for instruction in program {
        bytes.extend_from_slice(&instruction.code.to_ne_bytes());
        bytes.push(instruction.jt);
        bytes.push(instruction.jf);
        bytes.extend_from_slice(&instruction.k.to_ne_bytes());
    }
    bytes
}

/// The first descriptor number a child gets its programs on (0-2 are its stdio).
pub const FIRST_FD: RawFd = 3;

/// Gives `command`'s child `programs` as descriptors [`FIRST_FD`], `FIRST_FD + 1`, …. The
/// returned descriptors must live until the child is spawned.
pub fn attach(
    command: &mut tokio::process::Command,
    programs: &[std::sync::Arc<[u8]>],
) -> std::io::Result<Vec<OwnedFd>> {
    use std::io::Write;
    let mut fds = Vec::with_capacity(programs.len());
    for program in programs {
        let fd = nix::sys::memfd::memfd_create(
            c"seccomp",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(program)?;
        std::io::Seek::rewind(&mut file)?;
        fds.push(OwnedFd::from(file));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec and calls only fcntl, dup2
    // and close, which are async-signal-safe, on descriptors it owns; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // First out of the way (a memfd may sit on a target number), then into place;
            // F_DUPFD and dup2 both leave the new descriptor open across exec.
            let mut moved = [0 as RawFd; 8];
            for (i, fd) in raw.iter().enumerate().take(moved.len()) {
                let high = libc::fcntl(*fd, libc::F_DUPFD, 64);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved[i] = high;
            }
            for (i, high) in moved.iter().take(raw.len()).enumerate() {
                if libc::dup2(*high, FIRST_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*high);
            }
            Ok(())
        });
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_to_whole_instructions() {
        let programs = programs().expect("compiles");
        assert_eq!(programs.len(), 2);
        for program in programs {
            assert!(!program.is_empty());
            assert_eq!(program.len() % 8, 0);
        }
    }
}
