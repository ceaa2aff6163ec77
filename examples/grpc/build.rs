//! Generates the Echo service's messages and tonic stubs from proto/echo.proto, with the protoc
//! shipped by `protoc-bin-vendored` (no protoc needs to be installed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build (prost-build) runs the protoc named by PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/echo.proto");
    tonic_prost_build::configure().compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
