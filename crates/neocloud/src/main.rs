//! `neocloud`: the control plane (`serve`) and the command-line client in one binary.

mod admin;
mod cli;
mod serve;
mod sim;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: a request allocates and frees dozens of small
/// values (headers, JSON, the answer), and glibc's malloc took about a sixth of the CPU of
/// a heartbeat (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => return ExitCode::from(cli::report_parse_error(&e, json_asked())),
    };
    let json = args.json_errors();
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(cli::report(&e, json)),
    }
}

/// Whether the raw arguments ask for JSON output (for errors found while parsing them).
fn json_asked() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "-ojson"
            || a == "--output=json"
            || ((a == "-o" || a == "--output") && args.get(i + 1).is_some_and(|n| n == "json"))
    })
}
