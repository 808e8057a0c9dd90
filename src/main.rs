fn main() -> std::process::ExitCode {
    bookrec::cli::main()
}
