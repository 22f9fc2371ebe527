//! Compiles the gRPC API in `proto/` with protox (a pure-Rust protobuf compiler, so no
//! system `protoc` is needed) and writes the file descriptor set that server reflection
//! serves, so stock tools can call the daemon without our .proto files.

use prost::Message;
use std::path::PathBuf;

const PROTOS: [&str; 2] = ["dujiang/v1/inference.proto", "dujiang/v1/admin.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("dujiang_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
