use clap::Parser;

fn main() {
    let cli = qstore::cli::Cli::parse();
    if let Err(e) = qstore::cli::run(cli) {
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
