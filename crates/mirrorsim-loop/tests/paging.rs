//! The paging rules of a session, checked with a scripted chooser (the end-to-end test in
//! `loop_end_to_end.rs` runs the same code with the real model).

use std::cell::RefCell;

use mirrorsim_loop::error::LoopError;
use mirrorsim_loop::paging::{
    page_seed, run_sessions, simulated_metrics, PageAnswer, PageChooser, PageRequest, PagingConfig,
    Session,
};

/// Picks the item named in `script` for (user, page) if it is on the page, else "none".
struct Scripted {
    script: Vec<(&'static str, usize, &'static str)>,
    batches: RefCell<Vec<usize>>,
}

impl PageChooser for Scripted {
    fn choose(&self, pages: &[PageRequest<'_>]) -> Result<Vec<PageAnswer>, LoopError> {
        self.batches.borrow_mut().push(pages.len());
        Ok(pages
            .iter()
            .map(|p| {
                let pick = self
                    .script
                    .iter()
                    .find(|(u, page, _)| *u == p.user_id && *page == p.page)
                    .and_then(|(_, _, item)| p.items.iter().position(|i| i == item));
                let n = p.items.len() + 1;
                PageAnswer {
                    distribution: vec![1.0 / n as f64; n],
                    pick,
                }
            })
            .collect())
    }
}

/// (user, page, items shown, chosen item, chosen rank) of one line.
type LineSummary<'a> = (&'a str, usize, Vec<&'a str>, Option<&'a str>, Option<usize>);

fn session(user: &str, items: &[&str]) -> Session {
    Session {
        recommender: "rec".to_owned(),
        user_id: user.to_owned(),
        items: items.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn sessions_page_until_the_first_pick_or_the_last_page() {
    let sessions = vec![
        // Picks on page 2 (rank 4).
        session("a", &["1", "2", "3", "4", "5", "6", "7"]),
        // Never picks: 3 pages of 3, the 10th item is never shown.
        session("b", &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]),
        // Picks on page 1 (rank 2).
        session("c", &["x", "y"]),
        // Short list: one partial page, no pick.
        session("d", &["z"]),
    ];
    let chooser = Scripted {
        script: vec![("a", 2, "4"), ("c", 1, "y"), ("a", 3, "7")],
        batches: RefCell::new(Vec::new()),
    };
    let config = PagingConfig {
        page_size: 3,
        max_pages: 3,
        max_picks: 1,
        seed: 9,
    };
    let lines = run_sessions(&sessions, &config, &chooser, 100, |_| {}).unwrap();
    let summary: Vec<LineSummary<'_>> = lines
        .iter()
        .map(|l| {
            (
                l.user_id.as_str(),
                l.page,
                l.items.iter().map(String::as_str).collect(),
                l.chosen_item.as_deref(),
                l.chosen_rank,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a", 1, vec!["1", "2", "3"], None, None),
            ("a", 2, vec!["4", "5", "6"], Some("4"), Some(4)),
            ("b", 1, vec!["1", "2", "3"], None, None),
            ("b", 2, vec!["4", "5", "6"], None, None),
            ("b", 3, vec!["7", "8", "9"], None, None),
            ("c", 1, vec!["x", "y"], Some("y"), Some(2)),
            ("d", 1, vec!["z"], None, None),
        ]
    );
    // Round 1: four pages together; round 2: a and b; round 3: b alone.
    assert_eq!(*chooser.batches.borrow(), vec![4, 2, 1]);
    assert_eq!(lines[1].seed, page_seed(9, "rec", "a", 2));
    assert!((lines[0].p_none - 0.25).abs() < 1e-12);

    let metrics = simulated_metrics(&lines, 100, None);
    assert_eq!(metrics.len(), 1);
    let m = &metrics[0].1;
    assert_eq!(m.users, 4);
    assert_eq!(m.accepting_users, 2);
    assert!((m.acceptance_rate - 0.5).abs() < 1e-12);
    assert_eq!(m.picks, 2);
    assert_eq!(m.mean_chosen_rank, Some(3.0));
    assert_eq!(m.distinct_chosen_items, 2);
    assert!((m.coverage - 0.02).abs() < 1e-12);
    assert!((m.mean_pages_viewed - 7.0 / 4.0).abs() < 1e-12);
    assert_eq!(m.picks_in_held_out, None);
}

#[test]
fn more_picks_continue_to_later_pages_and_batches_do_not_change_the_result() {
    let sessions = vec![
        session("a", &["1", "2", "3", "4"]),
        session("b", &["5", "6"]),
    ];
    let chooser = Scripted {
        script: vec![("a", 1, "1"), ("a", 2, "4"), ("b", 1, "6")],
        batches: RefCell::new(Vec::new()),
    };
    let config = PagingConfig {
        page_size: 2,
        max_pages: 5,
        max_picks: 2,
        seed: 0,
    };
    let lines = run_sessions(&sessions, &config, &chooser, 1, |_| {}).unwrap();
    let picks: Vec<(&str, Option<usize>)> = lines
        .iter()
        .map(|l| (l.user_id.as_str(), l.chosen_rank))
        .collect();
    assert_eq!(picks, vec![("a", Some(1)), ("a", Some(4)), ("b", Some(2))]);
    assert_eq!(*chooser.batches.borrow(), vec![1, 1, 1]);
    let held_out = |user: &str, item: &str| user == "a" && item == "4";
    let metrics = simulated_metrics(&lines, 10, Some(&held_out));
    assert_eq!(metrics[0].1.picks_in_held_out, Some(1));
    assert_eq!(metrics[0].1.picks, 3);

    let bad = PagingConfig {
        page_size: 26,
        ..config
    };
    assert!(run_sessions(&sessions, &bad, &chooser, 1, |_| {}).is_err());
}
