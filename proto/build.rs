//! Compiles `proto/sluice/v1/*.proto` with tonic. `PROTOC` in the environment
//! overrides the vendored protoc binary.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    if std::env::var_os("PROTOC_INCLUDE").is_none() {
        let include = protoc_bin_vendored::include_path()?;
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC_INCLUDE", include) };
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sluice_v1_descriptor.bin"))
        .bytes(".sluice.v1")
        .compile_protos(&["proto/sluice/v1/sluice.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
