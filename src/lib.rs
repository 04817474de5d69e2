//! qstore: one compact blob per model, served as INT8 and as its original high precision.

pub mod api;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod format;
pub mod repo;
pub mod safetensors;
pub mod server;
pub mod storage;
pub mod synth;
