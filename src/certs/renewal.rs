//! When a certificate must be renewed: a pure function of its expiry and an
//! explicit clock, so that the 30-day rule is tested without waiting a year.

use time::{Duration, OffsetDateTime};

/// A certificate with less than this left is renewed (generated) or warned
/// about (configured). 30 days is what ACME clients use too: time for a
/// failed renewal to be noticed and fixed before browsers refuse the old one.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// Where the served certificate comes from, which decides what may be done
/// when it runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `server.tls_cert` / `tls_key`: only the operator can replace it.
    Configured,
    /// The self-signed pair in `data_dir`: the gateway makes a new one.
    SelfSigned,
}

/// What to do with a certificate at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least [`RENEW_BEFORE`] left.
    Fresh,
    /// A configured certificate with less than [`RENEW_BEFORE`] left (or
    /// already expired): still served, since the gateway cannot make one
    /// that browsers trust, and the operator is warned.
    ExpiresSoon { days_left: i64 },
    /// A self-signed certificate with less than [`RENEW_BEFORE`] left:
    /// replaced by a new one.
    Renew { days_left: i64 },
}

/// The verdict for a certificate of `origin` that ends at `not_after`.
pub fn verdict(origin: Origin, not_after: OffsetDateTime, now: OffsetDateTime) -> Verdict {
    let left = not_after - now;
    if left >= RENEW_BEFORE {
        return Verdict::Fresh;
    }
    let days_left = days_left(not_after, now);
    match origin {
        Origin::Configured => Verdict::ExpiresSoon { days_left },
        Origin::SelfSigned => Verdict::Renew { days_left },
    }
}

/// Whole days from `now` to `not_after`, rounded down; negative once expired.
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    let left = not_after - now;
    let days = left.whole_days();
    // whole_days truncates toward zero: 6 hours past expiry would be
    // "0 days left"; say -1 instead.
    if left.is_negative() && left != Duration::days(days) {
        days - 1
    } else {
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn self_signed_is_renewed_at_29_days_and_kept_at_31() {
        let now = now();
        assert_eq!(
            verdict(Origin::SelfSigned, now + Duration::days(29), now),
            Verdict::Renew { days_left: 29 }
        );
        assert_eq!(
            verdict(Origin::SelfSigned, now + Duration::days(31), now),
            Verdict::Fresh
        );
    }

    #[test]
    fn exactly_30_days_is_still_fresh_one_second_less_is_not() {
        let now = now();
        let end = now + RENEW_BEFORE;
        assert_eq!(verdict(Origin::SelfSigned, end, now), Verdict::Fresh);
        assert_eq!(
            verdict(Origin::SelfSigned, end - Duration::seconds(1), now),
            Verdict::Renew { days_left: 29 }
        );
    }

    #[test]
    fn configured_is_never_renewed_only_warned_about() {
        let now = now();
        assert_eq!(
            verdict(Origin::Configured, now + Duration::days(29), now),
            Verdict::ExpiresSoon { days_left: 29 }
        );
        assert_eq!(
            verdict(Origin::Configured, now + Duration::days(31), now),
            Verdict::Fresh
        );
        assert_eq!(
            verdict(Origin::Configured, now - Duration::hours(6), now),
            Verdict::ExpiresSoon { days_left: -1 }
        );
    }

    #[test]
    fn days_left_rounds_down() {
        let now = now();
        assert_eq!(days_left(now + Duration::hours(47), now), 1);
        assert_eq!(days_left(now, now), 0);
        assert_eq!(days_left(now - Duration::days(2), now), -2);
        assert_eq!(days_left(now - Duration::hours(49), now), -3);
    }
}
