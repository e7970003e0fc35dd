//! Both recommendation formats parsed exactly, and every validation error naming file, line
//! and field.

use std::path::Path;

use mirrorsim_loop::recs::{parse_recs, read_recs, RecsFormat};

fn error(text: &str) -> String {
    parse_recs(Path::new("recs/model.csv"), text)
        .expect_err("the file must be rejected")
        .to_string()
}

#[test]
fn csv_lists_are_grouped_per_user_and_ordered_by_rank() {
    let text = "user,item,rank,score\n\
                u1,b,2,0.5\n\
                u2,\"Heat, The (1995)\",1,\n\
                u1,a,1,0.9\n\
                u1,c,3,0.1\n";
    let recs = parse_recs(Path::new("dir/knn.top10.csv"), text).unwrap();
    assert_eq!(recs.name, "knn");
    assert_eq!(recs.format, RecsFormat::Csv);
    assert_eq!(recs.lists.len(), 2);
    let u1 = &recs.lists[0];
    assert_eq!(u1.user_id, "u1");
    assert_eq!(u1.line, 2);
    let ids: Vec<&str> = u1.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(
        u1.items.iter().map(|i| i.rank).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(u1.items[0].score, Some(0.9));
    assert_eq!(u1.items[0].line, 4);
    let u2 = &recs.lists[1];
    assert_eq!(u2.items[0].item_id, "Heat, The (1995)");
    assert_eq!(u2.items[0].score, None);
}

#[test]
fn csv_without_score_column_is_read() {
    let recs = parse_recs(Path::new("p.csv"), "user,item,rank\r\nu,x,1\r\nu,y,2\r\n").unwrap();
    assert_eq!(recs.lists[0].items.len(), 2);
    assert_eq!(recs.lists[0].items[1].item_id, "y");
}

#[test]
fn csv_errors_name_file_line_and_field() {
    assert_eq!(
        error("user,item,rank\nu1,a,1\nu1,b,zero\n"),
        "recs/model.csv:3: field `rank`: not a positive integer (got `zero`)"
    );
    assert_eq!(
        error("user,item,rank\nu1,a,0\n"),
        "recs/model.csv:2: field `rank`: not a positive integer (got `0`)"
    );
    assert_eq!(
        error("user,item,rank\nu1,a,1\nu1,b,1\n"),
        "recs/model.csv:3: field `rank`: user `u1` already has an item at rank 1 (line 2)"
    );
    assert_eq!(
        error("user,item,rank\nu1,a,1\nu2,a,1\nu1,a,2\n"),
        "recs/model.csv:4: field `item`: item `a` is already recommended to user `u1` (line 2)"
    );
    assert_eq!(
        error("user,item,rank,score\nu1,a,1,high\n"),
        "recs/model.csv:2: field `score`: not a finite number (got `high`)"
    );
    assert_eq!(
        error("user,item,rank\nu1,,1\n"),
        "recs/model.csv:2: field `item`: empty item id"
    );
    assert_eq!(
        error("user,item,rank\nu1,a,1\nu1,b\n"),
        "recs/model.csv:3: field `row`: expected 3 fields like the header, got 2"
    );
    assert_eq!(
        error("user,item,rank,weight\nu1,a,1,2\n"),
        "recs/model.csv:1: field `header`: expected `user,item,rank` or `user,item,rank,score` \
         (got `user,item,rank,weight`)"
    );
    assert_eq!(
        error("user,item,rank\n"),
        "recs/model.csv:1: field `header`: the file holds a header but no recommendations"
    );
}

#[test]
fn recbole_token_seq_lines_with_header_are_read_in_rank_order() {
    let text = "user_id:token\titem_id_list:token_seq\r\n\
                196\t242 302 377\r\n\
                186\t51\r\n";
    let recs = parse_recs(Path::new("out/BPR.topk.tsv"), text).unwrap();
    assert_eq!(recs.name, "BPR");
    assert_eq!(recs.format, RecsFormat::Recbole);
    assert_eq!(recs.lists.len(), 2);
    let first = &recs.lists[0];
    assert_eq!(first.user_id, "196");
    assert_eq!(first.line, 2);
    let ids: Vec<&str> = first.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["242", "302", "377"]);
    assert_eq!(
        first.items.iter().map(|i| i.rank).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(recs.lists[1].items[0].item_id, "51");
    assert_eq!(recs.lists[1].items[0].line, 3);
}

#[test]
fn recbole_variants_without_header_one_item_per_tab_or_whitespace() {
    let tabs = "1m_1\tToy Story (1995)\tHeat (1995)\tCasino (1995)\n";
    let recs = parse_recs(Path::new("r.tsv"), tabs).unwrap();
    let ids: Vec<&str> = recs.lists[0]
        .items
        .iter()
        .map(|i| i.item_id.as_str())
        .collect();
    assert_eq!(ids, ["Toy Story (1995)", "Heat (1995)", "Casino (1995)"]);

    let spaces = "u1 i3 i1 i2\nu2  i9\n";
    let recs = parse_recs(Path::new("r.txt"), spaces).unwrap();
    assert_eq!(recs.format, RecsFormat::Recbole);
    let ids: Vec<&str> = recs.lists[0]
        .items
        .iter()
        .map(|i| i.item_id.as_str())
        .collect();
    assert_eq!(ids, ["i3", "i1", "i2"]);
    assert_eq!(recs.lists[1].items[0].item_id, "i9");
}

#[test]
fn recbole_errors_name_file_line_and_field() {
    let e = |text: &str| {
        parse_recs(Path::new("top.tsv"), text)
            .expect_err("rejected")
            .to_string()
    };
    assert_eq!(
        e("u1\ta b\nu1\tc\n"),
        "top.tsv:2: field `user_id`: user `u1` already has a list (line 1)"
    );
    assert_eq!(
        e("u1\ta b a\n"),
        "top.tsv:1: field `item_id_list`: item `a` is already recommended to user `u1` (line 1)"
    );
    assert_eq!(
        e("u1\ta\nu2\t\n"),
        "top.tsv:2: field `item_id_list`: user `u2` has an empty list"
    );
    assert_eq!(
        e("user_id:token\titem_id:token\trating:float\n"),
        "top.tsv:1: field `header`: a RecBole top-k header has two fields, `USER:token` and \
         `ITEMS:token_seq` (got `user_id:token\titem_id:token\trating:float`)"
    );
    assert_eq!(
        e(""),
        "top.tsv:1: field `header`: the file is empty; expected the CSV header \
         `user,item,rank[,score]` or RecBole top-k lines `USER<TAB>ITEM ITEM …`"
    );
}

#[test]
fn catalog_check_names_the_line_of_an_unknown_user_or_item() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_dir = dir.path().join("tiny");
    std::fs::create_dir_all(&catalog_dir).unwrap();
    std::fs::write(
        catalog_dir.join("tiny.inter"),
        "user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu2\tb\t2\n",
    )
    .unwrap();
    let (catalog, _) = mirrorsim_data::read_source(
        &format!("recbole:{}", catalog_dir.display())
            .parse()
            .unwrap(),
        &mirrorsim_data::ReadOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("pop.csv");
    std::fs::write(&path, "user,item,rank\nu1,b,1\nu1,zz,2\n").unwrap();
    let recs = read_recs(&path).unwrap();
    assert_eq!(
        recs.check_catalog(&catalog).unwrap_err().to_string(),
        format!(
            "{}:3: field `item`: item `zz` is not in the catalog `tiny`",
            path.display()
        )
    );
    std::fs::write(&path, "u1\tb\nu9\ta\n").unwrap();
    let recs = read_recs(&path).unwrap();
    assert_eq!(
        recs.check_catalog(&catalog).unwrap_err().to_string(),
        format!(
            "{}:2: field `user_id`: user `u9` is not in the catalog `tiny`",
            path.display()
        )
    );
    std::fs::write(&path, b"user,item,rank\nu1,\xff,1\n").unwrap();
    assert_eq!(
        read_recs(&path).unwrap_err().to_string(),
        format!(
            "{}:2: field `encoding`: the file is not valid UTF-8",
            path.display()
        )
    );
}

#[test]
fn written_lists_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recs").join("knn.csv");
    let lists = vec![
        (
            "1m_1".to_owned(),
            vec![
                "American President, The (1995)".to_owned(),
                "Heat (1995)".to_owned(),
            ],
        ),
        ("1m_2".to_owned(), vec!["Say \"Cheese\" (2001)".to_owned()]),
    ];
    mirrorsim_loop::output::write_recs_csv(&path, &lists).unwrap();
    let recs = read_recs(&path).unwrap();
    assert_eq!(recs.name, "knn");
    let back: Vec<(String, Vec<String>)> = recs
        .lists
        .iter()
        .map(|l| {
            (
                l.user_id.clone(),
                l.items.iter().map(|i| i.item_id.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(back, lists);
}
