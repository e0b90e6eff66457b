//! Raises the process's soft limit on open files to its hard limit at start.
//!
//! Distributions start services with a soft `nofile` of 1024, which a control node serving
//! thousands of agents, API clients and joins runs out of; once it has, `accept` fails until
//! connections close. The hard limit is what the administrator allows, so taking all of it
//! needs no privilege. The listeners still cap their connections and back off when `accept`
//! fails (`warren_transport::limits`); this only moves the point where that starts.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What [`raise_nofile`] did: the soft limit before and after (`None` = unlimited).
#[derive(Debug, PartialEq, Eq)]
pub struct NofileRaised {
    pub before: Option<u64>,
    pub after: Option<u64>,
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one.
///
/// # Errors
/// The `setrlimit` error (the process keeps its old limit).
pub fn raise_nofile() -> std::io::Result<NofileRaised> {
    let limit = getrlimit(Resource::Nofile);
    let target = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if limit.current != limit.maximum {
        setrlimit(Resource::Nofile, target)?;
    }
    Ok(NofileRaised {
        before: limit.current,
        after: getrlimit(Resource::Nofile).current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let raised = raise_nofile().unwrap();
        assert_eq!(raised.after, getrlimit(Resource::Nofile).maximum);
    }
}
