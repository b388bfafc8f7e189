//! `shardgate`: the sidecar gateway and the publisher CLI, thin over the
//! `shardgate` engine crate.

mod cmd;
mod progress;

use clap::Parser;

fn main() -> std::process::ExitCode {
    one_malloc_arena();
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

/// glibc's malloc gives threads their own arenas. Chunk buffers (256 KiB) are
/// allocated by one thread and freed by another when the hot tier evicts
/// them, and across arenas that strands freed memory: with 256 streams over a
/// 256 MiB hot tier, peak RSS was 363 to 376 MiB with the default arenas and
/// 316 MiB with one, and the cold path used less CPU per GB with one (see
/// BENCHMARKS.md). Small allocations keep their per-thread caches either way.
/// An operator's `MALLOC_ARENA_MAX` wins. Called before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; no other thread
        // exists yet to race it.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
