fn main() {
    chatlake_cli::main()
}
