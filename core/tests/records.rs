//! Records written by this release stay readable.
//!
//! `core/tests/fixtures/records/` holds, for each persisted type, the bytes this
//! release wrote (`<name>.bin`) and what they mean (`<name>.json`, the value as
//! JSON). Each must decode to its JSON and encode back to the same bytes. A layout
//! change that forgets its version bump and migration (see `aof_core::codec::Record`)
//! fails here, before it meets a real data dir.
//!
//! Regenerate after a deliberate new layout (keep the old files as
//! `<name>.v<N>.bin` / `.json` so the old layout stays covered):
//! `AOF_WRITE_RECORD_FIXTURES=1 cargo test -p aof-core --test records`.

use std::path::PathBuf;

use aof_core::codec::{self, Record};
use aof_core::github::facts::EventFacts;
use aof_core::sm::{self, controls, events, triggers, MemKv, Overlay};
use aof_core::types::{
    Command, Delivery, GrantRequest, QueuePolicy, Request, Response, TargetLimits, TriggerRecord,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/records")
}

/// A small deterministic history: a trigger, a delivery that makes a job, a grant,
/// a failed attempt, per-target limits.
struct History {
    kv: MemKv,
    index: u64,
    log: Vec<(Request, Response)>,
}

impl History {
    fn run(&mut self, time_ms: u64, cmd: Command) -> Response {
        self.index += 1;
        let req = Request { time_ms, cmd };
        let mut o = Overlay::new(&self.kv);
        let resp = sm::apply(&mut o, self.index, &req, Default::default());
        let w = o.into_writes();
        self.kv.commit(w);
        self.log.push((req, resp.clone()));
        resp
    }
}

/// The delivery of the history (its payload is short: stored plain).
fn delivery() -> Delivery {
    let facts = EventFacts {
        event: "push".into(),
        repo_full_name: Some("acme/api".into()),
        org: Some("acme".into()),
        ..Default::default()
    };
    Delivery {
        delivery_id: "d-1".into(),
        facts,
        payload: br#"{"ref":"refs/heads/main"}"#.to_vec(),
        received_by: 1,
        retention_ms: 3_600_000,
        traceparent: String::new(),
        signed_by: Default::default(),
    }
}

fn history() -> History {
    let mut h = History {
        kv: MemKv::default(),
        index: 0,
        log: Vec::new(),
    };
    let yaml = "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: ci}\nspec:\n  type: GitHub\n  config: {github_events: [push]}\n  default_agent: worker\n";
    let doc_json =
        aof_core::registry::canonical_trigger("ci", yaml.as_bytes()).expect("valid trigger");
    h.run(
        1_000,
        Command::PutTrigger {
            name: "ci".into(),
            doc_json,
            if_match: None,
        },
    );
    // The ingest command as the gateway proposes it (payload packed).
    h.run(2_000, Command::ingest(delivery()).into_command());
    let policy = QueuePolicy::default();
    let granted = h.run(
        3_000,
        Command::Grant(GrantRequest {
            worker_id: "w1".into(),
            targets: vec![],
            count: 1,
            policy,
        }),
    );
    let Response::Granted(leases) = granted else {
        panic!("{granted:?}")
    };
    let l = &leases[0];
    h.run(
        4_000,
        Command::Fail {
            job_id: l.job_id.clone(),
            token: l.token,
            error: "boom".into(),
            retryable: true,
            delay_ms: 0,
            policy,
        },
    );
    h.run(
        5_000,
        Command::SetTargetLimits {
            target: "worker".into(),
            limits: TargetLimits {
                max_in_flight: 2,
                pending_ttl_ms: 60_000,
            },
        },
    );
    h
}

/// Compare (or, with `AOF_WRITE_RECORD_FIXTURES=1`, write) one fixture.
fn check<T: Serialize + DeserializeOwned>(
    name: &str,
    bytes: Vec<u8>,
    value: &T,
    decode: impl Fn(&[u8]) -> Result<T, codec::CodecError>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    let (bin, json) = (
        dir().join(format!("{name}.bin")),
        dir().join(format!("{name}.json")),
    );
    if std::env::var_os("AOF_WRITE_RECORD_FIXTURES").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&bin, &bytes).unwrap();
        std::fs::write(&json, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
        return;
    }
    let stored = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate the fixtures, see the module docs)",
            bin.display()
        )
    });
    let meaning: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let decoded = decode(&stored).unwrap_or_else(|e| {
        panic!("{name}: a record written by this release no longer decodes: {e}")
    });
    assert_eq!(
        serde_json::to_value(&decoded).unwrap(),
        meaning,
        "{name}: the stored bytes decode to something else"
    );
    assert_eq!(
        encode(&decoded),
        stored,
        "{name}: the layout changed without a new version (see codec::Record)"
    );
}

fn record<T: Record>(name: &str, value: &T) {
    check(
        name,
        value.encode_record(),
        value,
        T::decode_record,
        T::encode_record,
    );
}

