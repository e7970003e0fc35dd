//! Content negatives: each item's nearest items by TF-IDF cosine over its title and attributes,
//! precomputed once as neighbour lists.
//!
//! Terms are lowercase alphanumeric words of at least two characters: title words as they are,
//! attribute words prefixed with the attribute name (`genres=comedy`), so that a genre and a
//! title word that happen to be spelled alike stay apart. Weights are `tf × idf` with the
//! smoothed `idf = ln((1 + n) / (1 + df)) + 1`, and each vector is L2-normalised. Similarities
//! come from an inverted index, so only items sharing a term are ever compared.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::catalog::{Catalog, Item, ItemIdx};

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "as", "at", "by", "for", "from", "in", "is", "it", "of", "on", "or", "the",
    "to", "with",
];

/// The terms of an item's text, with repetitions.
pub fn item_terms(item: &Item) -> Vec<String> {
    let mut terms = Vec::new();
    push_words(&item.title, None, &mut terms);
    for (name, value) in &item.attributes {
        push_words(value, Some(name), &mut terms);
    }
    terms
}

fn push_words(text: &str, prefix: Option<&str>, terms: &mut Vec<String>) {
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
    {
        let word = word.to_lowercase();
        if STOP_WORDS.contains(&word.as_str()) {
            continue;
        }
        terms.push(match prefix {
            Some(p) => format!("{}={word}", p.to_lowercase()),
            None => word,
        });
    }
}

/// L2-normalised TF-IDF vectors of every item, as `(term, weight)` sorted by term.
pub fn tfidf_vectors(catalog: &Catalog) -> Vec<Vec<(u32, f32)>> {
    let mut vocabulary: HashMap<String, u32> = HashMap::new();
    let mut counts: Vec<Vec<(u32, f32)>> = Vec::with_capacity(catalog.items.len());
    for item in &catalog.items {
        let mut terms: Vec<u32> = item_terms(item)
            .into_iter()
            .map(|t| {
                let next = vocabulary.len() as u32;
                *vocabulary.entry(t).or_insert(next)
            })
            .collect();
        terms.sort_unstable();
        let mut tf: Vec<(u32, f32)> = Vec::new();
        for t in terms {
            match tf.last_mut() {
                Some((last, count)) if *last == t => *count += 1.0,
                _ => tf.push((t, 1.0)),
            }
        }
        counts.push(tf);
    }
    let mut df = vec![0u32; vocabulary.len()];
    for tf in &counts {
        for &(t, _) in tf {
            df[t as usize] += 1;
        }
    }
    let n = catalog.items.len() as f32;
    for tf in counts.iter_mut() {
        for (t, w) in tf.iter_mut() {
            *w *= ((1.0 + n) / (1.0 + df[*t as usize] as f32)).ln() + 1.0;
        }
        let norm = tf.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        if norm > 0.0 {
            tf.iter_mut().for_each(|(_, w)| *w /= norm);
        }
    }
    counts
}

/// Precomputed nearest neighbours of every item, most similar first.
#[derive(Debug, Clone)]
pub struct ContentIndex {
    offsets: Vec<usize>,
    neighbours: Vec<ItemIdx>,
}

