fn main() -> std::process::ExitCode {
    tfdc::cli::main()
}