fn envelope<T: Serialize + DeserializeOwned>(name: &str, value: &T) {
    check(
        name,
        codec::encode(value),
        value,
        |b| codec::decode(b),
        |v| codec::encode(v),
    );
}

#[test]
fn records_written_by_this_release_decode() {
    let h = history();
    let trigger: TriggerRecord = triggers::get(&h.kv, "ci").expect("trigger");
    let event = events::get_event(&h.kv, 2 << 8).expect("event of log index 2");
    let job = events::get_job(&h.kv, &event.jobs[0]).expect("job");
    assert!(
        job.attempts > 0 && !job.history.is_empty(),
        "the job went through a grant and a failure: {job:?}"
    );
    let limits = controls::get_limits(&h.kv, "worker");
    assert_eq!(limits.max_in_flight, 2);
    record("trigger", &trigger);
    record("event", &event);
    record("job", &job);
    record("target_limits", &limits);
    // Log entries and their answers (the envelope under codec::FORMAT_VERSION).
    envelope("log_ingest_request", &h.log[1].0);
    envelope("log_ingest_response", &h.log[1].1);
    envelope("log_fail_request", &h.log[3].0);
    // A packed payload of the zstd layout (a body long enough to compress).
    let zstd = Request {
        time_ms: 2_000,
        cmd: Command::ingest_with(compressible_delivery(), sm::payload::Compression::Zstd)
            .into_command(),
    };
    envelope("log_ingest_request_zstd", &zstd);
}

fn compressible_delivery() -> Delivery {
    let mut d = delivery();
    d.payload = format!(
        "{{\"commits\":[{}{{}}]}}",
        "{\"message\":\"fix\"},".repeat(40)
    )
    .into_bytes();
    d
}

/// Log entries with payloads packed with LZ4 (layout 2, the default) and with zstd
/// (layout 3) decode, and their payloads unpack to the body that was sent.
#[test]
fn the_lz4_payload_layout_of_earlier_builds_reads() {
    let stored = std::fs::read(dir().join("log_ingest_request_lz4.bin")).unwrap();
    let decoded: Request = codec::decode(&stored).unwrap();
    let Command::IngestPacked(p) = decoded.cmd else {
        panic!("{decoded:?}")
    };
    assert_eq!(p.payload[0], 2, "the fixture holds an LZ4 record");
    let zstd: Request =
        codec::decode(&std::fs::read(dir().join("log_ingest_request_zstd.bin")).unwrap()).unwrap();
    let Command::IngestPacked(z) = zstd.cmd else {
        panic!("{zstd:?}")
    };
    assert_eq!(z.payload[0], 3, "the fixture holds a zstd record");
    assert_eq!(
        sm::payload::unpack(&z.payload).unwrap(),
        compressible_delivery().payload
    );
    assert_eq!(
        sm::payload::unpack(&p.payload).unwrap(),
        compressible_delivery().payload
    );
    assert_eq!(
        sm::payload::check(&p.payload, sm::payload::MAX_RAW_BYTES).unwrap(),
        compressible_delivery().payload.len() as u64
    );
}

/// The ingest command of earlier builds (layout 2, `IngestWebhook`, raw payload)
/// still decodes from their log entries, and applies to the same state as the
/// packed command this build proposes (layout 3, `IngestPacked`).
#[test]
fn the_ingest_layout_of_earlier_builds_decodes_and_migrates() {
    let h = history();
    let old = Request {
        time_ms: 2_000,
        cmd: Command::IngestWebhook(Box::new(delivery())),
    };
    envelope("log_ingest_request.v2", &old);
    let stored = std::fs::read(dir().join("log_ingest_request.v2.bin")).unwrap();
    let decoded: Request = codec::decode(&stored).unwrap();
    assert!(
        matches!(decoded.cmd, Command::IngestWebhook(_)),
        "{decoded:?}"
    );
    assert!(
        matches!(&h.log[1].0.cmd, Command::IngestPacked(_)),
        "this build proposes the packed layout: {:?}",
        h.log[1].0
    );
    // Replay the first two entries, once with the old ingest entry: same answers,
    // same state.
    let replay = |ingest: &Request| {
        let mut r = History {
            kv: MemKv::default(),
            index: 0,
            log: Vec::new(),
        };
        r.run(h.log[0].0.time_ms, h.log[0].0.cmd.clone());
        let resp = r.run(ingest.time_ms, ingest.cmd.clone());
        (resp, r.kv.0)
    };
    let (new_resp, new_state) = replay(&h.log[1].0);
    let (old_resp, old_state) = replay(&decoded);
    assert_eq!(old_resp, new_resp);
    assert_eq!(old_state, new_state);
}

#[test]
fn a_record_of_a_future_layout_is_refused_with_advice() {
    let mut bytes = TargetLimits {
        max_in_flight: 1,
        pending_ttl_ms: 0,
    }
    .encode_record();
    bytes[0] = 9;
    let e = TargetLimits::decode_record(&bytes).unwrap_err();
    assert!(
        e.to_string().contains("target limits record has version 9")
            && e.to_string().contains("upgrade"),
        "{e}"
    );
}
