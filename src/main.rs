//! The `stowage` binary: parses the command line and hands over to the role.

use std::process::ExitCode;

use clap::Parser;
use stowage::cli::{Cli, Command, EXIT_USAGE};

fn main() -> ExitCode {
    // Before any thread exists (see the function).
    let _ = stowage::memory::one_heap();
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Simulate(args) => args.run(),
        Command::Version => {
            println!("stowage {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Controller(args) => block_on(args.run()),
        Command::Agent(args) => block_on(args.run()),
        Command::Extender(args) => block_on(args.run()),
        Command::Crds(args) => if args.cel {
            stowage::api::crds_cel_yaml()
        } else {
            stowage::api::crds_yaml()
        }
        .map(|yaml| print!("{yaml}"))
        .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<stowage::simulate::Error>().is_some()
                || err.downcast_ref::<stowage::agent::StartError>().is_some()
            {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn block_on(role: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(role))
}
