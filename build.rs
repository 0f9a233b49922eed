//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!()` embeds
//! `migrations/` at compile time, and cargo does not otherwise know to look there, so a new
//! migration would be missing from a binary built before it (sqlx's documented remedy).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
