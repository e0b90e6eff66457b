//! Output formats shared by every read command: human tables by default, `-o json` for
//! programs.

use clap::ValueEnum;

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text and tables.
    #[default]
    Table,
    /// Machine-readable JSON on stdout.
    Json,
}
