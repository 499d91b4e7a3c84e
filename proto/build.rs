//! Compiles the `.proto` files with protox (pure Rust), so building tvaers
//! needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tvaers/v1/notice.proto",
        "tvaers/v1/local_api.proto",
        "tvaers/v1/admin_api.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The derived Debug would print the CPR number and health details;
        // lib.rs implements a redacting one instead.
        .skip_debug([
            "tvaers.v1.Notice",
            "tvaers.v1.SignedEnvelope",
            "tvaers.v1.SignedReceipt",
            "tvaers.v1.CareTeamRequest",
            "tvaers.v1.AuditEntriesRequest",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
