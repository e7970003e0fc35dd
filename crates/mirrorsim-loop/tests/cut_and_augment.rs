//! The cut never leaks: recommenders fitted before the cut give the same lists whatever happens
//! after it, never recommend a training item, and augmented interactions are dated before the
//! cut; the RecBole file round-trips through the project's own RecBole reader.

use std::path::{Path, PathBuf};

use mirrorsim_data::{read_source, Catalog, ReadOptions, UserIdx};
use mirrorsim_eval::{BaselineConfig, BaselineKind};
use mirrorsim_loop::augment::{
    augmented_catalog, augmented_histories, control_picks, sample_users, write_recbole_inter,
};
use mirrorsim_loop::recommend::{fit, top_k_lists, BUILTIN_KINDS};
use mirrorsim_loop::split::TemporalCut;

fn demo_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small")
}

fn catalog() -> Catalog {
    let spec = format!("movielens:{}", demo_data().display())
        .parse()
        .unwrap();
    read_source(&spec, &ReadOptions::default()).unwrap().0
}

fn config() -> BaselineConfig {
    // Small vocabularies keep the dense kNN/EASE matrices cheap in a test build.
    BaselineConfig {
        knn_max_items: 2000,
        ease_max_items: 300,
        ..BaselineConfig::default()
    }
}

/// The catalog without anything at or after the cut.
fn truncated(catalog: &Catalog, position: usize) -> Catalog {
    let mut cut = catalog.clone();
    cut.interactions.truncate(position);
    cut
}

#[test]
fn the_cut_splits_time_and_held_out_items_are_new_to_the_user() {
    let catalog = catalog();
    let cut = TemporalCut::at_quantile(&catalog, 0.8).unwrap();
    assert!(catalog.interactions[..cut.position]
        .iter()
        .all(|i| i.timestamp < cut.cutoff));
    assert!(catalog.interactions[cut.position..]
        .iter()
        .all(|i| i.timestamp >= cut.cutoff));
    // 20 % of the 100,004 ratings, rounded, are held out (no tie straddles this cut).
    assert_eq!(catalog.interactions.len(), 100_004);
    assert_eq!(catalog.interactions.len() - cut.position, 20_001);
    for (user, held) in cut.held_out.iter().enumerate() {
        for item in held {
            assert!(cut.train_items[user].binary_search(item).is_err());
            assert!(catalog.interactions[cut.position..]
                .iter()
                .any(|i| i.user as usize == user && i.item == *item));
        }
    }
    assert!(!cut.evaluable_users().is_empty());
    assert!(TemporalCut::at_quantile(&catalog, 1.0).is_err());
    assert!(TemporalCut::at_quantile(&catalog, 0.0).is_err());
}

