//! `warren version` and `warren --version`: which build this is (version, commit, target, build
//! date), the same facts as the `warren_build_info` metric.

use warren_api::build_info::{self, BuildInfo};

use crate::output::{self, OutputFormat};

/// This binary's build, from `build.rs`.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("WARREN_COMMIT"),
    target: env!("WARREN_TARGET"),
    built: env!("WARREN_BUILD_DATE"),
};

/// What `--version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WARREN_COMMIT"),
    ", ",
    env!("WARREN_TARGET"),
    ", built ",
    env!("WARREN_BUILD_DATE"),
    ")"
);

/// Records [`BUILD`] for the metrics (`warren_build_info`).
pub fn record() {
    build_info::set(BUILD);
}

/// Prints the build: one field per line, or JSON with `-o json`.
pub fn run(format: OutputFormat) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&BUILD)?),
        OutputFormat::Table => render(&BUILD),
    };
    output::out(&text);
    Ok(())
}

fn render(build: &BuildInfo) -> String {
    format!(
        "warren {}\ncommit:  {}\ntarget:  {}\nbuilt:   {}\n",
        build.version, build.commit, build.target, build.built
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_names_a_commit_a_target_and_a_date() {
        assert_eq!(BUILD.version, build_info::VERSION);
        assert!(
            BUILD.commit == "unknown"
                || (BUILD.commit.len() >= 7 && BUILD.commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{}",
            BUILD.commit
        );
        assert!(BUILD.target.contains("-linux-"), "{}", BUILD.target);
        // 2026-12-07T04:30:00Z
        let date = BUILD.built.as_bytes();
        assert_eq!(date.len(), 20, "{}", BUILD.built);
        assert_eq!((date[4], date[10], date[19]), (b'-', b'T', b'Z'));
        assert!(LONG_VERSION.contains(BUILD.commit) && LONG_VERSION.contains(BUILD.target));
        let text = render(&BUILD);
        assert!(
            text.starts_with(&format!("warren {}\n", BUILD.version)),
            "{text}"
        );
    }
}
