//! Plain-text tables for people: a header row in capitals, columns padded to their widest
//! cell, two spaces between columns, no trailing spaces.

/// A table being filled row by row.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (idx, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if idx > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key-value lines with the keys padded to one width, for `inspect`-style output.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {value}\n"))
        .collect()
}

/// How long ago `then_ms` was, in the largest whole unit: `45s`, `12m`, `5h`, `3d`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// YAML for people, in field order, without empty defaults (see [`prune_defaults`]), with
/// enums as maps of one key (see [`to_yaml_value`]).
///
/// # Errors
/// Values that do not serialize.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let mut value = to_yaml_value(value)?;
    prune_defaults(&mut value);
    Ok(serde_norway::to_string(&value)?)
}

/// The YAML value of `value` with enums as maps of one key (`workload: {process: …}`) rather
/// than YAML tags, so that what `inspect` prints can be fed back to `warren apply`.
///
/// # Errors
/// Values that do not serialize.
pub fn to_yaml_value<T: serde::Serialize>(value: &T) -> anyhow::Result<serde_norway::Value> {
    Ok(serde_norway::with::singleton_map_recursive::serialize(
        value,
        serde_norway::value::Serializer,
    )?)
}

/// Drops nulls, empty lists and empty maps (recursively): in specs they all mean "the
/// default", and leaving them out keeps documents short.
pub fn prune_defaults(value: &mut serde_norway::Value) {
    use serde_norway::Value;
    match value {
        Value::Mapping(map) => {
            for (_, child) in map.iter_mut() {
                prune_defaults(child);
            }
            map.retain(|_, child| !is_empty(child));
        }
        Value::Sequence(items) => items.iter_mut().for_each(prune_defaults),
        Value::Tagged(tagged) => prune_defaults(&mut tagged.value),
        _ => {}
    }
}

fn is_empty(value: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match value {
        Value::Null => true,
        Value::Mapping(map) => map.is_empty(),
        Value::Sequence(items) => items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "REPLICAS", "NOTE"]);
        table.row(vec!["web".into(), "2/2".into(), String::new()]);
        table.row(vec!["metrics-agent".into(), "global".into(), "ok".into()]);
        table.row(vec!["short".into()]);
        assert_eq!(
            table.render(),
            "NAME           REPLICAS  NOTE\n\
             web            2/2\n\
             metrics-agent  global    ok\n\
             short\n"
        );
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(61_000, 1_000), "1m");
        assert_eq!(age(5_000, 1_000), "4s");
        assert_eq!(age(1_000, 5_000), "0s");
        assert_eq!(age(7_200_000, 0), "2h");
        assert_eq!(age(3 * 86_400_000, 0), "3d");
    }

    #[test]
    fn yaml_shows_enums_as_maps() {
        let spec = warren_api::ServiceSpec::new(
            warren_api::ServiceName::new("web").unwrap(),
            warren_api::Workload::Process(warren_api::ProcessSpec {
                command: vec!["sleep".into(), "1000".into()],
                working_dir: None,
            }),
        );
        let yaml = to_yaml(&spec).unwrap();
        assert!(
            yaml.contains("workload:\n  process:\n    command:"),
            "{yaml}"
        );
        assert!(!yaml.contains('!'), "{yaml}");
    }

    #[test]
    fn fields_pad_keys() {
        assert_eq!(
            fields(&[("name", "web".into()), ("version", "3".into())]),
            "name     web\nversion  3\n"
        );
    }
}