#[test]
fn recommenders_ignore_everything_after_the_cut_and_never_repeat_training_items() {
    let catalog = catalog();
    let cut = TemporalCut::at_quantile(&catalog, 0.8).unwrap();
    let users: Vec<UserIdx> = sample_users(&catalog, &cut.evaluable_users(), 8, 1);
    assert_eq!(users.len(), 8);
    let before_only = truncated(&catalog, cut.position);
    let fitted = fit(&catalog, cut.cutoff, &config(), &BUILTIN_KINDS).unwrap();
    let fitted_before = fit(&before_only, cut.cutoff, &config(), &BUILTIN_KINDS).unwrap();
    assert_eq!(fitted.interactions_before_cutoff, cut.position);
    for kind in BUILTIN_KINDS {
        let lists = top_k_lists(
            &fitted,
            kind,
            catalog.items.len(),
            &cut.train_items,
            &users,
            20,
        )
        .unwrap();
        let again = top_k_lists(
            &fitted_before,
            kind,
            catalog.items.len(),
            &cut.train_items,
            &users,
            20,
        )
        .unwrap();
        assert_eq!(lists, again, "{kind}: post-cut data changed the lists");
        for (&user, list) in users.iter().zip(&lists) {
            assert_eq!(list.len(), 20);
            let mut distinct = list.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 20, "{kind}: repeated item");
            for item in list {
                assert!(
                    cut.train_items[user as usize].binary_search(item).is_err(),
                    "{kind}: recommended a training item"
                );
            }
        }
    }
    // Popularity is the same list for everyone, minus their own items, best first.
    let popular = top_k_lists(
        &fitted,
        BaselineKind::Popularity,
        catalog.items.len(),
        &vec![Vec::new(); catalog.users.len()],
        &users[..1],
        3,
    )
    .unwrap();
    let counts: Vec<u32> = popular[0].iter().map(|&i| fitted.popularity(i)).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn augmented_interactions_are_dated_before_the_cut_and_round_trip_through_recbole() {
    let catalog = catalog();
    let cut = TemporalCut::at_quantile(&catalog, 0.8).unwrap();
    let users = sample_users(&catalog, &cut.evaluable_users(), 3, 7);
    let fitted = fit(&catalog, cut.cutoff, &config(), &[BaselineKind::Knn]).unwrap();
    let lists = top_k_lists(
        &fitted,
        BaselineKind::Knn,
        catalog.items.len(),
        &cut.train_items,
        &users,
        5,
    )
    .unwrap();
    // Pretend the simulator took each user's third item.
    let picks: Vec<(UserIdx, u32)> = users.iter().zip(&lists).map(|(&u, l)| (u, l[2])).collect();
    let stamp = cut.cutoff - 1;
    let augmented = augmented_catalog(&catalog, &picks, stamp);
    assert_eq!(
        augmented.interactions.len(),
        catalog.interactions.len() + picks.len()
    );
    let refit = fit(&augmented, cut.cutoff, &config(), &[BaselineKind::Knn]).unwrap();
    assert_eq!(
        refit.interactions_before_cutoff,
        cut.position + picks.len(),
        "every augmented interaction is training data, nothing after the cut is"
    );
    // Refitting without the post-cut interactions gives the same lists: no leak.
    let augmented_before = truncated(&augmented, cut.position + picks.len());
    let refit_before = fit(
        &augmented_before,
        cut.cutoff,
        &config(),
        &[BaselineKind::Knn],
    )
    .unwrap();
    let histories = augmented_histories(&cut.train_items, &picks);
    for (&(user, item), list) in picks.iter().zip(&lists) {
        assert!(histories[user as usize].binary_search(&item).is_ok());
        assert_eq!(list[2], item);
    }
    let a = top_k_lists(
        &refit,
        BaselineKind::Knn,
        catalog.items.len(),
        &histories,
        &users,
        10,
    );
    let b = top_k_lists(
        &refit_before,
        BaselineKind::Knn,
        catalog.items.len(),
        &histories,
        &users,
        10,
    );
    assert_eq!(a.unwrap(), b.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ml-small-aug");
    let path = folder.join("ml-small-aug.inter");
    write_recbole_inter(&path, &catalog, cut.position, &picks, 4.0, stamp).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("user_id:token\titem_id:token\trating:float\ttimestamp:float")
    );
    assert_eq!(text.lines().count(), 1 + cut.position + picks.len());
    let spec = format!("recbole:{}", folder.display()).parse().unwrap();
    let (read_back, _) = read_source(&spec, &ReadOptions::default()).unwrap();
    assert_eq!(read_back.interactions.len(), cut.position + picks.len());
    assert!(read_back
        .interactions
        .iter()
        .all(|i| i.timestamp < cut.cutoff));
    for &(user, item) in &picks {
        let (u, i) = (
            read_back.user_idx(&catalog.user(user).id).unwrap(),
            read_back.item_idx(&catalog.item(item).id).unwrap(),
        );
        assert!(read_back
            .interactions
            .iter()
            .any(|x| x.user == u && x.item == i && x.timestamp == stamp && x.rating == Some(4.0)));
    }

    // Controls: as many items per user as the simulator's picks, from what the user saw.
    let shown = |u: UserIdx| {
        let at = users.iter().position(|&x| x == u).unwrap();
        lists[at].clone()
    };
    let (random, top) = control_picks(&picks, &shown, &catalog, 0);
    assert_eq!(random.len(), picks.len());
    assert_eq!(
        top,
        users
            .iter()
            .zip(&lists)
            .map(|(&u, l)| (u, l[0]))
            .collect::<Vec<_>>()
    );
    for &(u, i) in &random {
        assert!(shown(u).contains(&i));
    }
    assert_eq!(control_picks(&picks, &shown, &catalog, 0).0, random);
}

#[test]
fn user_samples_are_deterministic_and_sorted() {
    let catalog = catalog();
    let candidates: Vec<UserIdx> = (0..catalog.users.len() as UserIdx).collect();
    let a = sample_users(&catalog, &candidates, 10, 42);
    assert_eq!(a, sample_users(&catalog, &candidates, 10, 42));
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_ne!(a, sample_users(&catalog, &candidates, 10, 43));
    assert_eq!(sample_users(&catalog, &candidates[..4], 10, 42).len(), 4);
}
