//! The `chatlake` binary: everything lives in the chatlake-cli library.

fn main() -> std::process::ExitCode {
    chatlake_cli::main()
}
