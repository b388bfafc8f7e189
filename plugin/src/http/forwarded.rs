//! The client address of a request: the connection's peer, or, when the
//! peer is a trusted proxy (`server.trusted_proxies`), the address the
//! proxies forwarded in `X-Forwarded-For`.
//!
//! Each proxy appends the address it received the request from, so the list
//! is read from the right: trusted proxies are skipped, and the first address
//! that is not one is the client (everything left of it was written by the
//! client itself and proves nothing). From a peer that is not trusted, the
//! header is ignored. An entry that is not an address stops the walk at the
//! last trusted hop: the request is attributed to that proxy, never to a
//! name the client chose.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::TrustedNet;

/// The client address of a request from `peer` with `headers`.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[TrustedNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.0.contains(&ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut last = peer;
    // Several header lines are one list, in order.
    let lines: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    for value in lines.into_iter().rev() {
        let Ok(text) = value.to_str() else { return last };
        for item in text.rsplit(',') {
            let Some(ip) = parse(item.trim()) else { return last };
            if !is_trusted(ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80` or `[::1]`.
fn parse(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<TrustedNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let lb = nets(&["10.0.0.0/24", "127.0.0.1"]);
        let h = headers(&["203.0.113.9"]);
        // From the balancer: the forwarded client.
        assert_eq!(client(ip("10.0.0.5"), &h, &lb), ip("203.0.113.9"));
        // From anyone else, or with nothing trusted: the peer, whatever the header says.
        assert_eq!(client(ip("198.51.100.7"), &h, &lb), ip("198.51.100.7"));
        assert_eq!(client(ip("10.0.0.5"), &h, &[]), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(client(ip("10.0.0.5"), &HeaderMap::new(), &lb), ip("10.0.0.5"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client_not_what_it_claims() {
        let lb = nets(&["10.0.0.0/24"]);
        // The client wrote "1.1.1.1" itself; the edge proxy appended its real address.
        let h = headers(&["1.1.1.1, 203.0.113.9, 10.0.0.4"]);
        assert_eq!(client(ip("10.0.0.5"), &h, &lb), ip("203.0.113.9"));
        // Split over two header lines, with ports and IPv6 forms.
        let h = headers(&["1.1.1.1", "[2001:db8::1]:4711, 10.0.0.4:80"]);
        assert_eq!(client(ip("10.0.0.5"), &h, &lb), ip("2001:db8::1"));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&["203.0.113.9, not-an-address, 10.0.0.4"]);
        assert_eq!(client(ip("10.0.0.5"), &h, &lb), ip("10.0.0.4"));
        // An IPv4-mapped peer is matched as IPv4.
        let h = headers(&["203.0.113.9"]);
        assert_eq!(client(ip("::ffff:10.0.0.5"), &h, &lb), ip("203.0.113.9"));
    }

    #[test]
    fn entries_parse_as_blocks_or_single_addresses() {
        assert!("10.0.0.0/8".parse::<TrustedNet>().is_ok());
        assert_eq!("10.1.2.3/8".parse::<TrustedNet>().unwrap().0.to_string(), "10.0.0.0/8");
        assert_eq!("::1".parse::<TrustedNet>().unwrap().0.to_string(), "::1/128");
        assert!("lb.example".parse::<TrustedNet>().unwrap_err().contains("not an address"));
    }
}
