//! `shardgate`: the sidecar gateway and the publisher CLI, thin over the
//! `shardgate` engine crate.

mod cmd;
mod progress;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_tracing(cli.verbose);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One clear line, never a panic or a backtrace.
            eprintln!("error: {}", cmd::one_line(&e));
            std::process::ExitCode::from(cmd::exit_code(&e))
        }
    }
}
