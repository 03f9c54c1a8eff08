//! Generates the fedcrm.v1 gRPC code with a vendored `protoc`
//! (`protoc-bin-vendored`), so no machine needs a system protoc and the generated
//! code always matches `proto/fedcrm/v1/fedcrm.proto` (it is never committed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        &["proto/fedcrm/v1/fedcrm.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/fedcrm/v1/fedcrm.proto");
    Ok(())
}
