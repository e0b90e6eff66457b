//! Longest-prefix match from an IPv4 address to a value (the peer that owns the range).
//!
//! One hash map per distinct prefix length, longest first: a lookup costs one hash per length
//! in use, which in an overlay of one /24 per node is one or two.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The network address of `address/prefix_len` (host bits cleared).
pub(crate) fn network(address: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(address) & mask(prefix_len))
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        len => u32::MAX << (32 - u32::from(len.min(32))),
    }
}

/// A table from IPv4 ranges to values, answering longest-prefix-match lookups.
#[derive(Debug, Clone)]
pub(crate) struct AllowedIps<T> {
    /// Prefix length, its mask, and the networks of that length; longest prefix first.
    by_len: Vec<(u8, u32, HashMap<u32, T>)>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps { by_len: Vec::new() }
    }
}

impl<T> AllowedIps<T> {
    /// Routes `address/prefix_len` to `value`, replacing what held that exact range.
    pub(crate) fn insert(&mut self, address: Ipv4Addr, prefix_len: u8, value: T) {
        let prefix_len = prefix_len.min(32);
        let position = match self.by_len.iter().position(|(len, ..)| *len <= prefix_len) {
            Some(position) if self.by_len[position].0 == prefix_len => position,
            Some(position) => {
                let entry = (prefix_len, mask(prefix_len), HashMap::new());
                self.by_len.insert(position, entry);
                position
            }
            None => {
                self.by_len
                    .push((prefix_len, mask(prefix_len), HashMap::new()));
                self.by_len.len() - 1
            }
        };
        let network = u32::from(address) & self.by_len[position].1;
        self.by_len[position].2.insert(network, value);
    }

    /// The value of the longest range holding `address`.
    #[inline]
    pub(crate) fn lookup(&self, address: Ipv4Addr) -> Option<&T> {
        let address = u32::from(address);
        self.by_len
            .iter()
            .find_map(|(_, mask, networks)| networks.get(&(address & mask)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &AllowedIps<&'static str>, address: [u8; 4], expected: Option<&str>) {
        let found = table.lookup(Ipv4Addr::from(address)).copied();
        assert_eq!(found, expected, "lookup of {address:?}");
    }

    #[test]
    fn longest_prefix_wins() {
        let mut table = AllowedIps::default();
        table.insert(Ipv4Addr::new(10, 42, 0, 0), 16, "overlay");
        table.insert(Ipv4Addr::new(10, 42, 2, 9), 24, "node-b");
        table.insert(Ipv4Addr::new(10, 42, 2, 7), 32, "service");
        table.insert(Ipv4Addr::new(0, 0, 0, 0), 0, "default");
        check(&table, [10, 42, 2, 7], Some("service"));
        check(&table, [10, 42, 2, 8], Some("node-b"));
        check(&table, [10, 42, 3, 1], Some("overlay"));
        check(&table, [192, 168, 1, 1], Some("default"));
    }

    #[test]
    fn miss_and_replace() {
        let mut table = AllowedIps::default();
        table.insert(Ipv4Addr::new(10, 42, 1, 0), 24, "a");
        check(&table, [10, 42, 2, 1], None);
        table.insert(Ipv4Addr::new(10, 42, 1, 200), 24, "b");
        check(&table, [10, 42, 1, 1], Some("b"));
    }

    #[test]
    fn network_clears_host_bits() {
        assert_eq!(
            network(Ipv4Addr::new(10, 42, 7, 9), 16),
            Ipv4Addr::new(10, 42, 0, 0)
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 42, 7, 9), 0),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 42, 7, 9), 32),
            Ipv4Addr::new(10, 42, 7, 9)
        );
    }
}
