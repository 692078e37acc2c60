//! Fanning out on one machine: `runner` starts one worker process per GPU itself (or
//! `--nproc-per-node` of them), as torchrun would, so that a one-machine multi-GPU run needs
//! no launcher. In: a worker count and the command line to run. Out: the workers' combined
//! outcome: success when every worker succeeds; otherwise the first failure, after the other
//! workers are stopped (none is left waiting for a dead peer).
//!
//! Each worker gets torchrun's variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` on a free local port), so it reads its
//! place through [`World::from_env`](crate::runtime::World::from_env) like any launched
//! process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// Why the workers did not all succeed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot find a free local port for the workers' rendezvous: {0}")]
    Port(std::io::Error),
    #[error("cannot start worker {rank} ({}): {cause}", program.display())]
    Spawn {
        rank: usize,
        program: PathBuf,
        cause: std::io::Error,
    },
    #[error("worker {rank} of {workers} failed ({status}); the others were stopped")]
    Failed {
        rank: usize,
        workers: usize,
        status: ExitStatus,
    },
    #[error("waiting for worker {rank}: {cause}")]
    Wait { rank: usize, cause: std::io::Error },
}

/// How often the launcher looks at its workers.
const POLL: Duration = Duration::from_millis(100);

/// Runs `program args` as `workers` ranks of one world on this machine and waits for them.
pub fn run_local_workers(
    workers: usize,
    program: &Path,
    args: &[OsString],
) -> Result<(), LaunchError> {
    let port = free_local_port().map_err(LaunchError::Port)?;
    let mut children: Vec<Child> = Vec::with_capacity(workers);
    for rank in 0..workers {
        let spawned = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", workers.to_string())
            .env("LOCAL_WORLD_SIZE", workers.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            // Not torchrun's agent: the rendezvous port is MASTER_PORT itself.
            .env_remove("TORCHELASTIC_RUN_ID")
            .env_remove(crate::runtime::RENDEZVOUS_FILE_VAR)
            .spawn();
        match spawned {
            Ok(child) => children.push(child),
            Err(cause) => {
                stop_all(&mut children);
                return Err(LaunchError::Spawn {
                    rank,
                    program: program.to_path_buf(),
                    cause,
                });
            }
        }
    }
    let mut running = workers;
    let mut done = vec![false; workers];
    while running > 0 {
        for rank in 0..workers {
            if done[rank] {
                continue;
            }
            let waited = children[rank].try_wait();
            match waited {
                Ok(None) => {}
                Ok(Some(status)) if status.success() => {
                    done[rank] = true;
                    running -= 1;
                }
                Ok(Some(status)) => {
                    stop_all(&mut children);
                    return Err(LaunchError::Failed {
                        rank,
                        workers,
                        status,
                    });
                }
                Err(cause) => {
                    stop_all(&mut children);
                    return Err(LaunchError::Wait { rank, cause });
                }
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Kills and reaps every worker still running.
fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// A port nothing listens on now (the OS picks it; a race with another program taking it
/// before rank 0 binds is possible but rare, and ends in a clear rendezvous error).
fn free_local_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    #[test]
    fn every_worker_gets_its_rank_and_the_world() {
        let tmp = tempfile::tempdir().unwrap();
        let script = format!(
            "echo $RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR > {}/$RANK",
            tmp.path().display()
        );
        run_local_workers(3, Path::new("/bin/sh"), &sh(&script)).unwrap();
        for rank in 0..3 {
            let seen = std::fs::read_to_string(tmp.path().join(rank.to_string())).unwrap();
            assert_eq!(seen.trim(), format!("{rank} {rank} 3 127.0.0.1"));
        }
    }

    #[test]
    fn a_failing_worker_stops_the_others() {
        // Rank 1 fails at once; rank 0 would wait for a peer for ever.
        let script = "if [ $RANK = 1 ]; then exit 3; fi; sleep 600";
        let started = std::time::Instant::now();
        let err = run_local_workers(2, Path::new("/bin/sh"), &sh(script)).unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Failed {
                    rank: 1,
                    workers: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
