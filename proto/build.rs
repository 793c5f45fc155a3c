//! Generates the prost code for every `.proto` under `proto/`.
//!
//! protoc comes from the `protoc-bin-vendored` crate so that a fresh machine
//! (and CI) needs no system install of protobuf-compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let files = ["proto/events.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut config = prost_build::Config::new();
    // BTreeMap keeps encoding order deterministic, which the state digest relies on.
    config.btree_map(["."]);
    config.compile_protos(&files, &["proto"])?;
    Ok(())
}
