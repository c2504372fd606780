//! The `command` executor: run a program once per job with the webhook payload on
//! stdin and the job described in `AOF_*` environment variables.
//!
//! The rules are the shared ones of `aof-contract`, so a job runs here exactly as
//! under `aofctl worker`: the environment is [`aof_contract::jobenv`]'s (a cleared
//! environment, the allow-list of [`EnvPolicy`] — `spec.runtime.pass_env` adds
//! names — and the `AOF_*` variables), and [`aof_contract::process`] runs it (own
//! process group, bounded stdout/stderr, the whole group killed on timeout).
//!
//! Exit 0 → the job completes with stdout (first [`MAX_OUTPUT`] bytes) as result;
//! any other exit → a retryable failure carrying the exit status and the tail of
//! stderr; past the timeout the process group is killed and the attempt fails
//! (retryable).

use std::time::Duration;

use aof_contract::jobenv::EnvPolicy;
use aof_contract::process::{self, describe_exit, failure_message, Ended, Spec};

use super::{ExecError, JobInput};

/// Largest result kept from stdout.
pub use aof_contract::process::MAX_RESULT_BYTES as MAX_OUTPUT;

/// Run `argv` for `job`, bounded by `timeout`, with the environment `policy` allows.
pub async fn run(argv: &[String], job: &JobInput, timeout: Duration, policy: &EnvPolicy) -> Result<String, ExecError> {
    let program = argv.first().ok_or_else(|| ExecError::permanent("empty command"))?;
    let spec = Spec::new(argv.to_vec(), policy.environment(&job.env_job()), job.payload.clone(), timeout);
    // Dropping the future (the pool abandons the job at the end of a drain) kills
    // the command's process group.
    let running = process::start(spec).map_err(|e| ExecError::retryable(format!("cannot start {program:?}: {e}")))?;
    let finished = running.await.map_err(|e| ExecError::retryable(format!("cannot start {program:?}: {e}")))?;
    match &finished.ended {
        Ended::Exited(status) if status.success() => Ok(finished.result_text()),
        Ended::Exited(status) => {
            let what = format!("{program:?} exited with {}", describe_exit(*status));
            Err(ExecError::retryable(failure_message(&what, &finished.stderr)))
        }
        Ended::TimedOut => {
            let what = format!("{program:?} ran longer than {} s; its process group was killed", timeout.as_secs_f64());
            Err(ExecError::retryable(failure_message(&what, &finished.stderr)))
        }
        Ended::Killed => Err(ExecError::retryable(format!("{program:?} was killed"))),
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
            worker_id: "node1-builtin".into(),
            fencing_token: 2304,
            ..Default::default()
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn policy() -> EnvPolicy {
        EnvPolicy::default()
    }

    #[tokio::test]
    async fn payload_on_stdin_env_vars_and_stdout_result() {
        let script = "cat; echo \" $AOF_REPO $AOF_JOB_ID $AOF_CTX_PR_NUMBER $AOF_WORKER_ID $AOF_FENCING_TOKEN\"";
        let out = run(&sh(script), &job(), Duration::from_secs(10), &policy()).await.unwrap();
        assert_eq!(out.trim(), "{\"hello\":1} acme/api 7-0 3 node1-builtin 2304");
    }

    /// Sets the token in this test process: the job must not see it. (The variable
    /// is set once and never removed, so concurrent tests only ever see it set.)
    #[tokio::test]
    async fn the_job_environment_has_no_github_token_or_secrets() {
        std::env::set_var("GITHUB_TOKEN", "ghp_node_token_for_the_test");
        std::env::set_var("GITHUB_WEBHOOK_SECRET", "node_webhook_secret_for_the_test");
        std::env::set_var("AOF_EXECUTOR_TEST_TOKEN", "node_aof_token_for_the_test");
        std::env::set_var("AOF_EXECUTOR_TEST_EXTRA", "passed");
        let out = run(&sh("env"), &job(), Duration::from_secs(10), &policy()).await.unwrap();
        let names: Vec<&str> = out.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        assert!(names.contains(&"PATH") && names.contains(&"AOF_JOB_ID"), "{out}");
        for never in ["GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "AOF_EXECUTOR_TEST_TOKEN"] {
            assert!(!names.contains(&never), "{never} reached the job:\n{out}");
        }
        assert!(!out.contains("for_the_test"), "{out}");
        // Only the allow-list passes: a variable nobody allowed stays out too.
        assert!(!names.contains(&"AOF_EXECUTOR_TEST_EXTRA") && !names.iter().any(|n| n.starts_with("CARGO")), "{out}");
    }

    #[tokio::test]
    async fn operator_names_pass_but_secret_names_do_not() {
        std::env::set_var("EXECUTOR_TEST_TOOL_HOME", "/opt/tool");
        std::env::set_var("EXECUTOR_TEST_CONFIGURED_TOKEN", "secret");
        let policy = EnvPolicy::new(&["EXECUTOR_TEST_*"]).unwrap().deny(["EXECUTOR_TEST_CONFIGURED_TOKEN"]);
        let out = run(&sh("env"), &job(), Duration::from_secs(10), &policy).await.unwrap();
        assert!(out.contains("EXECUTOR_TEST_TOOL_HOME=/opt/tool"), "{out}");
        assert!(!out.contains("EXECUTOR_TEST_CONFIGURED_TOKEN"), "{out}");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_retryable_failure_with_stderr() {
        let e = run(&sh("echo boom >&2; exit 3"), &job(), Duration::from_secs(10), &policy()).await.unwrap_err();
        assert!(e.retryable && e.message.contains("boom") && e.message.contains("exit status 3"), "{e:?}");
    }

    #[tokio::test]
    async fn stderr_is_bounded() {
        let script = "head -c 10485760 /dev/zero | tr '\\0' x >&2; echo tail-of-stderr >&2; exit 1";
        let e = run(&sh(script), &job(), Duration::from_secs(60), &policy()).await.unwrap_err();
        assert!(e.message.contains("tail-of-stderr"), "{}", &e.message[e.message.len().saturating_sub(200)..]);
        assert!(e.message.len() < 4096, "the failure carries {} bytes", e.message.len());
        assert!(e.message.contains(&format!("{} earlier bytes dropped", (10 << 20) + 15 - 2048)), "{}", &e.message[..200]);
    }

    #[tokio::test]
    async fn timeout_kills_the_program_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let e = run(&sh(&script), &job(), Duration::from_millis(500), &policy()).await.unwrap_err();
        assert!(e.retryable && e.message.contains("killed"), "{e:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gone() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(), "the grandchild {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn missing_program_is_reported() {
        let e = run(&["/nonexistent/prog".to_string()], &job(), Duration::from_secs(1), &policy()).await.unwrap_err();
        assert!(e.message.contains("cannot start"), "{e:?}");
        let e = run(&[], &job(), Duration::from_secs(1), &policy()).await.unwrap_err();
        assert!(!e.retryable, "{e:?}");
    }
}
