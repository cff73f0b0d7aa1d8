//! `clawfleet`: a thin entry point; the work is in the `clawfleet_cli` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    clawfleet_cli::main()
}
