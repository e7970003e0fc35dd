//! Rating prediction, where the data has ratings: for each eval decision, how would the user rate
//! the item they chose? The simulator is asked with the rating templates (its prediction is the
//! expected level under its distribution after `Rating: [`), beside bias baselines fitted on the
//! pre-cutoff ratings; MAE and RMSE against the real rating.

use mirrorsim_data::scenes::slate::SlateCatalog;
use mirrorsim_data::scenes::{PromptSet, SceneConfig, SceneRecord};
use mirrorsim_data::Catalog;
use mirrorsim_llm::{ChoiceRequest, Prompt};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::simulate::to_llm_messages;

/// The continuation after which the next token is the rating level.
pub const RATING_CUE: &str = "Rating: [";

/// Shrinkage of the bias baselines towards the global mean (pseudo-ratings per user or item).
pub const BIAS_DAMPING: f64 = 5.0;

/// One eval decision and its real rating.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingCase {
    pub scene_id: String,
    pub user_id: String,
    pub item_id: String,
    pub timestamp: i64,
    pub rating: f32,
}

/// The decisions of `scenes` that carry a rating in the catalog (matched on user, item and time).
pub fn rating_cases(catalog: &Catalog, scenes: &[SceneRecord]) -> Vec<RatingCase> {
    scenes
        .iter()
        .filter_map(|scene| {
            let user = catalog.user_idx(&scene.user_id)?;
            let item = catalog.item_idx(&scene.item_id)?;
            let key = (scene.timestamp, user, item);
            let at = catalog
                .interactions
                .partition_point(|i| (i.timestamp, i.user, i.item) < key);
            let decision = catalog.interactions.get(at)?;
            if (decision.timestamp, decision.user, decision.item) != key {
                return None;
            }
            Some(RatingCase {
                scene_id: scene.id.clone(),
                user_id: scene.user_id.clone(),
                item_id: scene.item_id.clone(),
                timestamp: scene.timestamp,
                rating: decision.rating?,
            })
        })
        .collect()
}

/// Error figures of one rating predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatingMetrics {
    pub predictor: String,
    pub cases: usize,
    pub mae: f64,
    pub rmse: f64,
    /// Mean prediction and mean real rating, to see a bias at a glance.
    pub mean_predicted: f64,
    pub mean_real: f64,
}

/// MAE and RMSE of `predicted` against the cases' real ratings.
pub fn rating_metrics(
    predictor: &str,
    cases: &[RatingCase],
    predicted: &[f64],
) -> Result<RatingMetrics, EvalError> {
    if cases.len() != predicted.len() || cases.is_empty() {
        return Err(EvalError::Config(format!(
            "rating metrics of {predictor}: {} predictions for {} rated cases (both must be the \
             same, non-zero number)",
            predicted.len(),
            cases.len()
        )));
    }
    let n = cases.len() as f64;
    let errors: Vec<f64> = cases
        .iter()
        .zip(predicted)
        .map(|(c, &p)| p - f64::from(c.rating))
        .collect();
    Ok(RatingMetrics {
        predictor: predictor.to_owned(),
        cases: cases.len(),
        mae: errors.iter().map(|e| e.abs()).sum::<f64>() / n,
        rmse: (errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
        mean_predicted: predicted.iter().sum::<f64>() / n,
        mean_real: cases.iter().map(|c| f64::from(c.rating)).sum::<f64>() / n,
    })
}

/// Global mean, user and item biases (damped) of the ratings strictly before the cutoff.
#[derive(Debug, Clone)]
pub struct RatingBaselines<'c> {
    catalog: &'c Catalog,
    mean: f64,
    user_mean: Vec<Option<f64>>,
    item_mean: Vec<Option<f64>>,
    user_bias: Vec<f64>,
    item_bias: Vec<f64>,
}

