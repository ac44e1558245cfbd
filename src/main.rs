//! rootless_container: parse, run, print the error, exit with the right code.

mod cgroup;
mod cli;
mod engine;
mod exit;
mod network;
mod spec;
mod state;
mod util;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if cli.needs_sealed_exe() {
        if let Err(e) = engine::seal::ensure_sealed_exe() {
            eprintln!("rootless_container: {e:#}");
            std::process::exit(exit::EXIT_RUNTIME);
        }
    }
    let code = match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rootless_container: {e:#}");
            exit::code_of(&e)
        }
    };
    std::process::exit(code);
}
