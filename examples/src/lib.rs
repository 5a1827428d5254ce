//! Examples for ft. Run the main one with `cargo run --release --example failover`.