impl ContentIndex {
    /// Keeps up to `per_item` neighbours with a positive cosine per item. Equal similarities
    /// are ordered by a fixed hash of the item pair, so ties do not always favour the items
    /// listed first in the source.
    pub fn build(catalog: &Catalog, per_item: usize) -> Self {
        let vectors = tfidf_vectors(catalog);
        let n_terms = vectors
            .iter()
            .flat_map(|v| v.iter().map(|&(t, _)| t as usize + 1))
            .max()
            .unwrap_or(0);
        let mut postings: Vec<Vec<(ItemIdx, f32)>> = vec![Vec::new(); n_terms];
        for (item, vector) in vectors.iter().enumerate() {
            for &(t, w) in vector {
                postings[t as usize].push((item as ItemIdx, w));
            }
        }
        let n_items = vectors.len();
        let lists: Vec<Vec<ItemIdx>> = (0..n_items)
            .into_par_iter()
            .map_init(
                || (vec![0.0f32; n_items], Vec::<ItemIdx>::new()),
                |(scores, touched), item| {
                    for &(t, w) in &vectors[item] {
                        for &(other, wo) in &postings[t as usize] {
                            if other as usize == item {
                                continue;
                            }
                            if scores[other as usize] == 0.0 {
                                touched.push(other);
                            }
                            scores[other as usize] += w * wo;
                        }
                    }
                    let mut ranked: Vec<(f32, u64, ItemIdx)> = touched
                        .iter()
                        .map(|&o| (scores[o as usize], pair_hash(item as u64, o as u64), o))
                        .filter(|&(s, _, _)| s > 0.0)
                        .collect();
                    for &o in touched.iter() {
                        scores[o as usize] = 0.0;
                    }
                    touched.clear();
                    let order = |a: &(f32, u64, ItemIdx), b: &(f32, u64, ItemIdx)| {
                        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
                    };
                    if ranked.len() > per_item {
                        ranked.select_nth_unstable_by(per_item, order);
                        ranked.truncate(per_item);
                    }
                    ranked.sort_unstable_by(order);
                    ranked.into_iter().map(|(_, _, o)| o).collect()
                },
            )
            .collect();
        let mut offsets = Vec::with_capacity(n_items + 1);
        let mut neighbours = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        offsets.push(0);
        for list in lists {
            neighbours.extend(list);
            offsets.push(neighbours.len());
        }
        ContentIndex {
            offsets,
            neighbours,
        }
    }

    /// The neighbours of `item`, most similar first.
    pub fn neighbours(&self, item: ItemIdx) -> &[ItemIdx] {
        let i = item as usize;
        &self.neighbours[self.offsets[i]..self.offsets[i + 1]]
    }
}

fn pair_hash(a: u64, b: u64) -> u64 {
    super::negatives::mix64(a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogBuilder;
    use std::collections::BTreeMap;

    fn item(b: &mut CatalogBuilder, id: &str, title: &str, genres: &str) -> ItemIdx {
        let attrs = BTreeMap::from([("genres".to_owned(), genres.to_owned())]);
        b.add_item(id, Some(title.to_owned()), attrs, None)
    }

    #[test]
    fn terms_are_words_with_attribute_prefixes() {
        let mut b = CatalogBuilder::new("t");
        item(
            &mut b,
            "x",
            "The Toy Story 2 (1999)",
            "Animation, Children's",
        );
        let c = b.finish();
        assert_eq!(
            item_terms(&c.items[0]),
            vec![
                "toy",
                "story",
                "1999",
                "genres=animation",
                "genres=children"
            ]
        );
    }

    #[test]
    fn tfidf_weights_match_hand_computation() {
        let mut b = CatalogBuilder::new("t");
        item(&mut b, "a", "alpha beta", "");
        item(&mut b, "b", "alpha", "");
        let c = b.finish();
        let v = tfidf_vectors(&c);
        // n = 2; alpha: df 2 → idf 1; beta: df 1 → idf ln(3/2) + 1.
        let beta = (1.5f32).ln() + 1.0;
        let norm = (1.0 + beta * beta).sqrt();
        assert!((v[0][0].1 - 1.0 / norm).abs() < 1e-6);
        assert!((v[0][1].1 - beta / norm).abs() < 1e-6);
        assert_eq!(v[1].len(), 1);
        assert!((v[1][0].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn neighbours_rank_by_cosine_and_exclude_self_and_strangers() {
        let mut b = CatalogBuilder::new("t");
        let space = item(&mut b, "space", "Star Voyage", "SciFi, Adventure");
        let space2 = item(&mut b, "space2", "Star Voyage Returns", "SciFi, Adventure");
        let scifi = item(&mut b, "scifi", "Robots", "SciFi");
        let romance = item(&mut b, "romance", "Paris Love", "Romance");
        let c = b.finish();
        let index = ContentIndex::build(&c, 10);
        assert_eq!(index.neighbours(space), &[space2, scifi]);
        assert_eq!(index.neighbours(space2), &[space, scifi]);
        assert!(index.neighbours(romance).is_empty());
        let capped = ContentIndex::build(&c, 1);
        assert_eq!(capped.neighbours(space), &[space2]);
    }
}
