//! Compiles `ces/v1/*.proto` with protox (pure Rust), so building CES never needs a `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ces/v1/envelope.proto", "ces/v1/event.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
