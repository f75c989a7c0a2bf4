//! The shape of a Prometheus text exposition: what the two binaries' metrics tests pin (every
//! series' name, type, label sets and histogram buckets), so a library upgrade or a refactoring
//! cannot rename or retype a series a dashboard relies on. One reader for both binaries.

use std::collections::{BTreeMap, BTreeSet};

/// Every family as `name type label-sets`, a histogram's bounds after `le=`: what a
/// scraper keys on, whatever order a library writes families and labels in. A histogram
/// must have its `_sum` and `_count` and the same bounds for every label set.
pub fn shape(text: &str) -> Vec<String> {
    #[derive(Default)]
    struct Family {
        kind: String,
        sets: BTreeSet<String>,
        bounds: Vec<String>,
        parts: BTreeSet<(String, &'static str)>,
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let mut labels: Vec<&str> = labels
            .strip_suffix('}')
            .map(|l| l.split(',').collect())
            .unwrap_or_default();
        labels.sort_unstable();
        let le = labels.iter().position(|l| l.starts_with("le=\""));
        let le = le.map(|i| labels.remove(i)[4..].trim_end_matches('"').to_owned());
        let set = format!("{{{}}}", labels.join(","));
        let histogram = ["_bucket", "_sum", "_count"].into_iter().find_map(|s| {
            let f = name.strip_suffix(s)?;
            (families.get(f)?.kind == "histogram").then_some((f, s))
        });
        let f = match histogram {
            Some((f, part)) => {
                let f = families.get_mut(f).unwrap();
                f.parts.insert((set.clone(), part));
                if let Some(le) = le {
                    assert_eq!(part, "_bucket");
                    if !f.bounds.contains(&le) {
                        f.bounds.push(le);
                    }
                }
                f
            }
            None => families
                .get_mut(name)
                .unwrap_or_else(|| panic!("no # TYPE for {line}")),
        };
        f.sets.insert(set);
    }
    families
        .into_iter()
        .map(|(name, f)| {
            let sets = Vec::from_iter(f.sets.iter().map(String::as_str)).join(" ");
            if f.kind != "histogram" {
                return format!("{name} {} {sets}", f.kind);
            }
            for set in &f.sets {
                for part in ["_bucket", "_sum", "_count"] {
                    assert!(f.parts.contains(&(set.clone(), part)), "{name}{part}{set}");
                }
            }
            format!("{name} histogram {sets} le={}", f.bounds.join(","))
        })
        .collect()
}