impl<'c> RatingBaselines<'c> {
    pub fn fit(catalog: &'c Catalog, cutoff: Option<i64>) -> Result<Self, EvalError> {
        let before = match cutoff {
            Some(c) => catalog.interactions.partition_point(|i| i.timestamp < c),
            None => catalog.interactions.len(),
        };
        let rated: Vec<(usize, usize, f64)> = catalog.interactions[..before]
            .iter()
            .filter_map(|i| Some((i.user as usize, i.item as usize, f64::from(i.rating?))))
            .collect();
        if rated.is_empty() {
            return Err(EvalError::Config(format!(
                "the catalog `{}` has no rating before the cutoff to fit rating baselines on",
                catalog.name
            )));
        }
        let mean = rated.iter().map(|r| r.2).sum::<f64>() / rated.len() as f64;
        let sums = |key: fn(&(usize, usize, f64)) -> usize,
                    len: usize,
                    offset: &dyn Fn(&(usize, usize, f64)) -> f64| {
            let mut total = vec![0.0; len];
            let mut count = vec![0usize; len];
            for r in &rated {
                total[key(r)] += r.2 - offset(r);
                count[key(r)] += 1;
            }
            (total, count)
        };
        let (user_total, user_count) = sums(|r| r.0, catalog.users.len(), &|_| 0.0);
        let (item_total, item_count) = sums(|r| r.1, catalog.items.len(), &|_| 0.0);
        let plain_mean = |total: &[f64], count: &[usize]| -> Vec<Option<f64>> {
            total
                .iter()
                .zip(count)
                .map(|(&t, &n)| (n > 0).then(|| t / n as f64))
                .collect()
        };
        let user_bias: Vec<f64> = {
            let (t, n) = sums(|r| r.0, catalog.users.len(), &|_| mean);
            t.iter()
                .zip(&n)
                .map(|(&t, &n)| t / (n as f64 + BIAS_DAMPING))
                .collect()
        };
        let item_bias: Vec<f64> = {
            let (t, n) = sums(|r| r.1, catalog.items.len(), &|r| mean + user_bias[r.0]);
            t.iter()
                .zip(&n)
                .map(|(&t, &n)| t / (n as f64 + BIAS_DAMPING))
                .collect()
        };
        Ok(RatingBaselines {
            catalog,
            mean,
            user_mean: plain_mean(&user_total, &user_count),
            item_mean: plain_mean(&item_total, &item_count),
            user_bias,
            item_bias,
        })
    }

    /// Every baseline's predictions for the cases, by name: the global mean, the user's mean,
    /// the item's mean (each falling back to the global mean when unseen) and
    /// `mean + b_user + b_item` with damped biases.
    pub fn predict(&self, cases: &[RatingCase]) -> Vec<(&'static str, Vec<f64>)> {
        let indices: Vec<(Option<usize>, Option<usize>)> = cases
            .iter()
            .map(|c| {
                (
                    self.catalog.user_idx(&c.user_id).map(|u| u as usize),
                    self.catalog.item_idx(&c.item_id).map(|i| i as usize),
                )
            })
            .collect();
        let of = |f: &dyn Fn(Option<usize>, Option<usize>) -> f64| -> Vec<f64> {
            indices.iter().map(|&(u, i)| f(u, i)).collect()
        };
        vec![
            ("global mean", of(&|_, _| self.mean)),
            (
                "user mean",
                of(&|u, _| u.and_then(|u| self.user_mean[u]).unwrap_or(self.mean)),
            ),
            (
                "item mean",
                of(&|_, i| i.and_then(|i| self.item_mean[i]).unwrap_or(self.mean)),
            ),
            (
                "user + item biases",
                of(&|u, i| {
                    self.mean
                        + u.map_or(0.0, |u| self.user_bias[u])
                        + i.map_or(0.0, |i| self.item_bias[i])
                }),
            ),
        ]
    }
}

/// The slates rating prompts are rendered from, as the scenes were (`scenes`: the config in
/// their summary, when there is one): `history_len` past choices per user, the scenes' prompts
/// folder if they had one, and, where they showed the options' popularity (`item_stats`), each
/// item's rating count and mean as of the `cutoff`, which is what every eval scene showed.
pub fn rating_slates(
    catalog: Catalog,
    history_len: usize,
    scenes: Option<&SceneConfig>,
    cutoff: Option<i64>,
) -> Result<SlateCatalog, EvalError> {
    let prompts = PromptSet::load(scenes.and_then(|c| c.prompts_dir.as_deref()))?;
    let slates = SlateCatalog::new(catalog, prompts, history_len.max(1))?;
    Ok(if scenes.is_some_and(|c| c.item_stats) {
        slates.with_item_stats(cutoff)
    } else {
        slates
    })
}

