//! The hybrid simulator: combination identities, recovery of known weights from choices sampled
//! from a known hybrid, and the validation split against the real ML-1M cutoff.

use std::path::PathBuf;

use mirrorsim_data::scenes::{build_scenes, NegativeMix, SceneConfig, SceneRecord, Split};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_eval::baselines::softmax;
use mirrorsim_eval::evaluate::baseline_predictions;
use mirrorsim_eval::hybrid::{
    combine, fit_hybrid, hybrid_predictions, read_hybrid_file, validation_cases, validation_split,
    write_hybrid_file, FitBounds, HybridFile, HybridWeights, ValidationCase,
};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines};

/// SplitMix64: a small seeded generator, so the synthetic data is the same on every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self, distribution: &[f64]) -> usize {
        let u = self.uniform();
        let mut total = 0.0;
        for (i, p) in distribution.iter().enumerate() {
            total += p;
            if u < total {
                return i;
            }
        }
        distribution.len() - 1
    }
}

/// `n` synthetic 5-option scenes: a random LLM distribution, random prior scores, and a choice
/// drawn from the true hybrid `weights`.
fn synthetic_cases(n: usize, weights: &HybridWeights, seed: u64) -> Vec<ValidationCase> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let llm_logits: Vec<f64> = (0..5).map(|_| 3.0 * rng.uniform()).collect();
            let llm = softmax(&llm_logits, 1.0);
            let prior_scores: Vec<f64> = (0..5).map(|_| rng.uniform()).collect();
            let truth = weights.distribution(&llm, &prior_scores).unwrap();
            let answer = rng.sample(&truth);
            ValidationCase {
                llm,
                prior_scores,
                answer,
            }
        })
        .collect()
}

