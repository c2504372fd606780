//! A minimal worker: prints each job it is given and completes it.
//!
//! ```sh
//! cargo run -p aof-client --example worker -- grpc://127.0.0.1:4001,grpc://127.0.0.1:4002 [TARGET]
//! ```
//!
//! The first argument is a comma-separated list of node gRPC endpoints (default
//! `grpc://127.0.0.1:4001`, the local cluster of `aofctl dev`); the optional second
//! one restricts the worker to one target (agent, fleet or flow name). The worker
//! token comes from `$AOF_WORKER_TOKEN` (the nodes accept a worker or admin token);
//! `$AOF_CA_FILE` names the CA of `grpcs://` endpoints. Ctrl-C stops it. Set
//! `RUST_LOG=aof_client=debug` to watch reconnects and heartbeats.

use aof_client::Worker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let endpoints: Vec<String> = args
        .next()
        .unwrap_or_else(|| "grpc://127.0.0.1:4001".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let targets: Vec<String> = args.next().into_iter().collect();

    let mut builder = Worker::builder(endpoints)
        .token(std::env::var("AOF_WORKER_TOKEN").unwrap_or_default());
    if let Some(ca) = std::env::var_os("AOF_CA_FILE") {
        builder = builder.ca_file(ca);
    }
    let mut worker = builder
        .worker_id(format!("example-worker-{}", std::process::id()))
        .targets(targets)
        .max_in_flight(4)
        .start()?;
    eprintln!(
        "waiting for jobs as {} (Ctrl-C to stop)",
        worker.worker_id()
    );
    loop {
        let lease = tokio::select! {
            lease = worker.next() => match lease {
                Some(lease) => lease,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                worker.stop();
                break;
            }
        };
        println!(
            "job {} (attempt {}) for {}: {} event {} of {} via trigger {}, {} payload bytes, params {}",
            lease.job_id(),
            lease.attempt(),
            lease.target(),
            lease.event(),
            lease.delivery_id(),
            lease.context().get("repo_full_name").map_or("-", String::as_str),
            lease.trigger(),
            lease.payload().len(),
            lease.params(),
        );
        for (k, v) in lease.context() {
            println!("    {k} = {v}");
        }
        let job = lease.job_id().to_string();
        match lease.complete("handled by the example worker").await {
            Ok(()) => println!("job {job} completed"),
            Err(e) => eprintln!("job {job}: {e}"),
        }
    }
    // The worker ends by itself only when every node refused its token.
    if let Some(e) = worker.error() {
        return Err(e.into());
    }
    Ok(())
}
