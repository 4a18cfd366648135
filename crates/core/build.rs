//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it reads
//! them: without this, a new or changed migration would not rebuild the crate, and a worker
//! would run with the schema of its last build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
