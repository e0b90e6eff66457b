//! Which CLI commands are writes, and what each changes: what the lost-write check and the
//! explanation of workload deaths follow.

use serde::{Deserialize, Serialize};

/// What a write did, as far as the invariant checks care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Write {
    /// `service create NAME … [--replicas N | --global]` (`replicas` is `None` for global
    /// services; a replicated service without `--replicas` has 1).
    Create {
        service: String,
        replicas: Option<u32>,
    },
    /// `service scale NAME N`
    Scale { service: String, replicas: u32 },
    /// `service update NAME …` (any spec change)
    Update { service: String },
    /// `service rm NAME`
    Remove { service: String },
    /// `node rm NAME`
    RemoveNode { node: String },
}

impl Write {
    /// The write a CLI command makes, if it is one the checks follow.
    pub fn of(words: &[String]) -> Option<Write> {
        let positional: Vec<&str> = positionals(words);
        match positional.as_slice() {
            ["service", "create", name, ..] => Some(Write::Create {
                service: (*name).to_owned(),
                replicas: if words.iter().any(|w| w == "--global") {
                    None
                } else {
                    Some(
                        flag_value(words, "--replicas")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1),
                    )
                },
            }),
            ["service", "scale", name, count, ..] => {
                count.parse().ok().map(|replicas| Write::Scale {
                    service: (*name).to_owned(),
                    replicas,
                })
            }
            ["service", "update", name, ..] => Some(Write::Update {
                service: (*name).to_owned(),
            }),
            ["service", "rm" | "remove", name, ..] => Some(Write::Remove {
                service: (*name).to_owned(),
            }),
            ["node", "rm" | "remove", name, ..] => Some(Write::RemoveNode {
                node: (*name).to_owned(),
            }),
            _ => None,
        }
    }

    /// The service it touches, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Write::Create { service, .. }
            | Write::Scale { service, .. }
            | Write::Update { service }
            | Write::Remove { service } => Some(service),
            Write::RemoveNode { .. } => None,
        }
    }
}

/// Flags of the service and node commands that take a value (so their values are not
/// mistaken for positional arguments).
const VALUE_FLAGS: &[&str] = &[
    "--command",
    "--image",
    "--replicas",
    "--site",
    "--constraint",
    "--env",
    "--env-rm",
    "--secret",
    "--port",
    "--health-http",
    "--health-tcp",
    "--health-exec",
    "--restart",
    "--on-disconnect",
    "--update-parallelism",
    "--update-delay",
    "--label",
    "--label-rm",
    "--output",
    "-o",
    "--timeout-ms",
    "--file",
    "-f",
];

fn positionals(words: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut skip = false;
    for word in words {
        if skip {
            skip = false;
            continue;
        }
        if word.starts_with('-') {
            skip = VALUE_FLAGS.contains(&word.as_str());
            continue;
        }
        out.push(word.as_str());
    }
    out
}

fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    words.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            words.get(i + 1).map(String::as_str)
        } else {
            w.strip_prefix(&prefix)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_recognised_from_cli_words() {
        let write = |text: &str| {
            let words = shell_words::split(text).expect("words");
            Write::of(&words)
        };
        assert_eq!(
            write("service create web --command 'sleep 100' --replicas 3"),
            Some(Write::Create {
                service: "web".into(),
                replicas: Some(3)
            })
        );
        assert_eq!(
            write("service create edge --command x --global"),
            Some(Write::Create {
                service: "edge".into(),
                replicas: None
            })
        );
        assert_eq!(
            write("service create --replicas=2 web --command x"),
            Some(Write::Create {
                service: "web".into(),
                replicas: Some(2)
            })
        );
        assert_eq!(
            write("service scale web 4"),
            Some(Write::Scale {
                service: "web".into(),
                replicas: 4
            })
        );
        assert_eq!(
            write("service rm web"),
            Some(Write::Remove {
                service: "web".into()
            })
        );
        assert_eq!(
            write("node rm a-1 --force"),
            Some(Write::RemoveNode { node: "a-1".into() })
        );
        assert_eq!(write("service ls -o json"), None);
        assert_eq!(write("cluster status"), None);
    }
}
