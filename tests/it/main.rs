//! End-to-end tests: one binary, a module per area (see tests/it/helpers.rs for shared tools).

mod cli;
mod client;
mod codegen;
mod corruption;
mod deployment;
mod disk;
mod fuzz_corpus;
mod helpers;
mod hf_client;
mod hub;
mod inputs;
mod load;
mod memory;
mod needs;
mod old_blobs;
mod process;
mod push;
mod ranges;
mod real_weights;
mod roundtrip;
mod server;
mod web;
mod xet;
