//! Runs the bench-all matrix's commands side by side: each cell is its own `kedit` process, and
//! one process of the CPU backend keeps about one core busy (most of its matmuls are too small for
//! the matmul's own threads), so on a 2-core machine two cells at once take the wall time of one.
//! Results stay as they are: each cell writes its own JSONL, appended atomically.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// One command of the matrix.
pub struct Job {
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Where the command's stderr goes when jobs run side by side (their progress bars would
    /// overwrite each other on one terminal).
    pub log: PathBuf,
    /// The job that must finish first (MEND's runs need its trained archive).
    pub after: Option<usize>,
    /// Seconds it is expected to take on a 2-core CPU, for the order and the ETA.
    pub estimate_s: f64,
}

/// Wall seconds for `estimates` on `workers`, each worker taking the first ready job in order
/// (what [`run_all`] does).
pub fn makespan(estimates: &[f64], after: &[Option<usize>], workers: usize) -> f64 {
    let mut free = vec![0.0f64; workers.max(1)];
    let mut finish = vec![f64::NAN; estimates.len()];
    let mut pending: VecDeque<usize> = (0..estimates.len()).collect();
    while !pending.is_empty() {
        let (w, &t) = free
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("a worker");
        // The first job whose prerequisite is done by t; else the one that can start soonest.
        let ready_at = |j: usize| after[j].map_or(0.0, |d| finish[d]);
        let pick = pending
            .iter()
            .position(|&j| !ready_at(j).is_nan() && ready_at(j) <= t)
            .or_else(|| {
                pending
                    .iter()
                    .enumerate()
                    .filter(|(_, &j)| !ready_at(j).is_nan())
                    .min_by(|a, b| ready_at(*a.1).total_cmp(&ready_at(*b.1)))
                    .map(|(i, _)| i)
            })
            .expect("prerequisites come earlier in the list");
        let j = pending.remove(pick).expect("picked");
        let start = t.max(ready_at(j));
        finish[j] = start + estimates[j];
        free[w] = finish[j];
    }
    finish.iter().copied().fold(0.0, f64::max)
}

struct State {
    pending: VecDeque<usize>,
    done: Vec<bool>,
    failed: Option<String>,
    stdout: Vec<String>,
    estimated_done: f64,
}

/// Runs every job, `workers` at a time (one at a time: stderr straight to the terminal, as a
/// plain loop would), and returns each job's stdout in job order. After a failure no new job
/// starts; the ones running finish, and the error names the failed job's log.
pub fn run_all(jobs: &[Job], workers: usize) -> Result<Vec<String>> {
    let workers = workers.clamp(1, jobs.len().max(1));
    let total: f64 = jobs.iter().map(|j| j.estimate_s).sum();
    let bar = if workers > 1 {
        let b = ProgressBar::new(total.round() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {percent}% of the matrix, ETA {eta} {msg}",
            )
            .expect("template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let state = Mutex::new(State {
        pending: (0..jobs.len()).collect(),
        done: vec![false; jobs.len()],
        failed: None,
        stdout: vec![String::new(); jobs.len()],
        estimated_done: 0.0,
    });
    let wake = Condvar::new();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let j = {
                    let mut st = state.lock().expect("state");
                    loop {
                        if st.failed.is_some() || st.pending.is_empty() {
                            return;
                        }
                        let ready = st
                            .pending
                            .iter()
                            .position(|&j| jobs[j].after.is_none_or(|d| st.done[d]));
                        if let Some(i) = ready {
                            break st.pending.remove(i).expect("ready");
                        }
                        st = wake.wait(st).expect("state");
                    }
                };
                let t0 = Instant::now();
                let result = run_one(&jobs[j], workers > 1);
                let mut st = state.lock().expect("state");
                match result {
                    Ok(out) => {
                        st.done[j] = true;
                        st.stdout[j] = out;
                        st.estimated_done += jobs[j].estimate_s;
                        bar.set_position(st.estimated_done.round() as u64);
                        let finished = st.done.iter().filter(|d| **d).count();
                        let line = format!(
                            "xtask: [{finished}/{}] {} done in {:.0} s ({:.1} min so far)",
                            jobs.len(),
                            jobs[j].label,
                            t0.elapsed().as_secs_f64(),
                            started.elapsed().as_secs_f64() / 60.0
                        );
                        // A hidden bar (one worker, or stderr not a terminal: CI) prints nothing.
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                    Err(e) => {
                        st.failed.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                wake.notify_all();
            });
        }
    });
    bar.finish_and_clear();
    let st = state.into_inner().expect("state");
    if let Some(e) = st.failed {
        bail!("{e} (finished runs are kept: run the same command again to resume)");
    }
    Ok(st.stdout)
}

fn run_one(job: &Job, to_log: bool) -> Result<String> {
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args).current_dir(&job.cwd);
    cmd.envs(job.env.iter().map(|(k, v)| (k, v)));
    if !to_log {
        // One at a time: the plain loop it replaces, stderr (progress bars) to the terminal.
        return crate::run(&mut cmd);
    }
    if let Some(dir) = job.log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let log = std::fs::File::create(&job.log)
        .with_context(|| format!("{}: cannot create", job.log.display()))?;
    let out = cmd
        .stderr(log)
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        let text = std::fs::read_to_string(&job.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{} failed ({}); the end of its log {}:\n{}",
            job.label,
            out.status,
            job.log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makespan_fills_both_workers_and_waits_for_prerequisites() {
        // Two workers: 10 on one, 4 + 4 + 2 on the other.
        assert_eq!(makespan(&[10.0, 4.0, 4.0, 2.0], &[None; 4], 2), 10.0);
        // One worker: the sum.
        assert_eq!(makespan(&[10.0, 4.0, 4.0, 2.0], &[None; 4], 1), 20.0);
        // The last job needs the first: it starts at 10 although the other worker is free at 8.
        assert_eq!(
            makespan(&[10.0, 4.0, 4.0, 2.0], &[None, None, None, Some(0)], 2),
            12.0
        );
    }

    #[test]
    fn run_all_runs_every_job_and_keeps_the_order_of_their_output() {
        let dir = std::env::temp_dir().join(format!("xtask-jobs-{}", std::process::id()));
        let job = |i: usize, after: Option<usize>| Job {
            label: format!("job {i}"),
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!("sleep 0.{}; echo {i}", 3 - i % 3).into(),
            ],
            cwd: std::env::temp_dir(),
            env: vec![],
            log: dir.join(format!("{i}.log")),
            after,
            estimate_s: 1.0,
        };
        let jobs: Vec<Job> = (0..5)
            .map(|i| job(i, if i == 4 { Some(0) } else { None }))
            .collect();
        let out = run_all(&jobs, 2).unwrap();
        assert_eq!(out, ["0\n", "1\n", "2\n", "3\n", "4\n"]);
        let mut failing = job(9, None);
        failing.args = vec!["-c".into(), "echo boom >&2; exit 3".into()];
        let err = run_all(&[failing, job(1, None)], 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("job 9 failed") && err.contains("boom"),
            "the error names the job and shows its log: {err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
