//! The binary's subcommands, one file each: `serve` (the default),
//! `health` (a probe for Docker and Kubernetes) and `export`. `main.rs`
//! only parses the flags and picks one.

mod export;
mod health;
mod serve;

pub use export::export;
pub use health::health;
pub use serve::serve;
