//! The runtime layer for data-parallel training: who this process is, which device it trains
//! on, and how it sums gradients with the other processes.
//!
//! In: the launcher's environment variables (torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`; else Slurm's `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`,
//! `SLURM_JOB_NODELIST`; else a single process), `train.devices` and the number of visible GPUs.
//!
//! Out:
//! - a [`World`]: rank, local rank, world size and the [`Rendezvous`] point;
//! - a [`DeviceChoice`] (CPU, or the GPU of this local rank) that opens a candle [`Device`];
//! - a [`Collective`] that sums or broadcasts one f32 tensor across ranks: [`SingleProcess`]
//!   (no-op), [`ThreadGroupMember`] (ranks as threads, for tests), [`TcpGroup`] (CPU processes,
//!   a star through rank 0) and `Nccl` (GPUs, feature `nccl`).
//!
//! The rendezvous hands one byte payload (NCCL's 128-byte unique id) from rank 0 to the others,
//! as PyTorch's TCPStore does: rank 0 listens, the others connect with retries. A shared file
//! ([`RENDEZVOUS_FILE_VAR`]) is the fallback where ranks cannot reach each other by TCP. Every
//! wait has a timeout whose error names the address, so a failed rank 0 cannot hang the rest.
//!
//! The CPU collectives sum in rank order 0, 1, …, N−1, so every rank gets the same bits
//! whatever order the ranks arrive in (NCCL's ring also hands every rank the same bits).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};

use crate::recipe::params::Devices;

/// The rendezvous port under Slurm when `MASTER_PORT` is not set (PyTorch's usual port).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long a rank waits for the others at the rendezvous by default.
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);
/// When set, the rendezvous goes through this file on a shared file system instead of TCP.
/// Use a fresh path per job: the other ranks take whatever file they find there.
pub const RENDEZVOUS_FILE_VAR: &str = "WEBSIEVE_RENDEZVOUS_FILE";

/// Tells the other ranks' connections apart from strays on the rendezvous port.
const HELLO_MAGIC: [u8; 4] = *b"WSRV";
/// A rendezvous payload is small (NCCL's id is 128 bytes); anything larger is garbage.
const MAX_PAYLOAD_BYTES: u64 = 1 << 20;
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the threads of train.cpu_ranks: {0}")]
    Threads(String),
    #[error("{var}={value:?}: {problem}")]
    BadVar {
        var: &'static str,
        value: String,
        problem: String,
    },
    #[error("{var} is not set, but {set} is ({launcher} sets both)")]
    MissingVar {
        var: &'static str,
        set: &'static str,
        launcher: Launcher,
    },
    #[error("{var}={value} is not below {size_var}={world_size}")]
    OutOfRange {
        var: &'static str,
        value: usize,
        size_var: &'static str,
        world_size: usize,
    },
    #[error(
        "train.devices = \"{devices}\" asks for CUDA, but no GPU is visible ({why}); \
         train.devices = \"cpu\" (or --set train.devices=cpu) runs on the CPU"
    )]
    NoGpu { devices: String, why: &'static str },
    #[error(
        "train.devices = \"{devices}\": local rank {local_rank} has no GPU of its own, this node \
         has {gpus}; start at most {gpus} process(es) per node"
    )]
    NotEnoughGpus {
        devices: String,
        local_rank: usize,
        gpus: usize,
    },
    #[error(
        "train.devices = \"{devices}\": GPU {ordinal} is not visible, only GPUs 0 to {} are; \
         check CUDA_VISIBLE_DEVICES",
        .visible.saturating_sub(1)
    )]
    GpuNotVisible {
        devices: String,
        ordinal: usize,
        visible: usize,
    },
    #[error("rendezvous at {at}: {detail} (gave up after {:.1} s)", .waited.as_secs_f64())]
    RendezvousTimeout {
        at: String,
        waited: Duration,
        detail: String,
    },
    #[error("rendezvous at {at}: {detail}")]
    Rendezvous { at: String, detail: String },
    #[error("collective on rank {rank}: {detail}")]
    Collective { rank: usize, detail: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

// ---------------------------------------------------------------------------------------------
// The world: rank, local rank, world size, rendezvous point.

/// Who started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Nothing: a single process.
    Single,
    /// torchrun, or anything else that sets PyTorch's `env://` variables.
    Torchrun,
    /// Slurm's srun.
    Slurm,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Single => "a single process",
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "srun",
        })
    }
}

/// Where rank 0 hands out the rendezvous payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    /// Rank 0 listens on `port` on all interfaces; the others connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// Rank 0 writes the payload to this file; the others poll for it.
    File(PathBuf),
}

impl fmt::Display for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rendezvous::Tcp { host, port } => f.write_str(&host_port(host, *port)),
            Rendezvous::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// This process's place among the training processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// 0..world_size; rank 0 writes checkpoints and logs.
    pub rank: usize,
    /// The rank among the processes on this node: picks the GPU.
    pub local_rank: usize,
    pub world_size: usize,
    pub launcher: Launcher,
    /// `None` for a single process.
    pub rendezvous: Option<Rendezvous>,
}

/// The names one launcher gives rank, local rank and world size.
struct LaunchVars {
    launcher: Launcher,
    rank: &'static str,
    local_rank: &'static str,
    world_size: &'static str,
}

const TORCHRUN_VARS: LaunchVars = LaunchVars {
    launcher: Launcher::Torchrun,
    rank: "RANK",
    local_rank: "LOCAL_RANK",
    world_size: "WORLD_SIZE",
};

const SLURM_VARS: LaunchVars = LaunchVars {
    launcher: Launcher::Slurm,
    rank: "SLURM_PROCID",
    local_rank: "SLURM_LOCALID",
    world_size: "SLURM_NTASKS",
};

/// Environment lookups that turn bad values into errors naming the variable.
struct Env<'a> {
    var: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.var)(name)
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
        expected: &str,
    ) -> Result<Option<T>, RuntimeError> {
        self.get(name)
            .map(|value| {
                value.trim().parse().map_err(|_| RuntimeError::BadVar {
                    var: name,
                    value,
                    problem: format!("expected {expected}"),
                })
            })
            .transpose()
    }

    fn required<T: std::str::FromStr>(
        &self,
        name: &'static str,
        expected: &str,
        set: &'static str,
        launcher: Launcher,
    ) -> Result<T, RuntimeError> {
        self.parsed(name, expected)?
            .ok_or(RuntimeError::MissingVar {
                var: name,
                set,
                launcher,
            })
    }

    fn port(&self, name: &'static str) -> Result<Option<u16>, RuntimeError> {
        match self.parsed::<u16>(name, "a port number from 1 to 65535")? {
            Some(0) => Err(RuntimeError::BadVar {
                var: name,
                value: "0".into(),
                problem: "expected a port number from 1 to 65535".into(),
            }),
            port => Ok(port),
        }
    }
}

impl World {
    /// One process, no rendezvous.
    pub fn single() -> Self {
        World {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            launcher: Launcher::Single,
            rendezvous: None,
        }
    }

    /// Reads the process environment; see [`World::from_env_with`].
    pub fn from_env() -> Result<Self, RuntimeError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Reads the launcher's variables through `var`: torchrun's if `RANK` or `WORLD_SIZE` is
    /// set, else Slurm's if `SLURM_PROCID` is, else a single process.
    ///
    /// Rendezvous (only when world size > 1): the file in [`RENDEZVOUS_FILE_VAR`] if set;
    /// else TCP to `MASTER_ADDR:MASTER_PORT`, where under torchrun (`TORCHELASTIC_RUN_ID` is
    /// set) the port is `MASTER_PORT + 1` because torchrun's agent holds `MASTER_PORT` for its
    /// own store; under Slurm the host defaults to the first host of `SLURM_JOB_NODELIST` and
    /// the port to [`DEFAULT_MASTER_PORT`].
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<Self, RuntimeError> {
        let env = Env { var: &var };
        let (vars, set) = if env.get("RANK").is_some() {
            (TORCHRUN_VARS, "RANK")
        } else if env.get("WORLD_SIZE").is_some() {
            (TORCHRUN_VARS, "WORLD_SIZE")
        } else if env.get("SLURM_PROCID").is_some() {
            (SLURM_VARS, "SLURM_PROCID")
        } else {
            return Ok(World::single());
        };
        let launcher = vars.launcher;
        let count = "a non-negative integer";
        let rank: usize = env.required(vars.rank, count, set, launcher)?;
        let local_rank: usize = env.required(vars.local_rank, count, set, launcher)?;
        let world_size: usize =
            env.required(vars.world_size, "a positive integer", set, launcher)?;
        if world_size == 0 {
            return Err(RuntimeError::BadVar {
                var: vars.world_size,
                value: "0".into(),
                problem: "expected a positive integer".into(),
            });
        }
        for (var, value) in [(vars.rank, rank), (vars.local_rank, local_rank)] {
            if value >= world_size {
                return Err(RuntimeError::OutOfRange {
                    var,
                    value,
                    size_var: vars.world_size,
                    world_size,
                });
            }
        }
        let rendezvous = if world_size == 1 {
            None
        } else if let Some(path) = env.get(RENDEZVOUS_FILE_VAR) {
            Some(Rendezvous::File(path.into()))
        } else {
            Some(tcp_rendezvous(&env, launcher, set)?)
        };
        Ok(World {
            rank,
            local_rank,
            world_size,
            launcher,
            rendezvous,
        })
    }

