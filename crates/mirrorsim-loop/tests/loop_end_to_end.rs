//! The loop end to end with the real default model (SmolLM2-135M) on the committed
//! ml-latest-small: the built-in recommenders' lists for a few users shown page by page to the
//! slate simulator; the session rules hold on the real answers, and the same seed writes
//! byte-identical output files. Sizes are tiny (2 users, pages of 4) because every page is a
//! forward pass on a 2-core machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorsim_data::scenes::slate::SlateCatalog;
use mirrorsim_data::scenes::PromptSet;
use mirrorsim_data::{read_source, Catalog, ReadOptions, UserIdx};
use mirrorsim_eval::slate::SlateSimulator;
use mirrorsim_eval::{BaselineConfig, Mode};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::Backend;
use mirrorsim_loop::augment::sample_users;
use mirrorsim_loop::output::{write_json, write_jsonl};
use mirrorsim_loop::paging::{
    run_sessions, simulated_metrics, ChoiceLine, PagingConfig, Session, SlateChooser,
};
use mirrorsim_loop::recommend::{fit, top_k_lists, BUILTIN_KINDS};
use mirrorsim_loop::split::TemporalCut;

fn catalog() -> Catalog {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small");
    let spec = format!("movielens:{}", path.display()).parse().unwrap();
    read_source(&spec, &ReadOptions::default()).unwrap().0
}

fn run_once(
    simulator: &SlateSimulator<'_>,
    sessions: &[Session],
    config: &PagingConfig,
    at: i64,
    out: &Path,
) -> Vec<ChoiceLine> {
    let chooser = SlateChooser {
        simulator,
        at: Some(at),
        mode: Mode::Direct,
    };
    let lines = run_sessions(sessions, config, &chooser, 8, |_| {}).unwrap();
    let metrics = simulated_metrics(&lines, simulator.catalog().catalog().items.len(), None);
    write_jsonl(&out.join("choices.jsonl"), &lines).unwrap();
    write_json(&out.join("metrics.json"), &metrics).unwrap();
    lines
}

#[test]
fn built_in_recommenders_are_paged_through_the_real_model_deterministically() {
    let model: PathBuf =
        mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let engine = LocalEngine::load(&model, EngineOptions::default()).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(engine);
    let catalog = catalog();
    let cut = TemporalCut::at_quantile(&catalog, 0.8).unwrap();
    let users: Vec<UserIdx> = sample_users(&catalog, &cut.evaluable_users(), 2, 3);
    let config = PagingConfig {
        page_size: 4,
        max_pages: 2,
        max_picks: 1,
        seed: 11,
    };
    let baselines = BaselineConfig {
        knn_max_items: 2000,
        ease_max_items: 300,
        ..BaselineConfig::default()
    };
    let fitted = fit(&catalog, cut.cutoff, &baselines, &BUILTIN_KINDS).unwrap();
    let mut sessions = Vec::new();
    for kind in BUILTIN_KINDS {
        let lists = top_k_lists(
            &fitted,
            kind,
            catalog.items.len(),
            &cut.train_items,
            &users,
            8,
        )
        .unwrap();
        for (&u, list) in users.iter().zip(lists) {
            sessions.push(Session {
                recommender: kind.name().to_owned(),
                user_id: catalog.user(u).id.clone(),
                items: list.iter().map(|&i| catalog.item(i).id.clone()).collect(),
            });
        }
    }
    let train_items = cut.train_items.clone();
    drop(fitted);
    let slates = SlateCatalog::new(catalog, PromptSet::embedded().unwrap(), 3).unwrap();
    let simulator = SlateSimulator::new(&slates, backend);
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (dir.path().join("a"), dir.path().join("b"));
    let lines = run_once(&simulator, &sessions, &config, cut.cutoff, &first_dir);

    // Session rules on the real answers.
    for session in &sessions {
        let own: Vec<&ChoiceLine> = lines
            .iter()
            .filter(|l| l.recommender == session.recommender && l.user_id == session.user_id)
            .collect();
        assert!(!own.is_empty() && own.len() <= 2);
        for (i, line) in own.iter().enumerate() {
            assert_eq!(line.page, i + 1);
            assert_eq!(line.items, session.items[i * 4..(i + 1) * 4].to_vec());
            assert_eq!(line.distribution.len(), 5);
            let total: f64 = line.distribution.iter().sum();
            assert!((total - 1.0).abs() < 1e-6, "distribution sums to {total}");
            assert_eq!(line.p_none, line.distribution[4]);
            let last = i + 1 == own.len();
            // Only the last page may hold a pick; earlier pages were "none of these".
            assert!(last || line.chosen_item.is_none());
            if let Some(item) = &line.chosen_item {
                let slot = line.items.iter().position(|x| x == item).unwrap();
                assert_eq!(line.chosen_rank, Some(i * 4 + slot + 1));
            }
        }
        if own.len() == 1 {
            assert!(
                own[0].chosen_item.is_some(),
                "a first-page none must lead to page 2"
            );
        }
        let user = slates.catalog().user_idx(&session.user_id).unwrap();
        for line in &own {
            for item in &line.items {
                let idx = slates.catalog().item_idx(item).unwrap();
                assert!(train_items[user as usize].binary_search(&idx).is_err());
            }
        }
    }
    let metrics = simulated_metrics(&lines, slates.catalog().items.len(), None);
    assert_eq!(metrics.len(), 3);
    for (_, m) in &metrics {
        assert_eq!(m.users, 2);
        assert!(m.mean_pages_viewed >= 1.0 && m.mean_pages_viewed <= 2.0);
    }

    let again = run_once(&simulator, &sessions, &config, cut.cutoff, &second_dir);
    assert_eq!(lines, again);
    for file in ["choices.jsonl", "metrics.json"] {
        assert_eq!(
            std::fs::read(first_dir.join(file)).unwrap(),
            std::fs::read(second_dir.join(file)).unwrap(),
            "{file} differs between two runs with the same seed"
        );
    }
}
