//! Traces are exported over OTLP to a collector (here an in-process one) and one
//! trace follows a delivery from the gateway through Raft to the worker that runs
//! its job (the trace context travels in the lease).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aof_node::config::{DaemonConfig, ExecutorConfig, GithubConfig};
use aof_node::github::signature::sign;
use common::TestCluster;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Vec<u8>)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((s.name, s.trace_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_is_one_trace_from_webhook_to_job() {
    let collector = Collector::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap()
    });
    let telemetry = aof_node::telemetry::init("info", false, Some(&format!("http://{addr}")));
    assert!(telemetry.exporting());

    let c = TestCluster::start_with(1, 10_000, |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str("enabled: true\nwebhook_secret: s\n").unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.runtime.executors.insert("noop".into(), ExecutorConfig::Command { command: vec!["true".into()], timeout_secs: None });
    })
    .await;
    c.wait_ready(30).await;
    let r = c.http.put(c.nodes[0].url("/v1/triggers/all")).header("content-type", "application/yaml").body("apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {}\n  default_agent: noop\n").send().await.unwrap();
    assert!(r.status().is_success());
    let body = br#"{"repository":{"full_name":"acme/api"}}"#;
    let r = c
        .http
        .post(c.nodes[0].url("/webhook/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "traced-1")
        .header("x-hub-signature-256", sign(b"s", body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let mut done = false;
    for _ in 0..100 {
        if c.get_json(0, "/v1/deliveries/traced-1").await.1["status"] == "completed" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the job completes");
    drop(telemetry); // flushes the batch exporter

    let spans = collector.spans.lock().unwrap().clone();
    let find = |name: &str| spans.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap_or_else(|| panic!("no {name} span in {spans:?}"));
    let webhook = find("webhook");
    assert_eq!(find("job"), webhook, "the worker's span continues the delivery's trace");
    assert!(spans.iter().any(|(n, t)| n == "raft.write" && *t == webhook), "the Raft write is part of the trace");
}