    /// More than one process takes part.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    fn rendezvous_point(&self) -> Result<&Rendezvous, RuntimeError> {
        self.rendezvous
            .as_ref()
            .ok_or_else(|| RuntimeError::Collective {
                rank: self.rank,
                detail: format!("world size {} but no rendezvous point", self.world_size),
            })
    }
}

fn tcp_rendezvous(
    env: &Env<'_>,
    launcher: Launcher,
    set: &'static str,
) -> Result<Rendezvous, RuntimeError> {
    let host = match env.get("MASTER_ADDR") {
        Some(host) => host,
        None if launcher == Launcher::Slurm => {
            let nodes = env
                .get("SLURM_JOB_NODELIST")
                .ok_or(RuntimeError::MissingVar {
                    var: "SLURM_JOB_NODELIST",
                    set,
                    launcher,
                })?;
            first_slurm_host(&nodes).map_err(|problem| RuntimeError::BadVar {
                var: "SLURM_JOB_NODELIST",
                value: nodes.clone(),
                problem,
            })?
        }
        None => {
            return Err(RuntimeError::MissingVar {
                var: "MASTER_ADDR",
                set,
                launcher,
            })
        }
    };
    let port = match (env.port("MASTER_PORT")?, launcher) {
        (Some(port), Launcher::Torchrun) if env.get("TORCHELASTIC_RUN_ID").is_some() => {
            port.checked_add(1).ok_or_else(|| RuntimeError::BadVar {
                var: "MASTER_PORT",
                value: port.to_string(),
                problem: "under torchrun the rendezvous uses MASTER_PORT + 1, which must be \
                          below 65536"
                    .into(),
            })?
        }
        (Some(port), _) => port,
        (None, Launcher::Slurm) => DEFAULT_MASTER_PORT,
        (None, _) => {
            return Err(RuntimeError::MissingVar {
                var: "MASTER_PORT",
                set,
                launcher,
            })
        }
    };
    Ok(Rendezvous::Tcp { host, port })
}

/// Guards against a typo such as `n[0-99999999]` eating all memory.
const MAX_SLURM_HOSTS: usize = 1 << 20;

/// Expands Slurm's compressed host list: `node[01-03,07],gpu-a12` → node01, node02, node03,
/// node07, gpu-a12. Several brackets in one name multiply out (`r[1-2]n[1-2]` → r1n1, r1n2,
/// r2n1, r2n2); a range keeps its lower bound's zero padding.
pub fn expand_slurm_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for pattern in split_outside_brackets(list)? {
        if pattern.is_empty() {
            return Err("empty host name".into());
        }
        let mut names = vec![String::new()];
        let mut rest = pattern;
        while !rest.is_empty() {
            let (literal, group, after) = match rest.find('[') {
                None => (rest, None, ""),
                Some(open) => {
                    let close = open + rest[open..].find(']').ok_or("unclosed '['")?;
                    (
                        &rest[..open],
                        Some(&rest[open + 1..close]),
                        &rest[close + 1..],
                    )
                }
            };
            names.iter_mut().for_each(|name| name.push_str(literal));
            if let Some(group) = group {
                let suffixes = expand_bracket(group)?;
                if names.len().saturating_mul(suffixes.len()) + hosts.len() > MAX_SLURM_HOSTS {
                    return Err(format!("expands to more than {MAX_SLURM_HOSTS} hosts"));
                }
                names = names
                    .iter()
                    .flat_map(|name| suffixes.iter().map(move |s| format!("{name}{s}")))
                    .collect();
            }
            rest = after;
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// The first host of a Slurm host list: where rank 0 runs under srun's block distribution.
pub fn first_slurm_host(list: &str) -> Result<String, String> {
    expand_slurm_hostlist(list)?
        .into_iter()
        .next()
        .ok_or_else(|| "no hosts".into())
}

fn split_outside_brackets(list: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut start, mut inside) = (Vec::new(), 0, false);
    for (i, c) in list.char_indices() {
        match c {
            '[' if inside => return Err("nested '['".into()),
            '[' => inside = true,
            ']' if !inside => return Err("']' without '['".into()),
            ']' => inside = false,
            ',' if !inside => {
                parts.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if inside {
        return Err("unclosed '['".into());
    }
    parts.push(list[start..].trim());
    Ok(parts)
}

/// `01-03,07` → 01, 02, 03, 07.
fn expand_bracket(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in group.split(',') {
        let (low, high) = item.split_once('-').unwrap_or((item, item));
        let number = |text: &str| {
            text.parse::<u64>()
                .ok()
                .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{item:?} in [{group}] is not a number or range"))
        };
        let (from, to) = (number(low)?, number(high)?);
        if from > to {
            return Err(format!("range {item:?} in [{group}] runs backwards"));
        }
        if (to - from) as usize >= MAX_SLURM_HOSTS {
            return Err(format!("expands to more than {MAX_SLURM_HOSTS} hosts"));
        }
        out.extend((from..=to).map(|n| format!("{n:0width$}", width = low.len())));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Devices.

/// The device one rank trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda { ordinal: usize },
}

/// Picks this rank's device: `cpu` → the CPU; `cuda` → GPU `local_rank`; `cuda:0,1` → the
/// `local_rank`-th listed GPU. `visible_gpus` comes from [`visible_gpu_count`].
pub fn resolve_device(
    devices: &Devices,
    world: &World,
    visible_gpus: usize,
) -> Result<DeviceChoice, RuntimeError> {
    let listed = match devices {
        Devices::Cpu => return Ok(DeviceChoice::Cpu),
        Devices::CudaAll => None,
        Devices::Cuda(ids) => Some(ids.as_slice()),
    };
    if visible_gpus == 0 {
        return Err(RuntimeError::NoGpu {
            devices: devices.to_string(),
            why: if cfg!(feature = "cuda") {
                "the CUDA driver reports none; check CUDA_VISIBLE_DEVICES and nvidia-smi"
            } else {
                "this binary was built without the `cuda` feature"
            },
        });
    }
    let gpus = listed.map_or(visible_gpus, <[usize]>::len);
    if world.local_rank >= gpus {
        return Err(RuntimeError::NotEnoughGpus {
            devices: devices.to_string(),
            local_rank: world.local_rank,
            gpus,
        });
    }
    let ordinal = listed.map_or(world.local_rank, |ids| ids[world.local_rank]);
    if ordinal >= visible_gpus {
        return Err(RuntimeError::GpuNotVisible {
            devices: devices.to_string(),
            ordinal,
            visible: visible_gpus,
        });
    }
    Ok(DeviceChoice::Cuda { ordinal })
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device, RuntimeError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda { ordinal } => open_cuda(ordinal),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, RuntimeError> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device, RuntimeError> {
    Err(RuntimeError::NoGpu {
        devices: format!("cuda:{ordinal}"),
        why: "this binary was built without the `cuda` feature",
    })
}

/// The GPUs the CUDA driver shows this process (after `CUDA_VISIBLE_DEVICES`); 0 in a CPU build
/// or when the driver reports an error.
pub fn visible_gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        match CudaContext::device_count() {
            Ok(count) => usize::try_from(count).unwrap_or(0),
            Err(error) => {
                tracing::debug!(?error, "the CUDA driver reports no usable GPU");
                0
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    0
}

// ---------------------------------------------------------------------------------------------
// Collectives.

/// Rows `[r·n/W, (r+1)·n/W)` of `n` rows (a batch, a list of samples to evaluate) for rank
/// `r` of `W`, rounded so that the first `n mod W` ranks take one row more: `(start, len)`.
/// The shards are disjoint and cover the rows: nothing is padded, some may be empty.
pub fn shard_rows(n: usize, rank: usize, world_size: usize) -> (usize, usize) {
    let (base, extra) = (n / world_size, n % world_size);
    (
        rank * base + rank.min(extra),
        base + usize::from(rank < extra),
    )
}

/// What one collective call does with the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectiveOp {
    Sum,
    Broadcast { root: usize },
}

impl fmt::Display for CollectiveOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectiveOp::Sum => f.write_str("all_reduce_sum"),
            CollectiveOp::Broadcast { root } => write!(f, "broadcast from rank {root}"),
        }
    }
}

/// Communication among the training processes. Every rank must make the same calls in the
/// same order with tensors of the same shape. Tensors are f32 (the trainer sends one flat
/// bucket of all gradients, and the loss); results have the input's shape and device.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum over all ranks, the same bits on every rank.
    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<Tensor, RuntimeError>;
    /// `root`'s tensor, on every rank.
    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<Tensor, RuntimeError>;
    /// The element-wise sum over all ranks of each of `parts` (f32, any shapes, the same on
    /// every rank) in one call: the trainer's gradients and loss terms. By default one
    /// [`Collective::all_reduce_sum`] of their concatenation.
    fn all_reduce_sum_parts(&mut self, parts: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        sum_as_one_bucket(self, parts)
    }
}

/// [`Collective::all_reduce_sum_parts`] as one flat bucket, split back into `parts`' shapes.
fn sum_as_one_bucket<C: Collective + ?Sized>(
    collective: &mut C,
    parts: &[Tensor],
) -> Result<Vec<Tensor>, RuntimeError> {
    let flat = parts
        .iter()
        .map(Tensor::flatten_all)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let summed = collective.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
    let mut offset = 0;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let len = part.elem_count();
        out.push(summed.narrow(0, offset, len)?.reshape(part.shape())?);
        offset += len;
    }
    Ok(out)
}

/// Checks what every implementation needs: an f32 tensor, a root that is a rank.
fn check_call(
    tensor: &Tensor,
    op: CollectiveOp,
    rank: usize,
    world_size: usize,
) -> Result<(), RuntimeError> {
    let problem = match op {
        _ if tensor.dtype() != DType::F32 => {
            format!("collectives carry f32 tensors, got {:?}", tensor.dtype())
        }
        CollectiveOp::Broadcast { root } if root >= world_size => {
            format!("broadcast root {root} is not a rank (world size {world_size})")
        }
        _ => return Ok(()),
    };
    Err(RuntimeError::Collective {
        rank,
        detail: problem,
    })
}

/// The only process: every collective returns its input.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<Tensor, RuntimeError> {
        check_call(tensor, CollectiveOp::Sum, 0, 1)?;
        Ok(tensor.clone())
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<Tensor, RuntimeError> {
        check_call(tensor, CollectiveOp::Broadcast { root }, 0, 1)?;
        Ok(tensor.clone())
    }

    fn all_reduce_sum_parts(&mut self, parts: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        parts.iter().map(|part| self.all_reduce_sum(part)).collect()
    }
}

