//! Feature alignment only: see this crate's Cargo.toml. There is no code here.
