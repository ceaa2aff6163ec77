//! Serial-number arithmetic on 32-bit packet sequence numbers (PROTOCOL.md §3, RFC 1982 style).

/// `a < b` in sequence space.
#[inline]
pub(crate) fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` in sequence space.
#[inline]
pub(crate) fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// `a > b` in sequence space.
#[inline]
pub(crate) fn gt(a: u32, b: u32) -> bool {
    lt(b, a)
}

/// Distance from `from` to `to` (`to - from`, wrapping).
#[inline]
pub(crate) fn dist(from: u32, to: u32) -> u32 {
    to.wrapping_sub(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_wraps() {
        assert!(lt(u32::MAX, 0));
        assert!(gt(3, u32::MAX - 3));
        assert!(le(7, 7));
        assert_eq!(dist(u32::MAX, 2), 3);
        assert!(!lt(0, 0x8000_0001));
    }
}
