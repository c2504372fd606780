//! Generates the gRPC code from `proto/aof/v1/*.proto` with a vendored `protoc`, so
//! no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let files = ["proto/aof/v1/cluster.proto", "proto/aof/v1/queue.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
