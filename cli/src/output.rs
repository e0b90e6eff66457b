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

use std::io::Write;

use anyhow::Result;
use warren_api::rest::WriteResult;

use crate::client::Answer;

/// Writes `text` to stdout. When the reader has gone away (`warren service ls | head -1`), the
/// command ends quietly with status 0, as `ls | head` does, instead of panicking.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(error) = written
        && error.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Prints a read command's answer: the JSON body as the server sent it for `-o json`, or the
/// human rendering otherwise.
///
/// # Errors
/// A body that does not decode as `T`.
pub fn print_read<T: serde::de::DeserializeOwned>(
    format: OutputFormat,
    answer: &Answer,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        OutputFormat::Json => out(&format!("{}\n", answer.text())),
        OutputFormat::Table => out(&human(&answer.json::<T>()?)),
    }
    Ok(())
}

/// Prints a write's [`WriteResult`]: JSON for `-o json`, else one line built by `human`.
///
/// # Errors
/// A body that is not a `WriteResult`.
pub fn print_write(
    format: OutputFormat,
    answer: &Answer,
    human: impl FnOnce(&WriteResult) -> String,
) -> Result<()> {
    print_read(format, answer, |result: &WriteResult| {
        format!("{}\n", human(result))
    })
}

/// An error and its causes on one line, `outer: inner: root`, leaving out a cause whose text
/// the line already holds (some errors print their source themselves).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_line_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Err::<(), _>(io)
            .context("connect to 127.0.0.1:1: refused")
            .context("cannot reach")
            .unwrap_err();
        assert_eq!(
            one_line(&error),
            "cannot reach: connect to 127.0.0.1:1: refused"
        );
        let plain = anyhow::anyhow!("a").context("b");
        assert_eq!(one_line(&plain), "b: a");
    }
}
