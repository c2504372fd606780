//! A job never sees the runner's credentials: set them in this process, run a job
//! that prints its environment. (One test in this binary: it changes the process
//! environment before anything else runs.)

use std::collections::BTreeMap;
use std::time::Duration;

use aof_contract::jobenv::{EnvPolicy, Job};
use aof_contract::process::{self, Killer, Spec};

#[test]
fn a_job_gets_the_contract_and_the_allow_list_and_no_credentials() {
    for (k, v) in [
        ("GITHUB_TOKEN", "ghp_from_the_runner"),
        ("GH_TOKEN", "ghp_from_the_runner"),
        ("GITHUB_WEBHOOK_SECRET", "whsec_from_the_runner"),
        ("AOF_ADMIN_TOKEN", "admin_from_the_runner"),
        ("AOF_WORKER_TOKEN", "worker_from_the_runner"),
        ("MY_APP_TOKEN", "named_by_the_runner"),
        ("SSL_CERT_FILE", "/etc/ssl/cert.pem"),
        ("LC_ALL", "C"),
        ("TZ", "UTC"),
    ] {
        std::env::set_var(k, v);
    }
    let context: BTreeMap<String, String> = [("repo_full_name", "acme/api"), ("pr_number", "3")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let job = Job {
        event: "pull_request",
        delivery_id: "d-1",
        event_id: 9,
        job_id: "9-0",
        attempt: 1,
        target: "reviewer",
        target_kind: "agent",
        trigger: "prs",
        params_json: "{\"model\":\"x\"}",
        worker_id: "w-1",
        fencing_token: 2304,
        traceparent: "",
        context: &context,
    };
    let policy = EnvPolicy::new(&["SSL_CERT_FILE", "MY_APP_TOKEN"])
        .unwrap()
        .deny(["MY_APP_TOKEN"]);
    let spec = Spec::new(
        vec!["env".into()],
        policy.environment(&job),
        Vec::new(),
        Duration::from_secs(30),
    );
    let f = process::run(&spec, &Killer::new()).unwrap();
    assert!(f.success(), "{f:?}");
    let out = f.result_text();
    let env: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    for never in [
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GITHUB_WEBHOOK_SECRET",
        "AOF_ADMIN_TOKEN",
        "AOF_WORKER_TOKEN",
        "MY_APP_TOKEN",
    ] {
        assert!(!env.contains_key(never), "{never} reached the job: {out}");
    }
    assert!(
        !out.contains("_from_the_runner") && !out.contains("named_by_the_runner"),
        "{out}"
    );
    assert_eq!(
        env.get("PATH").copied(),
        std::env::var("PATH").ok().as_deref()
    );
    assert_eq!(env.get("LC_ALL"), Some(&"C"));
    assert_eq!(env.get("TZ"), Some(&"UTC"));
    assert_eq!(env.get("SSL_CERT_FILE"), Some(&"/etc/ssl/cert.pem"));
    assert_eq!(env.get("AOF_JOB_ID"), Some(&"9-0"));
    assert_eq!(env.get("AOF_REPO"), Some(&"acme/api"));
    assert_eq!(env.get("AOF_CTX_PR_NUMBER"), Some(&"3"));
    assert_eq!(env.get("AOF_FENCING_TOKEN"), Some(&"2304"));
    assert_eq!(env.get("AOF_PARAMS"), Some(&"{\"model\":\"x\"}"));
}
