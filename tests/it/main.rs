//! The integration tests, as one crate (one link, one test binary, all tests scheduled together).
//! Each module is one area; `support` holds what they share (fixtures, the binary runner, the
//! daemon harness, the detection comparator, the metrics reader, bounded waits).

mod support;

mod artifact;
mod backends;
mod bench;
mod browser_harness;
mod cli_detect;
mod console;
mod daemon;
mod daemon_bad_input;
mod daemon_load;
mod doctor;
mod early_answers;
mod events;
mod guided;
mod int8;
mod library_guard;
mod make_run;
mod model_pull;
mod mqtt;
mod openvino;
mod optimize;
mod parity;
mod query_sets;
mod runtime;
mod streams;
mod streams_hostile;
mod tokenizer;
mod tracking;
mod ui;
mod webhooks;
