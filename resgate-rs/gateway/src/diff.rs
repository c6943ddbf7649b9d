//! The events that turn one state of a resource into another (after a reset or a query reply
//! with the full new state): a change event for models, remove/add events along a longest common
//! subsequence for collections.

use crate::event::EventKind;
use res_protocol::value::{ResourceData, Value};

/// Collections larger than this (old × new middle parts) are replaced wholesale instead of
/// diffed, to bound the quadratic work.
const MAX_LCS_CELLS: usize = 4_000_000;

/// `None` when the type changed (model vs collection).
pub fn events(old: &ResourceData, new: &ResourceData) -> Option<Vec<EventKind>> {
    match (old, new) {
        (ResourceData::Model(a), ResourceData::Model(b)) => {
            let mut values: Vec<(String, Value)> =
                a.keys().filter(|k| !b.contains_key(*k)).map(|k| (k.clone(), Value::Delete)).collect();
            values.extend(b.iter().filter(|(k, v)| a.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())));
            Some(if values.is_empty() { Vec::new() } else { vec![EventKind::Change(values)] })
        }
        (ResourceData::Collection(a), ResourceData::Collection(b)) => Some(collection_events(a, b)),
        _ => None,
    }
}

fn collection_events(a: &[Value], b: &[Value]) -> Vec<EventKind> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut events = Vec::new();
    if am.len().saturating_mul(bm.len()) > MAX_LCS_CELLS {
        events.extend((0..am.len()).rev().map(|i| EventKind::Remove { idx: prefix + i }));
        events.extend(bm.iter().enumerate().map(|(j, v)| EventKind::Add { idx: prefix + j, value: v.clone() }));
        return events;
    }
    // lcs[i][j] = LCS length of am[i..] and bm[j..].
    let (n, m) = (am.len(), bm.len());
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] =
                if am[i] == bm[j] { lcs[at(i + 1, j + 1)] + 1 } else { lcs[at(i + 1, j)].max(lcs[at(i, j + 1)]) };
        }
    }
    let (mut keep_a, mut keep_b) = (vec![false; n], vec![false; m]);
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if am[i] == bm[j] {
            keep_a[i] = true;
            keep_b[j] = true;
            i += 1;
            j += 1;
        } else if lcs[at(i + 1, j)] >= lcs[at(i, j + 1)] {
            i += 1;
        } else {
            j += 1;
        }
    }
    // Removes from the end keep earlier indices valid; then adds in order land at their final
    // positions because what remains is exactly the common subsequence.
    events.extend((0..n).rev().filter(|&i| !keep_a[i]).map(|i| EventKind::Remove { idx: prefix + i }));
    events.extend((0..m).filter(|&j| !keep_b[j]).map(|j| EventKind::Add { idx: prefix + j, value: bm[j].clone() }));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(items: &[&str]) -> Vec<Value> {
        items.iter().map(|s| Value::primitive(&format!("\"{s}\""))).collect()
    }

    fn apply(mut a: Vec<Value>, events: &[EventKind]) -> Vec<Value> {
        for e in events {
            match e {
                EventKind::Remove { idx } => {
                    a.remove(*idx);
                }
                EventKind::Add { idx, value } => a.insert(*idx, value.clone()),
                _ => unreachable!(),
            }
        }
        a
    }

    #[test]
    fn collection_diffs_reach_the_new_state() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["a", "b", "c"], &["a", "c"]),
            (&["a", "b", "c"], &["a", "x", "b", "c", "y"]),
            (&[], &["a"]),
            (&["a"], &[]),
            (&["a", "b", "c", "d"], &["d", "c", "b", "a"]),
            (&["a", "b"], &["a", "b"]),
        ];
        for (a, b) in cases {
            let (a, b) = (coll(a), coll(b));
            let ev = collection_events(&a, &b);
            assert_eq!(apply(a.clone(), &ev), b);
        }
        assert!(collection_events(&coll(&["a", "b"]), &coll(&["a", "b"])).is_empty());
        assert_eq!(collection_events(&coll(&["a", "b", "c"]), &coll(&["a", "c"])).len(), 1);
    }

    #[test]
    fn model_diff() {
        let a = ResourceData::Model(serde_json::from_str(r#"{"a":1,"b":2,"c":3}"#).unwrap());
        let b = ResourceData::Model(serde_json::from_str(r#"{"a":1,"b":5,"d":4}"#).unwrap());
        let ev = events(&a, &b).unwrap();
        let EventKind::Change(values) = &ev[0] else { panic!() };
        let names: Vec<_> = values.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["c", "b", "d"]);
        assert!(matches!(values[0].1, Value::Delete));
        assert!(events(&a, &ResourceData::Collection(vec![])).is_none());
    }
}
