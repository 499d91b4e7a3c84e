//! `sqlx::migrate!` embeds the migrations at compile time; this makes cargo
//! rebuild when one of them changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
