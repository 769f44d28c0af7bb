//! Resource limits of one run, applied to every process in its sandbox.
//!
//! Memory is limited with RLIMIT_DATA, not RLIMIT_AS: the CLI's JavaScript engine reserves tens
//! of GiB of address space it never touches, so an address-space limit would stop the CLI
//! itself, while the data limit bounds what a process can actually allocate.
//!
//! The data limit still counts reserved (not touched) private memory, and the CLI reserves
//! far more than it uses when its input is large: a 10 MB request (two 4 MB images) needs
//! 2-3 GiB of it, a 30 MB one 4-8 GiB, and below that the CLI does not fail, it stalls. So the
//! default is 8 GiB, which lets every body the gateway accepts (32 MiB) through; what a run
//! really holds is bounded by what it touches, in a per-run memory cgroup where the host allows
//! one ([`super::cgroup`]).

use std::ffi::OsString;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Processes (and threads) in the sandbox: stops fork bombs.
    pub max_processes: u64,
    /// Heap and private mappings per process, in bytes.
    pub max_memory_bytes: u64,
    /// Largest file a process may write, in bytes.
    pub max_file_bytes: u64,
    /// CPU seconds per process.
    pub max_cpu_secs: u64,
    pub max_open_files: u64,
    /// Memory of the run as a whole (its processes, `/tmp` and `/dev/shm`), in bytes, where
    /// per-run cgroups are available; 0 turns them off.
    pub run_memory_bytes: u64,
    /// Size of the run's `/tmp` (memory), in bytes.
    pub tmp_bytes: u64,
    /// Size of the run's `/dev/shm` (memory), in bytes.
    pub shm_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_processes: 256,
            max_memory_bytes: 8 * 1024 * 1024 * 1024,
            max_file_bytes: 1024 * 1024 * 1024,
            max_cpu_secs: 600,
            max_open_files: 1024,
            // A cold run peaks near 300 MiB and a 30 MB request touches about 1 GiB; the
            // memory mounts (576 MiB together) fit in it with room for tools.
            run_memory_bytes: 4 * 1024 * 1024 * 1024,
            tmp_bytes: 512 * 1024 * 1024,
            shm_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Options for util-linux `prlimit` (soft and hard limits alike, and no core dumps).
    pub fn prlimit_args(&self) -> Vec<OsString> {
        vec![
            format!("--nproc={}", self.max_processes).into(),
            format!("--data={}", self.max_memory_bytes).into(),
            format!("--fsize={}", self.max_file_bytes).into(),
            format!("--cpu={}", self.max_cpu_secs).into(),
            format!("--nofile={}", self.max_open_files).into(),
            "--core=0".into(),
        ]
    }
}