/// The simulator's rating request of each case: the user as of the decision, the chosen item,
/// an assistant turn continued after `Rating: [`, the levels as labels.
pub fn rating_requests(
    slates: &SlateCatalog,
    cases: &[RatingCase],
) -> Result<Vec<ChoiceRequest>, EvalError> {
    cases
        .iter()
        .map(|case| {
            let (Some(user), Some(item)) = (
                slates.user(&case.user_id, Some(case.timestamp)),
                slates.item(&case.item_id),
            ) else {
                return Err(EvalError::Config(format!(
                    "scene {}: user `{}` or item `{}` is not in the catalog",
                    case.scene_id, case.user_id, case.item_id
                )));
            };
            let prompt = slates.render_rating(&user, &item)?;
            let mut messages = to_llm_messages(&prompt.messages);
            messages.push(mirrorsim_llm::ChatMessage::new("assistant", ""));
            Ok(ChoiceRequest {
                prompt: Prompt::Chat {
                    messages,
                    continue_final: true,
                },
                continuations: vec![RATING_CUE.to_owned()],
                labels: prompt.levels,
            })
        })
        .collect()
}

/// The expected level under a distribution over the levels (labels that are numbers).
pub fn expected_rating(levels: &[String], distribution: &[f64]) -> Result<f64, EvalError> {
    if levels.len() != distribution.len() {
        return Err(EvalError::BackendShape {
            expected: levels.len(),
            got: distribution.len(),
        });
    }
    let mut total = 0.0;
    let mut mass = 0.0;
    for (level, &p) in levels.iter().zip(distribution) {
        let value: f64 = level
            .parse()
            .map_err(|_| EvalError::Config(format!("rating level `{level}` is not a number")))?;
        total += value * p;
        mass += p;
    }
    if mass <= 0.0 {
        return Err(EvalError::Config(
            "the rating distribution has no mass".to_owned(),
        ));
    }
    Ok(total / mass)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mirrorsim_data::catalog::{CatalogBuilder, Interaction};

    use super::*;

    fn catalog() -> Catalog {
        let mut b = CatalogBuilder::new("r");
        for id in ["a", "b"] {
            b.add_item(id, None, BTreeMap::new(), None);
        }
        // u1 rates a 5 then b 3; u2 rates a 4; after the cutoff (t >= 10) u2 rates b 2.
        for (user, item, t, r) in [
            ("u1", "a", 1, 5.0),
            ("u1", "b", 2, 3.0),
            ("u2", "a", 3, 4.0),
            ("u2", "b", 10, 2.0),
        ] {
            let (user, item) = (b.user(user), b.item(item));
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: t,
                rating: Some(r),
                review: None,
                impressions: None,
            });
        }
        b.finish()
    }

    /// u2's rating of b at t=10, the cutoff.
    fn u2_rates_b_after_the_cutoff() -> RatingCase {
        RatingCase {
            scene_id: "s".to_owned(),
            user_id: "u2".to_owned(),
            item_id: "b".to_owned(),
            timestamp: 10,
            rating: 2.0,
        }
    }

    /// The user message of `u2_rates_b_after_the_cutoff`'s rating request under `scenes`.
    fn rating_user_text(scenes: Option<&SceneConfig>) -> String {
        let slates = rating_slates(catalog(), 3, scenes, Some(10)).unwrap();
        let request = rating_requests(&slates, &[u2_rates_b_after_the_cutoff()])
            .unwrap()
            .remove(0);
        let Prompt::Chat { messages, .. } = request.prompt else {
            panic!("a rating request is a chat");
        };
        messages[1].content.clone()
    }

    /// With the scenes' `item_stats`, the rated item's line carries its counts as of the
    /// cutoff (u1's 3 at t=2, not u2's own 2 at t=10); without, it carries none.
    #[test]
    fn rating_prompts_show_the_item_stats_when_the_scenes_did() {
        let with_stats = SceneConfig {
            item_stats: true,
            ..SceneConfig::default()
        };
        let with = rating_user_text(Some(&with_stats));
        assert!(with.contains("1 rating, average 3.0/5"), "{with}");
        for without in [
            rating_user_text(Some(&SceneConfig::default())),
            rating_user_text(None),
        ] {
            assert!(!without.contains("average"), "{without}");
        }
    }

    /// The scenes' prompts folder replaces the rating templates too; a folder that is gone is
    /// an error naming it, not a silent fall-back to the embedded templates.
    #[test]
    fn rating_prompts_use_the_scenes_prompts_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rating_user.j2"),
            "Rate it, {{ levels | join(\"/\") }}.",
        )
        .unwrap();
        let custom = SceneConfig {
            prompts_dir: Some(dir.path().to_owned()),
            ..SceneConfig::default()
        };
        // The catalog's levels are the ratings it holds: 2 to 5.
        assert_eq!(rating_user_text(Some(&custom)), "Rate it, 2/3/4/5.");
        let gone = SceneConfig {
            prompts_dir: Some(dir.path().join("gone")),
            ..SceneConfig::default()
        };
        let Err(error) = rating_slates(catalog(), 3, Some(&gone), Some(10)) else {
            panic!("a missing prompts folder is refused");
        };
        let message = error.to_string();
        assert!(
            message.contains("gone") && message.contains("prompts folder"),
            "{message}"
        );
    }

    #[test]
    fn baselines_by_hand() {
        let catalog = catalog();
        let fitted = RatingBaselines::fit(&catalog, Some(10)).unwrap();
        let case = u2_rates_b_after_the_cutoff();
        let predictions = fitted.predict(std::slice::from_ref(&case));
        let get = |name: &str| predictions.iter().find(|p| p.0 == name).unwrap().1[0];
        // μ = 4; u2's mean 4; b's mean 3.
        assert!((get("global mean") - 4.0).abs() < 1e-12);
        assert!((get("user mean") - 4.0).abs() < 1e-12);
        assert!((get("item mean") - 3.0).abs() < 1e-12);
        // b_u2 = (4 − 4) / (1 + 5) = 0; b_u1 = (1 − 1) / (2 + 5) = 0;
        // b_b = (3 − 4 − 0) / (1 + 5) = −1/6.
        assert!((get("user + item biases") - (4.0 - 1.0 / 6.0)).abs() < 1e-12);

        let m = rating_metrics("x", &[case.clone(), case], &[3.0, 1.0]).unwrap();
        assert!((m.mae - 1.0).abs() < 1e-12 && (m.rmse - 1.0).abs() < 1e-12);
        assert!((m.mean_predicted - 2.0).abs() < 1e-12);
        assert!(rating_metrics("x", &[], &[]).is_err());
    }

    #[test]
    fn cases_are_matched_on_user_item_and_time() {
        let catalog = catalog();
        let scene = |user: &str, item: &str, t: i64| SceneRecord {
            id: format!("{user}-{item}-{t}"),
            dataset: "r".to_owned(),
            split: mirrorsim_data::scenes::Split::Eval,
            user_id: user.to_owned(),
            item_id: item.to_owned(),
            timestamp: t,
            options: vec![item.to_owned()],
            answer: 0,
            labels: vec!["A".to_owned()],
            exposure_sources: vec!["positive".to_owned()],
            history: Vec::new(),
            messages: Vec::new(),
            direct_messages: Vec::new(),
        };
        let cases = rating_cases(
            &catalog,
            &[
                scene("u2", "b", 10),
                scene("u2", "b", 11),
                scene("u9", "a", 1),
            ],
        );
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].rating, 2.0);
        let levels: Vec<String> = ["1", "2", "3"].iter().map(|s| s.to_string()).collect();
        assert!((expected_rating(&levels, &[0.5, 0.0, 0.5]).unwrap() - 2.0).abs() < 1e-12);
        assert!(expected_rating(&levels, &[1.0]).is_err());
    }
}
