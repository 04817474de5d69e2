use clap::Parser;

fn main() {
    let cli = qstore::cli::Cli::parse();
    let result = qstore::cli::run(cli);
    if std::env::var_os("QSTORE_REPORT_PEAK_RSS").is_some() {
        report_peak_rss();
    }
    if let Err(e) = result {
        // A reader that stopped early (`| head`) is not an error worth a message; exit the way
        // a process killed by SIGPIPE would.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(141);
        }
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// Prints this process's peak resident set (VmHWM), for checking the documented memory bounds.
/// Read from /proc rather than from the parent's getrusage, which on Linux also counts the
/// parent's memory when the child was spawned with vfork.
fn report_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!(
            "qstore: peak RSS {}",
            line.trim_start_matches("VmHWM:").trim()
        );
    }
}
