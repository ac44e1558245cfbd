//! Exit codes (Docker's conventions) and the error that carries one.

/// The runtime itself failed (bad flag, missing rootfs, setup error).
pub const EXIT_RUNTIME: i32 = 125;
/// The command exists but cannot be executed.
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The command does not exist in the container.
pub const EXIT_NOT_FOUND: i32 = 127;

/// An error that decides the process's exit code.
#[derive(Debug)]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl ExitError {
    pub fn new(code: i32, message: impl Into<String>) -> ExitError {
        ExitError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

/// The exit code an error should end the process with.
pub fn code_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ExitError>())
        .map(|e| e.code)
        .unwrap_or(EXIT_RUNTIME)
}
