//! rootless_container: parse, run, print the error, exit with the right code.

mod cgroup;
mod cli;
mod engine;
mod exit;
mod network;
mod spec;
mod state;
mod util;

fn main() {
    let cli = match <cli::Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0, as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, exit 125 (Docker's code for the runtime's own errors).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("rootless_container: {first}; see --help");
            std::process::exit(exit::EXIT_RUNTIME);
        }
    };
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