/// A collective on host memory: every rank hands in a buffer and gets back the combination
/// ([`ThreadGroupMember`], [`TcpGroup`]). Implementing it implements [`Collective`].
pub trait HostExchange {
    /// (rank, world size).
    fn rank_and_size(&self) -> (usize, usize);
    fn exchange(&mut self, op: CollectiveOp, data: Vec<f32>) -> Result<Vec<f32>, RuntimeError>;
    /// [`Collective::all_reduce_sum_parts`]; by default one exchange of their concatenation.
    fn exchange_parts(&mut self, parts: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>
    where
        Self: Sized,
    {
        sum_as_one_bucket(self, parts)
    }
}

impl<G: HostExchange> Collective for G {
    fn rank(&self) -> usize {
        self.rank_and_size().0
    }

    fn world_size(&self) -> usize {
        self.rank_and_size().1
    }

    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<Tensor, RuntimeError> {
        exchange_tensor(self, tensor, CollectiveOp::Sum)
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<Tensor, RuntimeError> {
        exchange_tensor(self, tensor, CollectiveOp::Broadcast { root })
    }

    fn all_reduce_sum_parts(&mut self, parts: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.exchange_parts(parts)
    }
}

/// Appends a CPU f32 tensor's elements to `out` in row-major order, without a temporary.
fn append_f32(tensor: &Tensor, out: &mut Vec<f32>) -> Result<(), RuntimeError> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
            out.extend_from_slice(&data[start..end]);
        }
        _ => {
            drop(storage);
            out.extend(tensor.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(())
}

fn exchange_tensor(
    group: &mut impl HostExchange,
    tensor: &Tensor,
    op: CollectiveOp,
) -> Result<Tensor, RuntimeError> {
    let (rank, world_size) = group.rank_and_size();
    check_call(tensor, op, rank, world_size)?;
    let data = tensor.flatten_all()?.to_vec1::<f32>()?;
    let combined = group.exchange(op, data)?;
    Ok(Tensor::from_vec(combined, tensor.shape(), tensor.device())?)
}

/// The message for ranks that handed in different numbers of values to one call.
fn lengths_differ(op: CollectiveOp, first: usize, rank: usize, len: usize) -> String {
    format!("{op}: rank 0 sent {first} values, rank {rank} sent {len}")
}

/// Combines one contribution per rank (index = rank); the ranks must agree on op and length.
/// Consumes them: a sum accumulates into rank 0's buffer, a broadcast hands on the root's.
fn combine(mut contributions: Vec<(CollectiveOp, Vec<f32>)>) -> Result<Vec<f32>, String> {
    let (op, first) = contributions.first().ok_or("no ranks")?;
    for (rank, (other_op, data)) in contributions.iter().enumerate().skip(1) {
        if other_op != op {
            return Err(format!("rank 0 called {op}, rank {rank} called {other_op}"));
        }
        if data.len() != first.len() {
            return Err(lengths_differ(*op, first.len(), rank, data.len()));
        }
    }
    match *op {
        CollectiveOp::Sum => {
            let mut ranks = contributions.into_iter().map(|(_, data)| data);
            let mut sum = ranks.next().unwrap_or_default();
            // Rank order, always: float addition is not associative.
            for data in ranks {
                sum.iter_mut().zip(&data).for_each(|(s, x)| *s += x);
            }
            Ok(sum)
        }
        CollectiveOp::Broadcast { root } if root < contributions.len() => {
            Ok(contributions.swap_remove(root).1)
        }
        CollectiveOp::Broadcast { root } => Err(format!("broadcast root {root} is not a rank")),
    }
}

/// Runs `rank` as `ranks` ranks of threads in this process (`train.cpu_ranks`), each on a
/// rayon pool of its own one thread, their collectives through a [`ThreadGroupMember`]; one
/// rank runs in this thread as a [`SingleProcess`]. Rank 0's result, or the first error in
/// rank order.
pub fn on_thread_ranks<T: Send, E: Send + From<RuntimeError>>(
    ranks: usize,
    rank: &(dyn Fn(&mut dyn Collective) -> Result<T, E> + Sync),
) -> Result<T, E> {
    if ranks <= 1 {
        return rank(&mut SingleProcess);
    }
    keep_freed_memory();
    let results: Vec<Result<T, E>> = std::thread::scope(|scope| {
        let threads: Vec<_> = ThreadGroupMember::group(ranks)
            .into_iter()
            .map(|mut member| {
                scope.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .map_err(|e| RuntimeError::Threads(e.to_string()))?;
                    pool.install(|| rank(&mut member))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut results = results.into_iter();
    let first = results.next().expect("at least one rank")?;
    results.find_map(Result::err).map_or(Ok(first), Err)
}

/// Has glibc's malloc keep freed memory for reuse instead of handing it back to the kernel:
/// buffers up to 32 MiB come from the heap, which grows 64 MiB at a time and is never
/// trimmed. A training step frees and allocates activation-sized buffers by the hundred; each
/// one handed back was faulted in afresh on its next use, and with several thread ranks every
/// unmapping interrupted the other cores to flush their TLBs. Measured (BENCHMARKS.md, issue
/// 17): the full net on 2 thread ranks 9.4 → 10.9 img/s; no gain on one thread, so a single
/// rank keeps malloc's defaults. The process keeps its peak heap until it exits.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's tunables; every value is in its documented range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// One rank of a group of threads in one process (`train.cpu_ranks`, and tests): each round,
/// the last rank to arrive combines every rank's contribution in rank order and wakes the
/// others. [`Collective::all_reduce_sum_parts`] instead shares the sum: each rank copies its
/// parts into a buffer of its own kept from call to call, then sums its share of the
/// elements over every rank's buffer, and reads the others' shares back (the same rank-order
/// sums, without fresh pages or a rank left waiting while another adds).
pub struct ThreadGroupMember {
    rank: usize,
    world_size: usize,
    rounds: Arc<ThreadRounds>,
    timeout: Duration,
}

struct ThreadRounds {
    state: Mutex<RoundState>,
    round_done: Condvar,
    /// Per rank, its parts laid end to end ([`ThreadGroupMember::exchange_parts`]).
    contributions: Vec<RwLock<Vec<f32>>>,
    /// Per rank, the sum over all ranks of its share ([`shard_rows`]) of those elements.
    shares: Vec<RwLock<Vec<f32>>>,
}

struct RoundState {
    /// This round's contributions so far, by rank.
    pending: Vec<Option<(CollectiveOp, Vec<f32>)>>,
    completed_rounds: u64,
    /// The last completed round's result; a rank reads it before it can join the next round,
    /// so no round overwrites a result that a rank has yet to read.
    result: Arc<Result<Vec<f32>, String>>,
    /// Ranks yet to read `result`: the last one takes it rather than copying it.
    unread: usize,
}

impl ThreadGroupMember {
    /// `world_size` members, index = rank; move each into its own thread. A member waits at
    /// most [`DEFAULT_RENDEZVOUS_TIMEOUT`] for the others (see [`Self::with_timeout`]).
    pub fn group(world_size: usize) -> Vec<Self> {
        let rounds = Arc::new(ThreadRounds {
            state: Mutex::new(RoundState {
                pending: vec![None; world_size],
                completed_rounds: 0,
                result: Arc::new(Ok(Vec::new())),
                unread: 0,
            }),
            round_done: Condvar::new(),
            contributions: (0..world_size).map(|_| RwLock::default()).collect(),
            shares: (0..world_size).map(|_| RwLock::default()).collect(),
        });
        (0..world_size)
            .map(|rank| ThreadGroupMember {
                rank,
                world_size,
                rounds: Arc::clone(&rounds),
                timeout: DEFAULT_RENDEZVOUS_TIMEOUT,
            })
            .collect()
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn failure(&self, detail: impl Into<String>) -> RuntimeError {
        RuntimeError::Collective {
            rank: self.rank,
            detail: detail.into(),
        }
    }

    /// Waits for every rank to arrive: an exchange of nothing.
    fn barrier(&mut self) -> Result<(), RuntimeError> {
        self.exchange(CollectiveOp::Sum, Vec::new()).map(drop)
    }

    /// Every rank's buffer of `buffers`, read-locked.
    fn read_all<'a>(
        &self,
        buffers: &'a [RwLock<Vec<f32>>],
    ) -> Result<Vec<RwLockReadGuard<'a, Vec<f32>>>, RuntimeError> {
        buffers
            .iter()
            .map(RwLock::read)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| self.failure(POISONED))
    }
}

const POISONED: &str = "another rank panicked during a collective";

impl HostExchange for ThreadGroupMember {
    fn rank_and_size(&self) -> (usize, usize) {
        (self.rank, self.world_size)
    }

    fn exchange(&mut self, op: CollectiveOp, data: Vec<f32>) -> Result<Vec<f32>, RuntimeError> {
        let rounds = &*self.rounds;
        let mut state = rounds.state.lock().map_err(|_| self.failure(POISONED))?;
        state.pending[self.rank] = Some((op, data));
        let round = state.completed_rounds;
        if state.pending.iter().all(Option::is_some) {
            let contributions: Vec<_> = state.pending.iter_mut().filter_map(Option::take).collect();
            state.result = Arc::new(combine(contributions));
            state.unread = state.pending.len();
            state.completed_rounds += 1;
            rounds.round_done.notify_all();
        } else {
            let (woken, wait) = rounds
                .round_done
                .wait_timeout_while(state, self.timeout, |s| s.completed_rounds == round)
                .map_err(|_| self.failure(POISONED))?;
            state = woken;
            if wait.timed_out() {
                state.pending[self.rank] = None;
                let missing: Vec<usize> = (0..state.pending.len())
                    .filter(|&r| state.pending[r].is_none() && r != self.rank)
                    .collect();
                return Err(self.failure(format!(
                    "{op}: waited {:.1} s for ranks {missing:?}",
                    self.timeout.as_secs_f64()
                )));
            }
        }
        state.unread -= 1;
        let result = match state.unread {
            0 => std::mem::replace(&mut state.result, Arc::new(Ok(Vec::new()))),
            _ => Arc::clone(&state.result),
        };
        drop(state);
        // The last reader owns the buffer unless another is still copying it.
        Arc::try_unwrap(result)
            .unwrap_or_else(|shared| shared.as_ref().clone())
            .map_err(|detail| self.failure(detail))
    }

    /// Between the two barriers every rank only reads the contributions and writes its own
    /// share; outside them it writes only its own contribution and reads the shares, so the
    /// locks are never contended and the next call cannot overwrite what a rank still reads.
    fn exchange_parts(&mut self, parts: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        for part in parts {
            check_call(part, CollectiveOp::Sum, self.rank, self.world_size)?;
        }
        let rounds = Arc::clone(&self.rounds);
        let len = {
            let mut mine = rounds.contributions[self.rank]
                .write()
                .map_err(|_| self.failure(POISONED))?;
            mine.clear();
            for part in parts {
                append_f32(part, &mut mine)?;
            }
            mine.len()
        };
        self.barrier()?;
        let (start, share_len) = shard_rows(len, self.rank, self.world_size);
        {
            let all = self.read_all(&rounds.contributions)?;
            if let Some(rank) = all.iter().position(|c| c.len() != all[0].len()) {
                let sum = CollectiveOp::Sum;
                return Err(self.failure(lengths_differ(sum, all[0].len(), rank, all[rank].len())));
            }
            let mut share = rounds.shares[self.rank]
                .write()
                .map_err(|_| self.failure(POISONED))?;
            share.clear();
            share.extend_from_slice(&all[0][start..start + share_len]);
            // Rank order, always: float addition is not associative.
            for other in &all[1..] {
                let other = &other[start..start + share_len];
                share.iter_mut().zip(other).for_each(|(s, x)| *s += x);
            }
        }
        self.barrier()?;
        let shares = self.read_all(&rounds.shares)?;
        let mut offset = 0;
        parts
            .iter()
            .map(|part| {
                let len = part.elem_count();
                let mut summed = Vec::with_capacity(len);
                let mut share_start = 0;
                for share in shares.iter() {
                    // The overlap of [offset, offset + len) with this share's elements.
                    let from = offset.max(share_start);
                    let to = (offset + len).min(share_start + share.len());
                    if from < to {
                        summed.extend_from_slice(&share[from - share_start..to - share_start]);
                    }
                    share_start += share.len();
                }
                offset += len;
                Ok(Tensor::from_vec(summed, part.shape(), part.device())?)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// TCP: the rendezvous, and the CPU collective over its connections.

/// CPU processes connected in a star through rank 0, which combines every round in rank order.
/// Built by [`RendezvousServer::serve`] (rank 0) and [`rendezvous_join`] (the others).
pub struct TcpGroup {
    rank: usize,
    world_size: usize,
    links: StarLinks,
}

enum StarLinks {
    /// Rank 0: the streams to ranks 1, 2, …, in order.
    Root(Vec<TcpStream>),
    Leaf(TcpStream),
}

impl HostExchange for TcpGroup {
    fn rank_and_size(&self) -> (usize, usize) {
        (self.rank, self.world_size)
    }

    fn exchange(&mut self, op: CollectiveOp, data: Vec<f32>) -> Result<Vec<f32>, RuntimeError> {
        let rank = self.rank;
        let lost = |peer: usize, error: io::Error| RuntimeError::Collective {
            rank,
            detail: format!("{op}: lost the connection to rank {peer}: {error}"),
        };
        match &mut self.links {
            StarLinks::Root(peers) => {
                let mut contributions = vec![(op, data)];
                for (i, peer) in peers.iter_mut().enumerate() {
                    contributions.push(read_contribution(peer).map_err(|e| lost(i + 1, e))?);
                }
                let combined = combine(contributions);
                let reply = combined.as_ref().map(|sum| f32_bytes(sum));
                let reply = reply.as_deref().map_err(|message| message.as_str());
                for (i, peer) in peers.iter_mut().enumerate() {
                    write_reply(peer, reply).map_err(|e| lost(i + 1, e))?;
                }
                combined.map_err(|detail| RuntimeError::Collective { rank, detail })
            }
            StarLinks::Leaf(root) => {
                write_contribution(root, op, &data).map_err(|e| lost(0, e))?;
                match read_reply(root, u64::MAX).map_err(|e| lost(0, e))? {
                    Ok(bytes) => Ok(f32s_from_bytes(&bytes)),
                    Err(detail) => Err(RuntimeError::Collective { rank, detail }),
                }
            }
        }
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A leaf's round: op (0 = sum, 1 = broadcast), root (u32), length (u64), f32s; little endian.
fn write_contribution(stream: &mut TcpStream, op: CollectiveOp, data: &[f32]) -> io::Result<()> {
    let (tag, root) = match op {
        CollectiveOp::Sum => (0u8, 0u32),
        CollectiveOp::Broadcast { root } => (1, root as u32),
    };
    let mut frame = vec![tag];
    frame.extend(root.to_le_bytes());
    frame.extend((data.len() as u64).to_le_bytes());
    frame.extend(f32_bytes(data));
    stream.write_all(&frame)
}

fn read_contribution(stream: &mut TcpStream) -> io::Result<(CollectiveOp, Vec<f32>)> {
    let mut header = [0u8; 13];
    stream.read_exact(&mut header)?;
    let root = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let op = match header[0] {
        0 => CollectiveOp::Sum,
        1 => CollectiveOp::Broadcast { root },
        tag => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("op tag {tag}"),
            ))
        }
    };
    let len = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
    let mut bytes = vec![0u8; frame_len(len.saturating_mul(4))?];
    stream.read_exact(&mut bytes)?;
    Ok((op, f32s_from_bytes(&bytes)))
}

fn frame_len(len: u64) -> io::Result<usize> {
    usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too long"))
}

/// Rank 0's answer: status (0 = ok, 1 = refused), length (u64), payload or message.
fn write_reply(stream: &mut TcpStream, reply: Result<&[u8], &str>) -> io::Result<()> {
    let (status, body) = match reply {
        Ok(payload) => (0u8, payload),
        Err(message) => (1, message.as_bytes()),
    };
    let mut frame = vec![status];
    frame.extend((body.len() as u64).to_le_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

fn read_reply(stream: &mut TcpStream, max_len: u64) -> io::Result<Result<Vec<u8>, String>> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let len = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a reply of {len} bytes (at most {max_len} expected)"),
        ));
    }
    let mut body = vec![0u8; frame_len(len)?];
    stream.read_exact(&mut body)?;
    Ok(match header[0] {
        0 => Ok(body),
        _ => Err(String::from_utf8_lossy(&body).into_owned()),
    })
}

/// `host:port`, with brackets around an IPv6 literal.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Time left until `deadline`, at least a millisecond (a zero socket timeout is an error).
fn time_left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Rank 0's side of the TCP rendezvous. Bind first, then [`serve`](Self::serve): tests bind
/// port 0 and hand the chosen port to the other ranks.
pub struct RendezvousServer {
    listener: TcpListener,
    at: String,
}

impl RendezvousServer {
    pub fn bind(host: &str, port: u16) -> Result<Self, RuntimeError> {
        let at = host_port(host, port);
        let listener = TcpListener::bind((host, port)).map_err(|e| RuntimeError::Rendezvous {
            at: at.clone(),
            detail: format!("rank 0 cannot listen: {e}"),
        })?;
        let at = listener.local_addr().map_or(at, |addr| addr.to_string());
        Ok(RendezvousServer { listener, at })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits until ranks 1..world_size have all connected, then sends each `payload`.
    pub fn serve(
        self,
        world_size: usize,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<TcpGroup, RuntimeError> {
        let deadline = Instant::now() + timeout;
        let fail = |detail: String| RuntimeError::Rendezvous {
            at: self.at.clone(),
            detail,
        };
        self.listener
            .set_nonblocking(true)
            .map_err(|e| fail(format!("cannot poll the listener: {e}")))?;
        let mut peers: Vec<Option<TcpStream>> = (1..world_size).map(|_| None).collect();
        while peers.iter().any(Option::is_none) {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    if let Some((rank, stream)) = self.admit(stream, from, &peers, deadline)? {
                        peers[rank - 1] = Some(stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> =
                            (1..world_size).filter(|r| peers[r - 1].is_none()).collect();
                        return Err(RuntimeError::RendezvousTimeout {
                            at: self.at.clone(),
                            waited: timeout,
                            detail: format!("rank 0 is still waiting for ranks {missing:?}"),
                        });
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(format!("accept failed: {e}"))),
            }
        }
        let mut peers: Vec<TcpStream> = peers.into_iter().flatten().collect();
        for (i, peer) in peers.iter_mut().enumerate() {
            write_reply(peer, Ok(payload))
                .map_err(|e| fail(format!("cannot send the payload to rank {}: {e}", i + 1)))?;
        }
        Ok(TcpGroup {
            rank: 0,
            world_size,
            links: StarLinks::Root(peers),
        })
    }

    /// Reads a newcomer's hello; `None` for a stray connection (not a websieve rank).
    fn admit(
        &self,
        mut stream: TcpStream,
        from: SocketAddr,
        peers: &[Option<TcpStream>],
        deadline: Instant,
    ) -> Result<Option<(usize, TcpStream)>, RuntimeError> {
        let mut hello = [0u8; 12];
        let read = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(time_left(deadline))))
            .and_then(|()| stream.read_exact(&mut hello));
        if read.is_err() || hello[..4] != HELLO_MAGIC {
            tracing::warn!(%from, at = %self.at, "ignored a connection that is not a websieve rank");
            return Ok(None);
        }
        let rank = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes")) as usize;
        let their_size = u32::from_le_bytes(hello[8..].try_into().expect("4 bytes")) as usize;
        let world_size = peers.len() + 1;
        let refusal = if their_size != world_size {
            Some(format!(
                "rank {rank} at {from} has world size {their_size}, rank 0 has {world_size}"
            ))
        } else if rank == 0 || rank >= world_size {
            Some(format!(
                "{from} claims rank {rank}, not a rank from 1 to {}",
                world_size - 1
            ))
        } else if peers[rank - 1].is_some() {
            Some(format!("rank {rank} joined twice (again from {from})"))
        } else {
            None
        };
        if let Some(detail) = refusal {
            // Best effort: the refused rank learns why; rank 0 fails either way.
            let _ = write_reply(&mut stream, Err(&detail));
            return Err(RuntimeError::Rendezvous {
                at: self.at.clone(),
                detail,
            });
        }
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| RuntimeError::Rendezvous {
                at: self.at.clone(),
                detail: format!("cannot set up the connection of rank {rank}: {e}"),
            })?;
        Ok(Some((rank, stream)))
    }
}

/// A rank other than 0 joins the rendezvous at `host:port`: connects (retrying until
/// `timeout`, since rank 0 may start later) and waits for rank 0's payload, which comes once
/// every rank has joined. Returns the payload and this rank's link for a [`TcpGroup`].
pub fn rendezvous_join(
    host: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<(Vec<u8>, TcpGroup), RuntimeError> {
    let at = host_port(host, port);
    let deadline = Instant::now() + timeout;
    let timed_out = |detail: String| RuntimeError::RendezvousTimeout {
        at: at.clone(),
        waited: timeout,
        detail,
    };
    let mut stream = connect_with_retries(host, port, deadline).map_err(|e| {
        timed_out(format!(
            "rank {rank} cannot reach rank 0 (last error: {e}); is rank 0 running?"
        ))
    })?;
    let mut hello = HELLO_MAGIC.to_vec();
    hello.extend((rank as u32).to_le_bytes());
    hello.extend((world_size as u32).to_le_bytes());
    let reply = stream
        .set_nodelay(true)
        .and_then(|()| stream.write_all(&hello))
        .and_then(|()| stream.set_read_timeout(Some(time_left(deadline))))
        .and_then(|()| read_reply(&mut stream, MAX_PAYLOAD_BYTES));
    let payload = match reply {
        Ok(Ok(payload)) => payload,
        Ok(Err(refusal)) => {
            return Err(RuntimeError::Rendezvous {
                at,
                detail: format!("rank 0 refused rank {rank}: {refusal}"),
            })
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(timed_out(format!(
                "rank {rank} joined, but rank 0 sent no payload: not every rank joined in time"
            )))
        }
        Err(e) => {
            return Err(RuntimeError::Rendezvous {
                at,
                detail: format!("rank 0 dropped rank {rank} before the payload ({e}); see its log"),
            })
        }
    };
    stream
        .set_read_timeout(None)
        .map_err(|e| RuntimeError::Rendezvous {
            at,
            detail: format!("cannot clear the read timeout: {e}"),
        })?;
    let group = TcpGroup {
        rank,
        world_size,
        links: StarLinks::Leaf(stream),
    };
    Ok((payload, group))
}

/// Connects to any address of `host:port`, retrying with backoff until `deadline`; the error
/// is the last attempt's.
fn connect_with_retries(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut backoff = POLL_INTERVAL;
    loop {
        let attempt = (host, port).to_socket_addrs().and_then(|addrs| {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, time_left(deadline).min(MAX_RETRY_INTERVAL))
                {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(backoff.min(time_left(deadline)));
                backoff = (backoff * 2).min(MAX_RETRY_INTERVAL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shared-file rendezvous.

/// Rank 0: writes `payload` to `path` atomically (a temporary file, then a rename), so no
/// rank ever reads half of it.
pub fn publish_payload_file(path: &Path, payload: &[u8]) -> Result<(), RuntimeError> {
    let fail = |e: io::Error| RuntimeError::Rendezvous {
        at: format!("file {}", path.display()),
        detail: format!("rank 0 cannot write the payload: {e}"),
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, payload).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        fail(e)
    })
}

/// The other ranks: poll for rank 0's file until `timeout`.
pub fn await_payload_file(path: &Path, timeout: Duration) -> Result<Vec<u8>, RuntimeError> {
    let at = format!("file {}", path.display());
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read(path) {
            Ok(payload) => return Ok(payload),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(RuntimeError::RendezvousTimeout {
                        at,
                        waited: timeout,
                        detail: "rank 0 never wrote the payload; is rank 0 running, and is the \
                                 path on a file system every rank sees?"
                            .into(),
                    });
                }
                std::thread::sleep(POLL_INTERVAL.min(time_left(deadline)));
            }
            Err(e) => {
                return Err(RuntimeError::Rendezvous {
                    at,
                    detail: format!("cannot read the payload: {e}"),
                })
            }
        }
    }
}

/// Rank 0 listens on all IPv4 interfaces: `MASTER_ADDR` names it for the others, and may be a
/// host name that resolves to an address this process cannot bind.
const LISTEN_HOST: &str = "0.0.0.0";

impl Rendezvous {
    /// Rank 0 calls `make_payload` and hands the bytes to every other rank; every rank returns
    /// them. The others never call `make_payload`.
    pub fn share_payload(
        &self,
        world: &World,
        timeout: Duration,
        make_payload: impl FnOnce() -> Result<Vec<u8>, RuntimeError>,
    ) -> Result<Vec<u8>, RuntimeError> {
        match (self, world.rank) {
            (Rendezvous::Tcp { port, .. }, 0) => {
                let payload = make_payload()?;
                RendezvousServer::bind(LISTEN_HOST, *port)?.serve(
                    world.world_size,
                    &payload,
                    timeout,
                )?;
                Ok(payload)
            }
            (Rendezvous::Tcp { host, port }, rank) => {
                Ok(rendezvous_join(host, *port, rank, world.world_size, timeout)?.0)
            }
            (Rendezvous::File(path), 0) => {
                let payload = make_payload()?;
                publish_payload_file(path, &payload)?;
                Ok(payload)
            }
            (Rendezvous::File(path), _) => await_payload_file(path, timeout),
        }
    }

    /// Connects all ranks into a [`TcpGroup`] (TCP rendezvous only).
    pub fn tcp_group(&self, world: &World, timeout: Duration) -> Result<TcpGroup, RuntimeError> {
        match self {
            Rendezvous::Tcp { port, .. } if world.rank == 0 => {
                RendezvousServer::bind(LISTEN_HOST, *port)?.serve(world.world_size, &[], timeout)
            }
            Rendezvous::Tcp { host, port } => {
                Ok(rendezvous_join(host, *port, world.rank, world.world_size, timeout)?.1)
            }
            Rendezvous::File(_) => Err(RuntimeError::Rendezvous {
                at: self.to_string(),
                detail: format!(
                    "CPU training across processes needs a TCP rendezvous; unset \
                     {RENDEZVOUS_FILE_VAR}"
                ),
            }),
        }
    }
}

/// The collective for this world and device: [`SingleProcess`] for one process, a
/// [`TcpGroup`] for CPU processes, `Nccl` for GPUs (feature `nccl`).
pub fn connect_collective(
    world: &World,
    device: &Device,
    timeout: Duration,
) -> Result<Box<dyn Collective>, RuntimeError> {
    if !world.is_distributed() {
        return Ok(Box::new(SingleProcess));
    }
    match device {
        Device::Cpu => Ok(Box::new(
            world.rendezvous_point()?.tcp_group(world, timeout)?,
        )),
        #[cfg(feature = "nccl")]
        Device::Cuda(_) => Ok(Box::new(Nccl::new(world, device, timeout)?)),
        other => Err(RuntimeError::Collective {
            rank: world.rank,
            detail: format!(
                "no collective for {other:?}: training on several GPUs needs the `nccl` feature"
            ),
        }),
    }
}

#[cfg(feature = "nccl")]
pub use nccl::Nccl;

#[cfg(feature = "nccl")]
mod nccl {
    use std::ffi::c_char;

    use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape};

    use super::*;

    /// NCCL on this rank's GPU, on the candle device's own stream so that it runs in order
    /// with the backward pass that fills the gradients.
    pub struct Nccl {
        comm: Comm,
    }

    /// NCCL's unique id, the rendezvous payload.
    const ID_BYTES: usize = 128;

    impl Nccl {
        /// Rank 0 creates NCCL's unique id and hands it out through the world's rendezvous;
        /// every rank then joins the communicator (which blocks until all have).
        pub fn new(
            world: &World,
            device: &Device,
            timeout: Duration,
        ) -> Result<Self, RuntimeError> {
            let fail = |detail: String| RuntimeError::Collective {
                rank: world.rank,
                detail,
            };
            let Device::Cuda(cuda) = device else {
                return Err(fail(format!("NCCL needs a CUDA device, not {device:?}")));
            };
            let make_id = || {
                let id = Id::new().map_err(|e| fail(format!("ncclGetUniqueId: {e:?}")))?;
                Ok(id.internal().iter().map(|&c| c as u8).collect())
            };
            let bytes = if world.is_distributed() {
                world
                    .rendezvous_point()?
                    .share_payload(world, timeout, make_id)?
            } else {
                make_id()?
            };
            if bytes.len() != ID_BYTES {
                return Err(fail(format!(
                    "the rendezvous payload has {} bytes, NCCL's id {ID_BYTES}",
                    bytes.len()
                )));
            }
            let mut internal = [0 as c_char; ID_BYTES];
            internal
                .iter_mut()
                .zip(&bytes)
                .for_each(|(c, &b)| *c = b as c_char);
            let comm = Comm::from_rank(
                cuda.cuda_stream(),
                world.rank,
                world.world_size,
                Id::uninit(internal),
            )
            .map_err(|e| fail(format!("ncclCommInitRank: {e:?}")))?;
            Ok(Nccl { comm })
        }

        fn run(&self, tensor: &Tensor, op: CollectiveOp) -> Result<Tensor, RuntimeError> {
            check_call(tensor, op, self.comm.rank(), self.comm.world_size())?;
            let op = NcclOp {
                comm: &self.comm,
                op,
            };
            Ok(tensor.contiguous()?.apply_op1_no_bwd(&op)?)
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.comm.rank()
        }

        fn world_size(&self) -> usize {
            self.comm.world_size()
        }

        fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<Tensor, RuntimeError> {
            self.run(tensor, CollectiveOp::Sum)
        }

        fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<Tensor, RuntimeError> {
            self.run(tensor, CollectiveOp::Broadcast { root })
        }
    }

    /// One NCCL call as a candle op: reads the input's device buffer, writes a new one.
    struct NcclOp<'a> {
        comm: &'a Comm,
        op: CollectiveOp,
    }

    impl CustomOp1 for NcclOp<'_> {
        fn name(&self) -> &'static str {
            "nccl"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL {} needs a CUDA tensor", self.op)
        }

        fn cuda_fwd(
            &self,
            storage: &CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("NCCL {} needs a contiguous tensor", self.op)
            };
            let input = storage.as_cuda_slice::<f32>()?.slice(start..end);
            let device = storage.device.clone();
            let mut output = device.alloc_zeros::<f32>(end - start)?;
            let status = match self.op {
                CollectiveOp::Sum => self.comm.all_reduce(&input, &mut output, &ReduceOp::Sum),
                CollectiveOp::Broadcast { root } => {
                    self.comm.broadcast(Some(&input), &mut output, root as i32)
                }
            };
            if let Err(e) = status {
                candle_core::bail!("NCCL {}: {e:?}", self.op)
            }
            Ok((
                CudaStorage::wrap_cuda_slice(output, device),
                layout.shape().clone(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn shards_cover_the_rows_the_first_ranks_taking_the_remainder() {
        let shards: Vec<_> = (0..4).map(|r| shard_rows(6, r, 4)).collect();
        assert_eq!(shards, [(0, 2), (2, 2), (4, 1), (5, 1)]);
        assert_eq!(shard_rows(8, 1, 2), (4, 4));
        assert_eq!(shard_rows(5, 0, 1), (0, 5));
        assert_eq!(
            shard_rows(2, 3, 4),
            (2, 0),
            "more ranks than rows: empty shards"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn world(pairs: &[(&str, &str)]) -> Result<World, RuntimeError> {
        World::from_env_with(env(pairs))
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        world(pairs).expect_err("should fail").to_string()
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "8"),
        ("MASTER_ADDR", "node07"),
        ("MASTER_PORT", "29500"),
    ];

    /// `base` with `extra`'s variables set; an empty value unsets the variable.
    fn with<'a>(
        base: &[(&'a str, &'a str)],
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut pairs: Vec<_> = base
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        pairs.extend(extra.iter().filter(|(_, v)| !v.is_empty()));
        pairs
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        assert_eq!(world(&[]).unwrap(), World::single());
        assert_eq!(world(&[("MASTER_PORT", "1234")]).unwrap(), World::single());
    }

    #[test]
    fn torchrun_variables() {
        let w = world(&TORCHRUN).unwrap();
        assert_eq!((w.rank, w.local_rank, w.world_size), (3, 1, 8));
        assert_eq!(w.launcher, Launcher::Torchrun);
        let tcp = |port| {
            Some(Rendezvous::Tcp {
                host: "node07".into(),
                port,
            })
        };
        assert_eq!(w.rendezvous, tcp(29500));
        // torchrun's agent holds MASTER_PORT: the rendezvous takes the next port.
        let elastic = world(&with(&TORCHRUN, &[("TORCHELASTIC_RUN_ID", "job1")])).unwrap();
        assert_eq!(elastic.rendezvous, tcp(29501));
        let file = world(&with(&TORCHRUN, &[(RENDEZVOUS_FILE_VAR, "/shared/rdv")])).unwrap();
        assert_eq!(
            file.rendezvous,
            Some(Rendezvous::File("/shared/rdv".into()))
        );
        let one = world(&[("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert_eq!((one.world_size, one.rendezvous), (1, None));
    }

    #[test]
    fn torchrun_bad_values_name_the_variable() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (
                &[("RANK", "abc")],
                "RANK=\"abc\": expected a non-negative integer",
            ),
            (&[("RANK", "8")], "RANK=8 is not below WORLD_SIZE=8"),
            (
                &[("LOCAL_RANK", "9")],
                "LOCAL_RANK=9 is not below WORLD_SIZE=8",
            ),
            (
                &[("LOCAL_RANK", "")],
                "LOCAL_RANK is not set, but RANK is (torchrun sets both)",
            ),
            (
                &[("WORLD_SIZE", "0"), ("RANK", "0")],
                "WORLD_SIZE=\"0\": expected a positive integer",
            ),
            (&[("MASTER_ADDR", "")], "MASTER_ADDR is not set"),
            (
                &[("MASTER_PORT", "0")],
                "MASTER_PORT=\"0\": expected a port number",
            ),
            (
                &[("MASTER_PORT", "65535"), ("TORCHELASTIC_RUN_ID", "x")],
                "MASTER_PORT=\"65535\": under torchrun the rendezvous uses MASTER_PORT + 1",
            ),
        ];
        for (change, expected) in cases {
            let message = error(&with(&TORCHRUN, change));
            assert!(message.contains(expected), "{change:?}: {message}");
        }
        let message = error(&[("WORLD_SIZE", "2")]);
        assert!(
            message.contains("RANK is not set, but WORLD_SIZE is"),
            "{message}"
        );
    }

    const SLURM: [(&str, &str); 4] = [
        ("SLURM_PROCID", "5"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_JOB_NODELIST", "node[01-04,07],gpu-a12"),
    ];

    #[test]
    fn slurm_variables() {
        let w = world(&SLURM).unwrap();
        assert_eq!((w.rank, w.local_rank, w.world_size), (5, 1, 8));
        assert_eq!(w.launcher, Launcher::Slurm);
        let tcp = |host: &str, port| {
            Some(Rendezvous::Tcp {
                host: host.into(),
                port,
            })
        };
        assert_eq!(w.rendezvous, tcp("node01", DEFAULT_MASTER_PORT));
        let port = world(&with(&SLURM, &[("MASTER_PORT", "4242")])).unwrap();
        assert_eq!(port.rendezvous, tcp("node01", 4242));
        let addr = world(&with(&SLURM, &[("MASTER_ADDR", "login")])).unwrap();
        assert_eq!(addr.rendezvous, tcp("login", DEFAULT_MASTER_PORT));
        // torchrun's variables win over Slurm's (torchrun started under srun).
        assert_eq!(
            world(&with(&SLURM, &TORCHRUN)).unwrap().launcher,
            Launcher::Torchrun
        );

        let message = error(&with(&SLURM, &[("SLURM_JOB_NODELIST", "")]));
        assert!(
            message.contains("SLURM_JOB_NODELIST is not set, but SLURM_PROCID is"),
            "{message}"
        );
        let message = error(&with(&SLURM, &[("SLURM_JOB_NODELIST", "node[01-")]));
        assert!(
            message.contains("SLURM_JOB_NODELIST=\"node[01-\": unclosed '['"),
            "{message}"
        );
        let message = error(&with(&SLURM, &[("SLURM_PROCID", "8")]));
        assert!(
            message.contains("SLURM_PROCID=8 is not below SLURM_NTASKS=8"),
            "{message}"
        );
    }

    #[test]
    fn slurm_host_lists() {
        let expand = |list| expand_slurm_hostlist(list).unwrap();
        assert_eq!(
            expand("node[01-04,07],gpu-a12"),
            ["node01", "node02", "node03", "node04", "node07", "gpu-a12"]
        );
        assert_eq!(expand("single"), ["single"]);
        assert_eq!(expand("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(expand("n[098-100]"), ["n098", "n099", "n100"]);
        assert_eq!(expand("r[1-2]n[1,3]"), ["r1n1", "r1n3", "r2n1", "r2n3"]);
        assert_eq!(expand("a[1],b[2-3]-ib"), ["a1", "b2-ib", "b3-ib"]);
        assert_eq!(
            first_slurm_host("node[01-04,07],gpu-a12").unwrap(),
            "node01"
        );
        for (bad, why) in [
            ("n[1-", "unclosed"),
            ("n1]", "without"),
            ("n[[1]]", "nested"),
            ("n[3-1]", "backwards"),
            ("n[a-b]", "not a number"),
            ("n[-1]", "not a number"),
            ("a,,b", "empty host"),
            ("", "empty host"),
            ("n[0-99999999]", "more than"),
        ] {
            let message = expand_slurm_hostlist(bad).expect_err(bad);
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    fn rank_world(local_rank: usize) -> World {
        World {
            local_rank,
            rank: local_rank,
            world_size: 4,
            launcher: Launcher::Torchrun,
            rendezvous: None,
        }
    }

    #[test]
    fn device_choices() {
        let cuda = |local_rank, visible| {
            resolve_device(&Devices::CudaAll, &rank_world(local_rank), visible)
        };
        assert_eq!(
            resolve_device(&Devices::Cpu, &rank_world(3), 0).unwrap(),
            DeviceChoice::Cpu
        );
        assert_eq!(cuda(2, 4).unwrap(), DeviceChoice::Cuda { ordinal: 2 });
        let listed = Devices::Cuda(vec![3, 1]);
        assert_eq!(
            resolve_device(&listed, &rank_world(1), 4).unwrap(),
            DeviceChoice::Cuda { ordinal: 1 }
        );
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[test]
    fn device_errors() {
        let message = |devices: Devices, local_rank, visible| {
            resolve_device(&devices, &rank_world(local_rank), visible)
                .expect_err("should fail")
                .to_string()
        };
        let none = message(Devices::CudaAll, 0, 0);
        assert!(none.contains("no GPU is visible"), "{none}");
        assert!(
            none.contains("train.devices = \"cpu\" (or --set train.devices=cpu)"),
            "{none}"
        );
        let none = message(Devices::Cuda(vec![0]), 0, 0);
        assert!(
            none.contains("train.devices = \"cuda:0\" asks for CUDA"),
            "{none}"
        );
        let few = message(Devices::CudaAll, 2, 2);
        assert!(
            few.contains("local rank 2 has no GPU of its own, this node has 2"),
            "{few}"
        );
        let few = message(Devices::Cuda(vec![0, 1]), 3, 4);
        assert!(
            few.contains("\"cuda:0,1\": local rank 3 has no GPU"),
            "{few}"
        );
        let hidden = message(Devices::Cuda(vec![0, 5]), 1, 2);
        assert!(
            hidden.contains("GPU 5 is not visible, only GPUs 0 to 1 are"),
            "{hidden}"
        );
        #[cfg(not(feature = "cuda"))]
        {
            assert_eq!(visible_gpu_count(), 0);
            let open = DeviceChoice::Cuda { ordinal: 0 }
                .open()
                .unwrap_err()
                .to_string();
            assert!(open.contains("no GPU is visible") && open.contains("without the `cuda`"));
        }
    }

    const QUICK: Duration = Duration::from_secs(10);

    /// Binds rank 0 on an ephemeral port and runs `join(port, rank)` for the other ranks in
    /// threads; returns rank 0's `serve` result and the others' results, by rank.
    fn tcp_ranks<T: Send + 'static>(
        world_size: usize,
        payload: &[u8],
        join: impl Fn(u16, usize) -> T + Send + Sync + 'static,
    ) -> (Result<TcpGroup, RuntimeError>, Vec<T>) {
        let server = RendezvousServer::bind("127.0.0.1", 0).unwrap();
        let port = server.local_addr().unwrap().port();
        let join = Arc::new(join);
        let others: Vec<_> = (1..world_size)
            .map(|rank| {
                let join = Arc::clone(&join);
                std::thread::spawn(move || join(port, rank))
            })
            .collect();
        let root = server.serve(world_size, payload, QUICK);
        (
            root,
            others.into_iter().map(|t| t.join().unwrap()).collect(),
        )
    }

    #[test]
    fn tcp_rendezvous_hands_the_payload_to_four_ranks() {
        let payload: Vec<u8> = (0..128).map(|i| (i * 7) as u8).collect();
        let (root, others) = tcp_ranks(4, &payload, |port, rank| {
            rendezvous_join("127.0.0.1", port, rank, 4, QUICK)
                .map(|(payload, group)| (payload, group.rank))
        });
        assert_eq!(Collective::world_size(&root.unwrap()), 4);
        for (i, joined) in others.into_iter().enumerate() {
            assert_eq!(joined.unwrap(), (payload.clone(), i + 1));
        }
    }

    #[test]
    fn tcp_rendezvous_refuses_a_world_size_mismatch() {
        let (root, others) = tcp_ranks(2, b"id", |port, rank| {
            rendezvous_join("127.0.0.1", port, rank, 3, QUICK).map(|(payload, _)| payload)
        });
        let message = root.err().expect("rank 0 should fail").to_string();
        assert!(
            message.contains("has world size 3, rank 0 has 2"),
            "{message}"
        );
        let message = others[0]
            .as_ref()
            .expect_err("rank 1 should fail")
            .to_string();
        assert!(message.contains("rank 0 refused rank 1"), "{message}");
    }

    #[test]
    fn tcp_rendezvous_times_out_naming_the_address() {
        // A port nobody listens on: bind one, then free it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let error = rendezvous_join("127.0.0.1", port, 1, 2, Duration::from_millis(300)).err();
        let message = error.expect("nobody listens").to_string();
        assert!(
            message.contains(&format!("rendezvous at 127.0.0.1:{port}")),
            "{message}"
        );
        assert!(message.contains("rank 1 cannot reach rank 0"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(3));

        let server = RendezvousServer::bind("127.0.0.1", 0).unwrap();
        let port = server.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || rendezvous_join("127.0.0.1", port, 2, 3, QUICK));
        let message = server
            .serve(3, b"id", Duration::from_millis(300))
            .err()
            .expect("rank 1 never joins")
            .to_string();
        assert!(
            message.contains("rank 0 is still waiting for ranks [1]"),
            "{message}"
        );
        // Rank 0 gave up: rank 2 must not wait for its payload until its own timeout.
        let message = peer
            .join()
            .unwrap()
            .err()
            .expect("rank 0 failed")
            .to_string();
        assert!(message.contains("rank 0 dropped rank 2"), "{message}");
    }

    #[test]
    fn file_rendezvous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous");
        let rendezvous = Rendezvous::File(path.clone());
        let file_world = |rank| World {
            rank,
            local_rank: rank,
            world_size: 4,
            launcher: Launcher::Slurm,
            rendezvous: Some(rendezvous.clone()),
        };
        let waiting: Vec<_> = (1..4)
            .map(|rank| {
                let (world, rendezvous) = (file_world(rank), rendezvous.clone());
                std::thread::spawn(move || {
                    rendezvous.share_payload(&world, QUICK, || panic!("only rank 0 makes it"))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let shared = rendezvous
            .share_payload(&file_world(0), QUICK, || Ok(vec![1, 2, 3]))
            .unwrap();
        assert_eq!(shared, [1, 2, 3]);
        for rank in waiting {
            assert_eq!(rank.join().unwrap().unwrap(), [1, 2, 3]);
        }
        // Only the payload is left: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let missing = dir.path().join("never");
        let message = await_payload_file(&missing, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("rendezvous at file {}", missing.display())),
            "{message}"
        );
        assert!(
            message.contains("rank 0 never wrote the payload"),
            "{message}"
        );
    }

    fn random_vectors(world_size: usize, len: usize) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..world_size)
            .map(|_| {
                (0..len)
                    .map(|_| rng.random_range(-1e3f32..1e3) * rng.random::<f32>())
                    .collect()
            })
            .collect()
    }

    /// The reference: element-wise, ((v0 + v1) + v2) + … in rank order.
    fn rank_order_sum(vectors: &[Vec<f32>]) -> Vec<f32> {
        (0..vectors[0].len())
            .map(|i| vectors[1..].iter().fold(vectors[0][i], |sum, v| sum + v[i]))
            .collect()
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Runs `rounds` all-reduces and one broadcast from the last rank on every member, each
    /// from its own thread; returns every rank's results.
    fn run_ranks<C: Collective + Send + 'static>(
        members: Vec<C>,
        vectors: &[Vec<f32>],
        rounds: usize,
    ) -> Vec<Vec<Vec<f32>>> {
        let root = members.len() - 1;
        let threads: Vec<_> = members
            .into_iter()
            .zip(vectors.iter().cloned())
            .enumerate()
            .map(|(rank, (mut member, data))| {
                std::thread::spawn(move || {
                    let mut rng = ChaCha8Rng::seed_from_u64(rank as u64);
                    let tensor = Tensor::from_vec(data, (2, LEN / 2), &Device::Cpu).unwrap();
                    let mut results = Vec::new();
                    for _ in 0..rounds {
                        // Arrive in a different order every round.
                        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
                        let sum = member.all_reduce_sum(&tensor).unwrap();
                        assert_eq!(sum.dims(), tensor.dims());
                        results.push(sum.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                    }
                    let broadcast = member.broadcast(&tensor, root).unwrap();
                    results.push(broadcast.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                    results
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    const LEN: usize = 1000;

    fn check_rank_results(results: &[Vec<Vec<f32>>], vectors: &[Vec<f32>]) {
        let expected = bits(&rank_order_sum(vectors));
        for (rank, rounds) in results.iter().enumerate() {
            let (broadcast, sums) = rounds.split_last().unwrap();
            for sum in sums {
                assert_eq!(bits(sum), expected, "rank {rank}");
            }
            assert_eq!(
                bits(broadcast),
                bits(vectors.last().unwrap()),
                "rank {rank}"
            );
        }
    }

    #[test]
    fn thread_group_sums_bitwise_identically_in_rank_order() {
        let vectors = random_vectors(4, LEN);
        // The reference differs from another order's sum, so the test can tell orders apart.
        let reversed: Vec<Vec<f32>> = vectors.iter().rev().cloned().collect();
        assert_ne!(
            bits(&rank_order_sum(&vectors)),
            bits(&rank_order_sum(&reversed))
        );
        let results = run_ranks(ThreadGroupMember::group(4), &vectors, 20);
        check_rank_results(&results, &vectors);
    }

    /// The parts of [`sums_parts_as_one_bucket`]: an empty one, one longer than a share, the
    /// others straddling the shares' borders.
    const PART_SHAPES: [&[usize]; 5] = [&[7], &[3, 5], &[0], &[1], &[4, 2, 3]];

    fn parts_of(data: &[f32]) -> Vec<Tensor> {
        let mut offset = 0;
        PART_SHAPES
            .iter()
            .map(|&shape| {
                let n: usize = shape.iter().product();
                offset += n;
                Tensor::from_slice(&data[offset - n..offset], shape, &Device::Cpu).unwrap()
            })
            .collect()
    }

    /// Each of `members` sums its share of `vectors` as [`parts_of`] 5 times: every rank
    /// gets the parts' shapes back, holding the rank-order sum of the vectors bit for bit.
    fn sums_parts_as_one_bucket<C: Collective + Send + 'static>(
        members: Vec<C>,
        vectors: &[Vec<f32>],
    ) {
        let expected = bits(&rank_order_sum(vectors));
        let threads: Vec<_> = members
            .into_iter()
            .zip(vectors.iter().map(|v| parts_of(v)))
            .map(|(mut member, parts)| {
                std::thread::spawn(move || {
                    (0..5)
                        .map(|_| member.all_reduce_sum_parts(&parts).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (rank, thread) in threads.into_iter().enumerate() {
            for summed in thread.join().unwrap() {
                let dims: Vec<Vec<usize>> = summed.iter().map(|t| t.dims().to_vec()).collect();
                assert_eq!(dims, PART_SHAPES.map(<[usize]>::to_vec), "rank {rank}");
                let flat: Vec<f32> = summed
                    .iter()
                    .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .collect();
                assert_eq!(bits(&flat), expected, "rank {rank}");
            }
        }
    }

    const PARTS_LEN: usize = 7 + 15 + 1 + 24;

    /// Thread ranks sum in shares of a buffer each keeps; TCP ranks one flat bucket (the
    /// default): both give every rank the rank-order sum. A rank with fewer values fails
    /// every rank, naming both lengths.
    #[test]
    fn ranks_sum_parts_in_rank_order() {
        let vectors = random_vectors(3, PARTS_LEN);
        sums_parts_as_one_bucket(ThreadGroupMember::group(3), &vectors);
        let (root, others) = tcp_ranks(3, &[], |port, rank| {
            rendezvous_join("127.0.0.1", port, rank, 3, QUICK)
                .unwrap()
                .1
        });
        let members: Vec<TcpGroup> = std::iter::once(root.unwrap()).chain(others).collect();
        sums_parts_as_one_bucket(members, &vectors);

        let mut members = ThreadGroupMember::group(2).into_iter();
        let (mut first, mut second) = (members.next().unwrap(), members.next().unwrap());
        let longer = parts_of(&vectors[1]);
        let other = std::thread::spawn(move || second.all_reduce_sum_parts(&longer));
        let message = first
            .all_reduce_sum_parts(&parts_of(&vectors[0])[..2])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("rank 0 sent 22 values, rank 1 sent {PARTS_LEN}")),
            "{message}"
        );
        assert!(other.join().unwrap().is_err());
    }

    #[test]
    fn thread_group_reports_mismatches_and_missing_ranks() {
        let mut members = ThreadGroupMember::group(2).into_iter();
        let (mut first, mut second) = (members.next().unwrap(), members.next().unwrap());
        let other = std::thread::spawn(move || second.exchange(CollectiveOp::Sum, vec![1.0; 3]));
        let message = first
            .exchange(CollectiveOp::Sum, vec![1.0; 2])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("rank 0 sent 2 values, rank 1 sent 3"),
            "{message}"
        );
        assert!(other.join().unwrap().is_err());

        let mut alone = ThreadGroupMember::group(3)
            .remove(1)
            .with_timeout(Duration::from_millis(100));
        let message = alone
            .exchange(CollectiveOp::Sum, vec![1.0])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("collective on rank 1: all_reduce_sum: waited 0.1 s for ranks [0, 2]"),
            "{message}"
        );
        let f64_tensor = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        let message = alone.all_reduce_sum(&f64_tensor).unwrap_err().to_string();
        assert!(
            message.contains("collectives carry f32 tensors, got F64"),
            "{message}"
        );
    }

    #[test]
    fn tcp_group_sums_in_rank_order() {
        let vectors = random_vectors(3, LEN);
        let (root, others) = tcp_ranks(3, &[], |port, rank| {
            rendezvous_join("127.0.0.1", port, rank, 3, QUICK)
                .unwrap()
                .1
        });
        let members: Vec<TcpGroup> = std::iter::once(root.unwrap()).chain(others).collect();
        let results = run_ranks(members, &vectors, 5);
        check_rank_results(&results, &vectors);
    }

    #[test]
    fn single_process_is_a_no_op() {
        let mut single = SingleProcess;
        let tensor = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        let sum = single.all_reduce_sum(&tensor).unwrap();
        assert_eq!(sum.to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        assert!(single.broadcast(&tensor, 1).is_err());
        let collective = connect_collective(&World::single(), &Device::Cpu, QUICK).unwrap();
        assert_eq!((collective.rank(), collective.world_size()), (0, 1));
    }

    /// NCCL with one rank on the first GPU: a sum over one rank returns the input, on the
    /// device, and a broadcast from rank 0 likewise.
    #[cfg(feature = "nccl")]
    #[test]
    fn nccl_one_rank_all_reduce_and_broadcast() {
        let Some(device) = crate::model::ops::gradcheck::cuda_device() else {
            return;
        };
        let mut nccl = Nccl::new(&World::single(), &device, Duration::from_secs(30)).unwrap();
        let values: Vec<f32> = (0..1024).map(|i| i as f32 * 0.5 - 3.0).collect();
        let tensor = Tensor::from_slice(&values, 1024, &device).unwrap();
        let summed = nccl.all_reduce_sum(&tensor).unwrap();
        assert!(summed.device().is_cuda());
        assert_eq!(summed.to_vec1::<f32>().unwrap(), values);
        let sent = nccl.broadcast(&tensor, 0).unwrap();
        assert_eq!(sent.to_vec1::<f32>().unwrap(), values);
    }
}
