//! Which deployments to try, in which order.
//!
//! Deployments of a model are tried by ascending priority; deployments of
//! equal priority share traffic by weight through a weighted random order
//! (Efraimidis–Spirakis keys), so a weight-3 deployment comes first three
//! times as often as a weight-1 one. Fallback models follow, each ordered the
//! same way.

use rand::Rng;

/// Orders `items` by priority, shuffling equal priorities by weight.
pub(crate) fn weighted_order<T>(
    items: &[T],
    priority: impl Fn(&T) -> u32,
    weight: impl Fn(&T) -> u32,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let mut keyed: Vec<(u32, f64, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            // A smaller key comes first; key = -ln(u) / w favours heavy items.
            let w = f64::from(weight(item).max(1));
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            (priority(item), -u.ln() / w, i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lower_priority_always_first() {
        let items = [(2, 100), (1, 1), (3, 1000)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            assert_eq!(
                weighted_order(&items, |i| i.0, |i| i.1, &mut rng),
                vec![1, 0, 2]
            );
        }
    }

    #[test]
    fn equal_priorities_split_by_weight() {
        let items = [(0, 3), (0, 1)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let firsts = (0..10_000)
            .filter(|_| weighted_order(&items, |i| i.0, |i| i.1, &mut rng)[0] == 0)
            .count();
        // Expected 7,500; the band is many standard deviations wide.
        assert!((7_000..8_000).contains(&firsts), "{firsts}");
    }
}
