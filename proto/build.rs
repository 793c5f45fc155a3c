//! Generates the prost (and tonic) code for every `.proto` under `proto/`.
//!
//! protoc comes from the `protoc-bin-vendored` crate so that a fresh machine
//! (and CI) needs no system install of protobuf-compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    for f in [
        "proto/events.proto",
        "proto/raft.proto",
        "proto/etcd.proto",
        "proto/scheduler.proto",
        "proto/agent.proto",
        "proto/operator.proto",
        "proto/checkpoint.proto",
        "proto/tikv_log.proto",
        "proto/tikv/metapb.proto",
        "proto/tikv/pdpb.proto",
        "proto/tikv/kvrpcpb.proto",
        "proto/tikv/tikvpb.proto",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    // The log's schema: messages only. BTreeMap keeps encoding order
    // deterministic, which the state digest relies on.
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    config.compile_protos(&["proto/events.proto"], &["proto"])?;
    // Master <-> master: the messages alone (for crates without tonic) ...
    let messages = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("messages");
    std::fs::create_dir_all(&messages)?;
    prost_build::Config::new()
        .out_dir(&messages)
        .compile_protos(&["proto/raft.proto"], &["proto"])?;
    // ... and with tonic services (compiled in with the `grpc` feature).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/raft.proto"], &["proto"])?;
    // The master's client APIs (frameworks, agents, operators): tonic only,
    // reusing the log's message types for resources, states and the like.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .extern_path(".orrery.events.v1", "crate::events")
        .compile_protos(
            &[
                "proto/scheduler.proto",
                "proto/agent.proto",
                "proto/operator.proto",
            ],
            &["proto"],
        )?;
    // An agent's checkpoint records: messages only.
    prost_build::Config::new()
        .extern_path(".orrery.events.v1", "crate::events")
        .extern_path(".orrery.agent.v1", "crate::agent")
        .compile_protos(&["proto/checkpoint.proto"], &["proto"])?;
    // The TiKV backend's own records: messages only.
    prost_build::Config::new().compile_protos(&["proto/tikv_log.proto"], &["proto"])?;
    // A subset of PD's and TiKV's services, server only, for the in-process
    // test double the TiKV backend's tests run against.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_protos(
            &["proto/tikv/pdpb.proto", "proto/tikv/tikvpb.proto"],
            &["proto"],
        )?;
    // etcd's KV API, client only, for `orrery bench log`'s peer run.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&["proto/etcd.proto"], &["proto"])?;
    Ok(())
}
