//! `warren_dns_queries_total{result}`: every query the handler sees, by what became of it.

use prometheus::{IntCounterVec, Opts, Registry};

/// What became of one query. The label set is closed (bounded cardinality).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryResult {
    /// A zone name with records of the asked type.
    Answered,
    /// A zone name that exists without records of the asked type (NOERROR, empty).
    NoData,
    /// A zone name that does not exist.
    NxDomain,
    /// Forwarded, and an upstream answered (whatever its response code).
    Forwarded,
    /// Forwarded, and no upstream answered in time: SERVFAIL.
    UpstreamError,
    /// Outside the zone with no upstream configured: SERVFAIL.
    NoUpstream,
    /// Outside the zone while the forwarding limit was reached: SERVFAIL.
    Busy,
    /// Not exactly one question: FORMERR.
    FormErr,
    /// An opcode other than QUERY: NOTIMP.
    NotImp,
    /// A zone name asked in a class other than IN: REFUSED.
    Refused,
}

impl QueryResult {
    /// Every result, for zero-filled series.
    pub const ALL: [QueryResult; 10] = [
        QueryResult::Answered,
        QueryResult::NoData,
        QueryResult::NxDomain,
        QueryResult::Forwarded,
        QueryResult::UpstreamError,
        QueryResult::NoUpstream,
        QueryResult::Busy,
        QueryResult::FormErr,
        QueryResult::NotImp,
        QueryResult::Refused,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryResult::Answered => "answered",
            QueryResult::NoData => "nodata",
            QueryResult::NxDomain => "nxdomain",
            QueryResult::Forwarded => "forwarded",
            QueryResult::UpstreamError => "upstream_error",
            QueryResult::NoUpstream => "no_upstream",
            QueryResult::Busy => "busy",
            QueryResult::FormErr => "formerr",
            QueryResult::NotImp => "notimp",
            QueryResult::Refused => "refused",
        }
    }
}

/// The DNS server's metrics.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    queries_total: IntCounterVec,
}

impl DnsMetrics {
    /// Creates the metrics and registers them on `registry` (the agent's, so they carry its
    /// `node` and `site` labels), every `result` series starting at 0.
    ///
    /// # Errors
    /// The registry already holds a metric of the same name.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queries_total = IntCounterVec::new(
            Opts::new(
                "warren_dns_queries_total",
                "DNS queries handled by the agent's resolver, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(queries_total.clone()))?;
        for result in QueryResult::ALL {
            queries_total.with_label_values(&[result.as_str()]);
        }
        Ok(DnsMetrics { queries_total })
    }

    /// Counts one query.
    pub fn count(&self, result: QueryResult) {
        self.queries_total
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// The count so far for `result` (tests, figures).
    pub fn get(&self, result: QueryResult) -> u64 {
        self.queries_total
            .with_label_values(&[result.as_str()])
            .get()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn every_result_is_exported_from_zero() {
        let registry = Registry::new();
        let metrics = DnsMetrics::register(&registry).expect("fresh registry");
        metrics.count(QueryResult::NxDomain);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        for result in QueryResult::ALL {
            assert!(
                text.contains(&format!("result=\"{}\"", result.as_str())),
                "{text}"
            );
        }
        assert!(
            text.contains("warren_dns_queries_total{result=\"nxdomain\"} 1"),
            "{text}"
        );
        assert!(DnsMetrics::register(&registry).is_err(), "registered twice");
    }
}
