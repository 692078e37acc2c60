//! Fanning out on one machine: `runner` starts one worker process per GPU itself (or
//! `--nproc-per-node` of them), as torchrun would, so that a one-machine multi-GPU run needs
//! no launcher. In: a worker count and the command line to run. Out: the workers' combined
//! outcome: success when every worker succeeds; otherwise the first failure, after the other
//! workers are stopped (none is left waiting for a dead peer).
//!
//! Also several runs at once ([`run_jobs`]: `runner --jobs N`): one `runner` process per run,
//! at most N at a time, each ending on its own.
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

/// How one job of [`run_jobs`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub name: String,
    /// Its error: what it printed from its first line starting with `error:` on, or its exit
    /// status when it printed none.
    pub result: Result<(), String>,
}

/// Runs `program args_for(name)` for each of `names`, at most `jobs` at once, with stdout
/// and stdin closed and stderr kept for the error; one job failing does not stop the others.
/// Job `i` starts only after the jobs `waits[i]` have finished, and ends failed without
/// starting when one of them failed. `ended` hears of each job as it ends; the ends come back
/// in the order of `names`.
pub fn run_jobs(
    program: &Path,
    names: &[String],
    waits: &[Vec<usize>],
    args_for: &dyn Fn(&str) -> Vec<OsString>,
    jobs: usize,
    ended: &mut dyn FnMut(&JobEnd),
) -> Vec<JobEnd> {
    let mut started = vec![false; names.len()];
    let mut running: Vec<(usize, Child, std::thread::JoinHandle<String>)> = Vec::new();
    let mut ends: Vec<Option<JobEnd>> = vec![None; names.len()];
    let mut finish = |index: usize, result: Result<(), String>, ends: &mut Vec<Option<JobEnd>>| {
        let end = JobEnd {
            name: names[index].clone(),
            result,
        };
        ended(&end);
        ends[index] = Some(end);
    };
    loop {
        // Jobs whose waits have ended: a failed wait ends them too, and frees nothing.
        loop {
            let ended_ok = |j: usize| ends[j].as_ref().map(|e| e.result.is_ok());
            let failed_wait = (0..names.len()).find_map(|i| {
                let failed = waits[i].iter().find(|&&j| ended_ok(j) == Some(false))?;
                (!started[i]).then_some((i, *failed))
            });
            let Some((index, failed)) = failed_wait else {
                break;
            };
            started[index] = true;
            finish(
                index,
                Err(crate::stage::order::not_run_because(&names[failed])),
                &mut ends,
            );
        }
        while running.len() < jobs.max(1) {
            let ready = (0..names.len()).find(|&i| {
                !started[i]
                    && waits[i]
                        .iter()
                        .all(|&j| ends[j].as_ref().is_some_and(|e| e.result.is_ok()))
            });
            let Some(index) = ready else { break };
            started[index] = true;
            let spawned = Command::new(program)
                .args(args_for(&names[index]))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn();
            match spawned {
                Ok(mut child) => {
                    let mut stderr = child.stderr.take().expect("stderr is piped");
                    let reader = std::thread::spawn(move || {
                        let mut text = String::new();
                        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                        text
                    });
                    running.push((index, child, reader));
                }
                Err(cause) => finish(
                    index,
                    Err(format!("cannot start {}: {cause}", program.display())),
                    &mut ends,
                ),
            }
        }
        if running.is_empty() {
            break;
        }
        let mut still = Vec::with_capacity(running.len());
        for (index, mut child, reader) in running {
            match child.try_wait() {
                Ok(None) => still.push((index, child, reader)),
                Ok(Some(status)) => {
                    let stderr = reader.join().unwrap_or_default();
                    let result = match status.success() {
                        true => Ok(()),
                        false => Err(printed_error(&stderr).unwrap_or_else(|| status.to_string())),
                    };
                    finish(index, result, &mut ends);
                }
                Err(cause) => finish(index, Err(format!("waiting for it: {cause}")), &mut ends),
            }
        }
        running = still;
        std::thread::sleep(POLL);
    }
    ends.into_iter()
        .map(|end| end.expect("every job ends"))
        .collect()
}

/// What a `runner` printed from its first `error:` line on, without that prefix.
fn printed_error(stderr: &str) -> Option<String> {
    let start = stderr.find("error: ")?;
    let text = stderr[start + "error: ".len()..].trim_end();
    Some(text.to_string())
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
    fn jobs_run_at_most_n_at_once_after_what_they_wait_for_and_a_failure_stops_none() {
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["c", "a", "b", "fail", "after_fail"]
            .map(String::from)
            .to_vec();
        // c waits for a, after_fail for fail.
        let waits = vec![vec![1], vec![], vec![], vec![], vec![3]];
        // Each job notes how many jobs run beside it (files present while it runs), and which
        // jobs had finished when it started.
        let dir = tmp.path().display().to_string();
        let args_for = |name: &str| {
            sh(&format!(
                "ls {dir} | grep done | tr '\\n' ' ' > {dir}/before.{name}; \
                 touch {dir}/running.{name}; sleep 0.3; ls {dir} | grep -c running > {dir}/seen.{name}; \
                 rm {dir}/running.{name}; touch {dir}/done.{name}; \
                 if [ {name} = fail ]; then echo 'warn: x' >&2; echo 'error: it broke: disk' >&2; exit 2; fi"
            ))
        };
        let mut heard = Vec::new();
        let ends = run_jobs(
            Path::new("/bin/sh"),
            &names,
            &waits,
            &args_for,
            2,
            &mut |end| heard.push(end.name.clone()),
        );
        let results: Vec<(&str, Result<(), String>)> = ends
            .iter()
            .map(|e| (e.name.as_str(), e.result.clone()))
            .collect();
        assert_eq!(
            results,
            [
                ("c", Ok(())),
                ("a", Ok(())),
                ("b", Ok(())),
                ("fail", Err("it broke: disk".to_string())),
                (
                    "after_fail",
                    Err("not run: it waits for run fail, which failed".to_string())
                ),
            ]
        );
        heard.sort();
        assert_eq!(heard, ["a", "after_fail", "b", "c", "fail"]);
        let read = |file: String| std::fs::read_to_string(tmp.path().join(file)).unwrap();
        assert!(
            read("before.c".into()).contains("done.a"),
            "c started before a ended"
        );
        assert!(!tmp.path().join("before.after_fail").exists());
        for name in ["a", "b", "c", "fail"] {
            let seen: usize = read(format!("seen.{name}")).trim().parse().unwrap();
            assert!((1..=2).contains(&seen), "{name} ran beside {seen} jobs");
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
