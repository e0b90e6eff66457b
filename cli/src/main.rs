//! `warren`: the one binary operators and nodes run.
//!
//! This crate (with `chaos`) is the only one that reads argv or the environment and prints to
//! stdout. It parses flags, layers configuration, sets up logging and formats output; the work
//! itself lives in the library crates.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod demo;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Warren: an edge-first agent mesh.
///
/// A small Raft control plane at a central site pushes desired state over QUIC (mutual TLS) to
/// agents on edge boxes, which keep their workloads running while cut off and converge when the
/// link returns.
#[derive(Debug, Parser)]
#[command(
    name = "warren",
    version,
    propagate_version = true,
    after_help = "Start with `warren demo` for a tour of what works today.\n\
                  Docs: docs/ in the source tree (ARCHITECTURE.md, transport.md)."
)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `warren_transport=debug`). Default: `warn`
    /// (`error` for `demo`, whose refusals are expected).
    #[arg(long, global = true, env = "WARREN_LOG")]
    log_level: Option<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scripted tour on loopback of what Warren does today; needs no root and exits 0.
    ///
    /// Creates a cluster CA, starts a control endpoint on 127.0.0.1, mints a single-use join
    /// token, joins an agent over QUIC (token + CSR -> certificate), talks to it over mutual TLS,
    /// and shows that a reused token, a forged token and a certificate from another cluster are
    /// all refused. Nothing is left behind.
    Demo(demo::DemoArgs),

    /// Print a shell completion script to stdout.
    ///
    /// Example: `warren completion bash > /etc/bash_completion.d/warren`
    Completion {
        /// The shell to generate for.
        shell: clap_complete::Shell,
    },
}

fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Demo(_) => "error",
        _ => "warn",
    };
    let level = cli.log_level.as_deref().unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    warren_transport::install_crypto_provider();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the context chain joined, as operators and scripts expect.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
