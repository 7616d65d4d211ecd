// Generates the tonic/prost code for lockd. protoc comes from protoc-bin-vendored so that a
// machine (or CI) without a system protobuf-compiler still builds.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = tonic_prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(cfg, &["proto/lockd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/lockd.proto");
    Ok(())
}
