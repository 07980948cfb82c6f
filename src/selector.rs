//! The weighted draw with exclude-and-redraw, free of any I/O so it can be
//! tested with a seeded RNG.

use rand::Rng;

/// An operator that may take a contact, with its weight in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub operator_id: i64,
    pub weight: u32,
}

/// Draws one candidate with probability `weight / sum(weights)`; `None` when
/// there is nothing to draw from.
pub fn draw<R: Rng + ?Sized>(candidates: &[Candidate], rng: &mut R) -> Option<usize> {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rng.random_range(0..total);
    candidates.iter().position(|candidate| {
        let weight = u64::from(candidate.weight);
        if ticket < weight {
            true
        } else {
            ticket -= weight;
            false
        }
    })
}

/// Draws until `take` accepts an operator. An operator that `take` refuses
/// (it could no longer take the contact) is excluded and the draw repeats
/// among the rest; `Ok(None)` once nobody is left.
pub fn draw_until_taken<R, E>(
    mut candidates: Vec<Candidate>,
    rng: &mut R,
    mut take: impl FnMut(i64) -> Result<bool, E>,
) -> Result<Option<i64>, E>
where
    R: Rng + ?Sized,
{
    while let Some(index) = draw(&candidates, rng) {
        let operator_id = candidates[index].operator_id;
        if take(operator_id)? {
            return Ok(Some(operator_id));
        }
        candidates.swap_remove(index);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn candidates(weights: &[(i64, u32)]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&(operator_id, weight)| Candidate {
                operator_id,
                weight,
            })
            .collect()
    }

    #[test]
    fn nothing_to_draw_from_gives_none() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(draw(&[], &mut rng), None);
    }

    #[test]
    fn single_candidate_is_always_drawn() {
        let mut rng = StdRng::seed_from_u64(2);
        let only = candidates(&[(7, 1)]);
        for _ in 0..100 {
            assert_eq!(draw(&only, &mut rng), Some(0));
        }
    }

    /// Chi-square goodness of fit with 2 degrees of freedom: the statistic
    /// exceeds 13.816 with probability 0.001 when the shares are right.
    #[test]
    fn weights_10_30_60_give_shares_10_30_60() {
        const DRAWS: usize = 100_000;
        const CRITICAL_P_0_001_DF_2: f64 = 13.816;
        let pool = candidates(&[(1, 10), (2, 30), (3, 60)]);
        for seed in [3, 4, 5] {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut counts = [0usize; 3];
            for _ in 0..DRAWS {
                counts[draw(&pool, &mut rng).unwrap()] += 1;
            }
            let chi_square: f64 = counts
                .iter()
                .zip([0.1, 0.3, 0.6])
                .map(|(&observed, share)| {
                    let expected = DRAWS as f64 * share;
                    (observed as f64 - expected).powi(2) / expected
                })
                .sum();
            assert!(
                chi_square < CRITICAL_P_0_001_DF_2,
                "seed {seed}: counts {counts:?}, chi-square {chi_square:.2}"
            );
        }
    }

    #[test]
    fn refused_operators_are_excluded_and_never_returned() {
        let mut rng = StdRng::seed_from_u64(6);
        for _ in 0..1_000 {
            let mut attempts = Vec::new();
            let chosen =
                draw_until_taken(candidates(&[(1, 1), (2, 1_000), (3, 1)]), &mut rng, |id| {
                    attempts.push(id);
                    Ok::<_, Infallible>(id != 2)
                })
                .unwrap();
            assert!(matches!(chosen, Some(1) | Some(3)), "{chosen:?}");
            assert!(attempts.iter().filter(|&&id| id == 2).count() <= 1);
        }
    }

    #[test]
    fn everyone_refusing_gives_none_after_one_try_each() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut attempts = Vec::new();
        let chosen = draw_until_taken(candidates(&[(1, 3), (2, 4), (3, 5)]), &mut rng, |id| {
            attempts.push(id);
            Ok::<_, Infallible>(false)
        })
        .unwrap();
        assert_eq!(chosen, None);
        attempts.sort_unstable();
        assert_eq!(attempts, [1, 2, 3]);
    }
}
