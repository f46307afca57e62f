//! Invariants of the statistics on arbitrary samples.

use mpslab::experiment::analysis::describe;
use mpslab::experiment::analysis::stats::{percentile_sorted, sorted};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn percentiles_are_monotone_and_bounded(xs in prop::collection::vec(0.0f64..1e4, 1..300), p in 0.0f64..100.0, q in 0.0f64..100.0) {
        let s = sorted(&xs);
        let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
        prop_assert!(percentile_sorted(&s, lo) <= percentile_sorted(&s, hi));
        prop_assert_eq!(percentile_sorted(&s, 0.0), s[0]);
        prop_assert_eq!(percentile_sorted(&s, 100.0), s[s.len() - 1]);
    }

    #[test]
    fn intervals_lie_within_the_sample_and_order_holds(xs in prop::collection::vec(0.1f64..500.0, 1..200), seed in any::<u64>()) {
        let (st, _) = describe(&xs, seed).unwrap();
        let eps = 1e-9 * st.max_ms;
        prop_assert!(st.min_ms <= st.p50_ms && st.p50_ms <= st.p90_ms && st.p90_ms <= st.p95_ms);
        prop_assert!(st.p95_ms <= st.p99_ms && st.p99_ms <= st.max_ms);
        prop_assert!(st.stdev_ms >= 0.0);
        for [lo, hi] in [st.mean_ci_ms, st.median_ci_ms] {
            prop_assert!(st.min_ms - eps <= lo && lo <= hi && hi <= st.max_ms + eps, "[{}, {}]", lo, hi);
        }
    }
}
