//! The `command` executor: run a program once per job with the webhook payload on
//! stdin and the job described in `AOF_*` environment variables.
//!
//! Environment: `AOF_EVENT`, `AOF_ACTION`, `AOF_REPO`, `AOF_DELIVERY_ID`,
//! `AOF_EVENT_ID`, `AOF_JOB_ID`, `AOF_ATTEMPT`, `AOF_TARGET`, `AOF_TARGET_KIND`,
//! `AOF_TRIGGER`, `AOF_PARAMS` (JSON), and `AOF_CTX_<NAME>` for every context
//! variable (name upper-cased). Exit 0 → the job completes with stdout (truncated to
//! [`MAX_OUTPUT`]) as result; any other exit → a retryable failure carrying the exit
//! status and the tail of stderr; past the timeout the process is killed and the
//! attempt fails (retryable).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{ExecError, JobInput};

/// Largest result kept from stdout.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// stderr kept in a failure message.
const STDERR_TAIL: usize = 2048;

/// The environment a job's program gets.
pub fn job_env(job: &JobInput) -> Vec<(String, String)> {
    let ctx = |k: &str| job.context.get(k).cloned().unwrap_or_default();
    let mut env = vec![
        ("AOF_EVENT".to_string(), job.event.clone()),
        ("AOF_ACTION".to_string(), ctx("action")),
        ("AOF_REPO".to_string(), ctx("repo_full_name")),
        ("AOF_DELIVERY_ID".to_string(), job.delivery_id.clone()),
        ("AOF_EVENT_ID".to_string(), job.event_id.to_string()),
        ("AOF_JOB_ID".to_string(), job.job_id.clone()),
        ("AOF_ATTEMPT".to_string(), job.attempt.to_string()),
        ("AOF_TARGET".to_string(), job.target.clone()),
        ("AOF_TARGET_KIND".to_string(), job.target_kind.clone()),
        ("AOF_TRIGGER".to_string(), job.trigger.clone()),
        ("AOF_PARAMS".to_string(), job.params_json.clone()),
    ];
    for (k, v) in &job.context {
        let name: String = k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        env.push((format!("AOF_CTX_{name}"), v.clone()));
    }
    env
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Run `argv` for `job`, bounded by `timeout`.
pub async fn run(argv: &[String], job: &JobInput, timeout: Duration) -> Result<String, ExecError> {
    let (program, args) = argv.split_first().ok_or_else(|| ExecError::permanent("empty command"))?;
    let mut child = Command::new(program)
        .args(args)
        .envs(job_env(job))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::retryable(format!("cannot start {program:?}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = job.payload.clone();
    let feed = tokio::spawn(async move {
        // A program that does not read its stdin is fine: ignore broken pipes.
        let _ = stdin.write_all(&payload).await;
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let read_out = async {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(MAX_OUTPUT as u64).read_to_end(&mut buf).await;
        // Drain the rest so the child never blocks on a full pipe.
        let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        buf
    };
    let read_err = async {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    };
    let run = async { tokio::join!(child.wait(), read_out, read_err) };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok((status, out, err)) => (status, out, err),
        Err(_) => {
            let _ = child.kill().await;
            feed.abort();
            return Err(ExecError::retryable(format!("{program:?} ran longer than {} s and was killed", timeout.as_secs())));
        }
    };
    feed.abort();
    let status = status.map_err(|e| ExecError::retryable(format!("waiting for {program:?}: {e}")))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(ExecError::retryable(format!("{program:?} exited with {status}: {}", tail(&err, STDERR_TAIL))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobInput {
        JobInput {
            job_id: "7-0".into(),
            event: "push".into(),
            context: [("repo_full_name".to_string(), "acme/api".to_string()), ("pr-number".to_string(), "3".to_string())].into(),
            payload: b"{\"hello\":1}".to_vec(),
            ..Default::default()
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn payload_on_stdin_env_vars_and_stdout_result() {
        let out = run(&sh("cat; echo \" $AOF_REPO $AOF_JOB_ID $AOF_CTX_PR_NUMBER\""), &job(), Duration::from_secs(10)).await.unwrap();
        assert_eq!(out.trim(), "{\"hello\":1} acme/api 7-0 3");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_retryable_failure_with_stderr() {
        let e = run(&sh("echo boom >&2; exit 3"), &job(), Duration::from_secs(10)).await.unwrap_err();
        assert!(e.retryable && e.message.contains("boom") && e.message.contains('3'), "{e:?}");
    }

    #[tokio::test]
    async fn timeout_kills_the_program() {
        let started = std::time::Instant::now();
        let e = run(&sh("sleep 30"), &job(), Duration::from_millis(300)).await.unwrap_err();
        assert!(e.retryable && e.message.contains("killed"), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn missing_program_is_reported() {
        let e = run(&["/nonexistent/prog".to_string()], &job(), Duration::from_secs(1)).await.unwrap_err();
        assert!(e.message.contains("cannot start"), "{e:?}");
    }
}