fn max_abs_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn zero_llm_weight_gives_the_prior_and_zero_prior_weight_gives_the_llm() {
    let llm = [0.05, 0.6, 0.1, 0.2, 0.05];
    let scores = [0.3, -1.0, 2.5, 0.0, 0.7];
    let prior_only = HybridWeights {
        llm_weight: 0.0,
        prior_weight: 1.0,
        prior_temperature: 0.7,
    };
    let hybrid = prior_only.distribution(&llm, &scores).unwrap();
    assert!(max_abs_difference(&hybrid, &softmax(&scores, 0.7)) < 1e-12);
    let llm_only = HybridWeights {
        llm_weight: 1.0,
        prior_weight: 0.0,
        prior_temperature: 0.7,
    };
    assert!(max_abs_difference(&llm_only.distribution(&llm, &scores).unwrap(), &llm) < 1e-12);

    // An LLM distribution missing some mass (a label it could not score) is renormalised.
    let partial = [0.1, 0.3, 0.0, 0.1, 0.0];
    let renormalised = [0.2, 0.6, 0.0, 0.2, 0.0];
    let combined = combine(&partial, &softmax(&scores, 1.0), 1.0, 0.0).unwrap();
    assert!(max_abs_difference(&combined, &renormalised) < 1e-10);
    // … and an option the LLM gave no mass stays possible once the prior counts.
    let both = combine(&partial, &softmax(&scores, 1.0), 1.0, 1.0).unwrap();
    assert!((both.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(both[2] > 0.0);

    // Doubling both exponents sharpens: the argmax keeps its place and gains mass.
    let once = combine(&llm, &softmax(&scores, 1.0), 1.0, 1.0).unwrap();
    let twice = combine(&llm, &softmax(&scores, 1.0), 2.0, 2.0).unwrap();
    let argmax = |d: &[f64]| (0..d.len()).max_by(|&i, &j| d[i].total_cmp(&d[j])).unwrap();
    assert_eq!(argmax(&once), argmax(&twice));
    assert!(twice[argmax(&twice)] > once[argmax(&once)]);

    assert!(combine(&llm, &[0.5, 0.5], 1.0, 1.0).is_err());
    assert!(combine(&llm, &llm, f64::NAN, 1.0).is_err());
}

#[test]
fn fitting_recovers_known_weights() {
    // Only b / T enters the hybrid, so the recovered quantity is the prior's score coefficient.
    let truth = HybridWeights {
        llm_weight: 0.7,
        prior_weight: 1.5,
        prior_temperature: 0.5,
    };
    let cases = synthetic_cases(20_000, &truth, 7);
    let fit = fit_hybrid(&cases, &FitBounds::default()).unwrap();
    let fitted = fit.weights;
    let coefficient = fitted.prior_weight / fitted.prior_temperature;
    let true_coefficient = truth.prior_weight / truth.prior_temperature;
    eprintln!(
        "fitted a = {:.4}, b = {:.4}, T = {:.4} (b/T = {coefficient:.4}); NLL llm {:.4}, prior \
         {:.4}, hybrid {:.4}",
        fitted.llm_weight,
        fitted.prior_weight,
        fitted.prior_temperature,
        fit.nll_nats_llm,
        fit.nll_nats_prior,
        fit.nll_nats_hybrid
    );
    // Standard errors at n = 20 000 are about 0.015 for a and 0.05 for b/T; 4 of them.
    assert!((fitted.llm_weight - truth.llm_weight).abs() < 0.06);
    assert!((coefficient - true_coefficient).abs() < 0.2);
    assert_eq!(fit.scenes, 20_000);
    assert!(fit.nll_nats_hybrid < fit.nll_nats_llm);
    assert!(fit.nll_nats_hybrid < fit.nll_nats_prior);

    // The fit is the minimiser: the true weights (rescaled to the fitted T) and small moves
    // away from the fit are no better on the same data.
    let nll_at = |a: f64, b: f64| {
        let weights = HybridWeights {
            llm_weight: a,
            prior_weight: b,
            prior_temperature: fitted.prior_temperature,
        };
        cases
            .iter()
            .map(|c| -weights.distribution(&c.llm, &c.prior_scores).unwrap()[c.answer].ln())
            .sum::<f64>()
            / cases.len() as f64
    };
    let at_fit = nll_at(fitted.llm_weight, fitted.prior_weight);
    assert!((at_fit - fit.nll_nats_hybrid).abs() < 1e-9);
    let true_b_at_fitted_t = true_coefficient * fitted.prior_temperature;
    assert!(at_fit <= nll_at(truth.llm_weight, true_b_at_fitted_t) + 1e-12);
    for (da, db) in [(0.05, 0.0), (-0.05, 0.0), (0.0, 0.05), (0.0, -0.05)] {
        assert!(at_fit <= nll_at(fitted.llm_weight + da, fitted.prior_weight + db) + 1e-12);
    }
}

#[test]
fn fitting_finds_a_weight_at_its_bound_when_a_part_is_useless() {
    // Choices drawn from the LLM alone: the prior's weight belongs at 0.
    let truth = HybridWeights {
        llm_weight: 1.0,
        prior_weight: 0.0,
        prior_temperature: 1.0,
    };
    let cases = synthetic_cases(10_000, &truth, 11);
    let fit = fit_hybrid(&cases, &FitBounds::default()).unwrap();
    eprintln!("LLM-only truth: fitted {:?}", fit.weights);
    assert!((fit.weights.llm_weight - 1.0).abs() < 0.06);
    assert!(fit.weights.prior_weight / fit.weights.prior_temperature < 0.15);
    assert!(fit.weights.prior_weight >= 0.0 && fit.weights.llm_weight >= 0.0);

    assert!(fit_hybrid(&[], &FitBounds::default()).is_err());
    let bad = ValidationCase {
        llm: vec![0.5, 0.5],
        prior_scores: vec![0.0, 1.0],
        answer: 2,
    };
    assert!(fit_hybrid(&[bad], &FitBounds::default()).is_err());
}

#[test]
fn hybrid_file_round_trips() {
    let truth = HybridWeights {
        llm_weight: 0.7,
        prior_weight: 1.5,
        prior_temperature: 0.5,
    };
    let fit = fit_hybrid(&synthetic_cases(500, &truth, 3), &FitBounds::default()).unwrap();
    let file = HybridFile {
        prior: BaselineKind::Knn,
        model: Some("model".to_owned()),
        weights: fit.weights,
        fit,
        validation_scenes_file: "v.jsonl".to_owned(),
        validation_boundary: 10,
        eval_cutoff: 20,
        validation_prior_cutoff: 11,
        bounds: FitBounds::default(),
        prompt_hint: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hybrid.json");
    write_hybrid_file(&path, &file).unwrap();
    assert_eq!(read_hybrid_file(&path).unwrap(), file);
    std::fs::write(&path, "{\"prior\": \"knn\"}").unwrap();
    let err = read_hybrid_file(&path).unwrap_err().to_string();
    assert!(err.contains("hybrid.json"), "{err}");
}

fn ml1m() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ml-1m");
    if path.join("ml-1m.inter.gz").exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is missing; the ML-1M validation split test needs ../shared/data",
            path.display()
        );
        None
    }
}

