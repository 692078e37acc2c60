//! Pinning a measurement to N cores, so that "per core" and "1 → 2 cores" mean cores and not
//! threads: a pipeline's helper threads (the LMDB writer, the loader's consumer) and a child
//! process (the reference script) all run on the cores given, since Linux threads and forked
//! processes inherit the affinity of the thread that creates them.

use super::BenchError;

/// The CPUs this thread may run on, in order.
fn allowed_cpus() -> Result<Vec<usize>, BenchError> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(BenchError::Affinity {
            call: "sched_getaffinity",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn set_cpus(cpus: &[usize]) -> Result<(), BenchError> {
    // SAFETY: as above; CPU_SET writes inside the set for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(BenchError::Affinity {
            call: "sched_setaffinity",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How many cores this process may use.
pub fn available() -> Result<usize, BenchError> {
    Ok(allowed_cpus()?.len())
}

/// Refuses core counts this process cannot pin to, before a benchmark starts any work.
pub fn check(counts: &[usize]) -> Result<(), BenchError> {
    let available = available()?;
    match counts.iter().find(|&&n| n == 0 || n > available) {
        Some(&cores) => Err(BenchError::Cores { cores, available }),
        None => Ok(()),
    }
}

/// Runs `work` with the calling thread (and every thread or process it starts) confined to the
/// first `cores` allowed CPUs, then restores the previous affinity.
pub fn on_cores<T, E: From<BenchError>>(
    cores: usize,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    check(&[cores])?;
    let allowed = allowed_cpus()?;
    set_cpus(&allowed[..cores])?;
    let result = work();
    set_cpus(&allowed)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_confines_new_threads_and_is_undone() {
        let before = allowed_cpus().unwrap();
        let inside = on_cores(1, || {
            Ok::<_, BenchError>(
                std::thread::spawn(|| allowed_cpus().unwrap())
                    .join()
                    .unwrap(),
            )
        })
        .unwrap();
        assert_eq!(inside, before[..1]);
        assert_eq!(allowed_cpus().unwrap(), before);
        assert!(on_cores(before.len() + 1, || Ok::<_, BenchError>(())).is_err());
        assert!(check(&[1, before.len()]).is_ok());
        assert!(check(&[1, before.len() + 1]).is_err());
        assert!(check(&[0]).is_err());
    }
}
