//! Compiles `proto/` with protox (pure Rust, so no system `protoc`), generates the
//! tonic/prost code from the resulting descriptors, and keeps the encoded
//! descriptor set (with comments) for gRPC server reflection.

use std::{env, fs, path::PathBuf};

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "minicrm/v1/operator.proto",
    "minicrm/v1/source.proto",
    "minicrm/v1/contact.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // Work trees of this repository may share one CARGO_TARGET_DIR, and so
    // this script's OUT_DIR (the package's hash leaves its path out). The
    // mtimes above cannot tell that another tree's protos were compiled last;
    // the directory cargo was started from can.
    println!("cargo:rerun-if-env-changed=PWD");

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    // Source info carries the comments, so `grpcurl describe` shows them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("minicrm_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
