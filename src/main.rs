//! The gru-serve binary: parse the flags, run the subcommand (`src/commands`).

use gru_serve::commands;
use gru_serve::config::{Args, Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse_or_exit();
    match &args.command {
        Some(Command::Health(probe)) => std::process::exit(commands::health(probe)?),
        Some(Command::Export(export)) => commands::export(export),
        None => {
            // First, while this is the only thread: it sets an environment
            // variable, which is sound only before any other thread runs
            // (the OTLP exporter's runtime, a CUDA context, the server's).
            gru_serve::init_compute_threads(args.compute_threads);
            commands::serve(&args)
        }
    }
}