#[test]
fn ml1m_validation_split_never_reaches_the_eval_period() {
    let Some(path) = ml1m() else { return };
    let spec = SourceSpec {
        format: "recbole".to_owned(),
        path,
    };
    let (catalog, _) = read_source(&spec, &ReadOptions::default()).unwrap();
    let scene_config = SceneConfig {
        max_train_scenes: Some(3000),
        max_eval_scenes: Some(200),
        eval_options: 5,
        history_len: 6,
        negatives: "random=1".parse::<NegativeMix>().unwrap(),
        seed: 0,
        ..SceneConfig::default()
    };
    let set = build_scenes(&catalog, &scene_config).unwrap();
    let cutoff = set.summary.cutoff_timestamp.unwrap();
    assert_eq!(cutoff, 978_133_414);
    assert_eq!(set.train.len(), 3000);
    let period_start = catalog.interactions[0].timestamp;
    let split = validation_split(&set.train, period_start, cutoff, 0.1).unwrap();

    let span = cutoff - period_start;
    assert!(split.boundary < cutoff && cutoff - split.boundary >= span / 10);
    let expected = set
        .train
        .iter()
        .filter(|s| s.timestamp >= split.boundary)
        .count();
    assert_eq!(split.scenes.len(), expected);
    assert!(
        split.scenes.len() >= 30,
        "only {} validation scenes",
        split.scenes.len()
    );
    for scene in &split.scenes {
        assert_eq!(scene.split, Split::Train);
        assert!(scene.timestamp >= split.boundary && scene.timestamp < cutoff);
        assert!(scene.history.iter().all(|h| h.timestamp < scene.timestamp));
    }
    // No validation decision is an interaction of the eval period.
    let eval_period = &catalog.interactions[set.summary.interactions_before_cutoff..];
    assert!(eval_period.iter().all(|i| i.timestamp >= cutoff));
    for scene in &split.scenes {
        let user = catalog.user_idx(&scene.user_id).unwrap();
        let item = catalog.item_idx(&scene.item_id).unwrap();
        assert!(!eval_period
            .iter()
            .any(|i| i.user == user && i.item == item && i.timestamp == scene.timestamp));
    }
    // The validation prior sees none of the validation decisions.
    let prior_cutoff = split.prior_cutoff();
    assert!(prior_cutoff >= split.boundary);
    let fitted = FittedBaselines::fit(
        &catalog,
        Some(prior_cutoff),
        &BaselineConfig::default(),
        false,
    )
    .unwrap();
    assert!(fitted.interactions_before_cutoff < set.summary.interactions_before_cutoff);
    assert!(catalog.interactions[..fitted.interactions_before_cutoff]
        .iter()
        .all(|i| i.timestamp < prior_cutoff));

    let llm = vec![vec![0.5, 0.2, 0.1, 0.15, 0.05]; split.scenes.len()];
    let cases = validation_cases(&fitted, BaselineKind::Knn, &split.scenes, &llm).unwrap();
    assert_eq!(cases.len(), split.scenes.len());
    for (case, scene) in cases.iter().zip(&split.scenes) {
        assert_eq!(case.answer, scene.answer);
        assert_eq!(
            case.prior_scores,
            fitted.scores(BaselineKind::Knn, scene).unwrap()
        );
    }
    assert!(validation_cases(&fitted, BaselineKind::Knn, &split.scenes, &llm[1..]).is_err());

    // On eval scenes, with the eval-cutoff prior: a = 0 reproduces the kNN baseline's
    // predictions (distribution and seeded draws), b = 0 the LLM's distribution.
    let eval_fitted =
        FittedBaselines::fit(&catalog, Some(cutoff), &BaselineConfig::default(), false).unwrap();
    let eval_llm = vec![vec![0.5, 0.2, 0.1, 0.15, 0.05]; set.eval.len()];
    let baseline = baseline_predictions(&eval_fitted, BaselineKind::Knn, &set.eval, 3, 9).unwrap();
    let prior_only = HybridWeights {
        llm_weight: 0.0,
        prior_weight: 1.0,
        prior_temperature: BaselineConfig::default().temperature,
    };
    let hybrid = hybrid_predictions(
        &eval_fitted,
        BaselineKind::Knn,
        &prior_only,
        &set.eval,
        &eval_llm,
        3,
        9,
    )
    .unwrap();
    assert_eq!(hybrid.len(), 200);
    for (h, b) in hybrid.iter().zip(&baseline) {
        assert_eq!(h.scene_id, b.scene_id);
        assert!(max_abs_difference(&h.distribution, &b.distribution) < 1e-12);
        assert_eq!(h.samples, b.samples);
    }
    let llm_only = HybridWeights {
        llm_weight: 1.0,
        prior_weight: 0.0,
        prior_temperature: 1.0,
    };
    let hybrid = hybrid_predictions(
        &eval_fitted,
        BaselineKind::Knn,
        &llm_only,
        &set.eval,
        &eval_llm,
        3,
        9,
    )
    .unwrap();
    for (h, l) in hybrid.iter().zip(&eval_llm) {
        assert!(max_abs_difference(&h.distribution, l) < 1e-12);
    }

    // Eval scenes, or anything at or after the cutoff, are refused.
    let err = validation_split(&set.eval, period_start, cutoff, 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `timestamp`"), "{err}");
    let mut mixed: Vec<SceneRecord> = split.scenes.clone();
    let mut late = mixed[0].clone();
    late.timestamp = cutoff;
    mixed.push(late);
    assert!(validation_split(&mixed, period_start, cutoff, 0.1).is_err());
    assert!(validation_split(&set.train, period_start, cutoff, 0.0).is_err());
    assert!(validation_split(&set.train, cutoff, cutoff, 0.1).is_err());
}
