//! A small state per page of an area, kept as runs: what [`super::precopy::Store`] knows of
//! each page sent ahead. Its cost follows the runs, never the area's size: an image may
//! declare an area of many TiB (sparse ones exist, and a crafted one costs nothing to write),
//! and only the pages that arrived make runs.

use std::collections::BTreeMap;

/// Per page index, a state; 0 where no run says otherwise.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct States {
    /// First page -> (end, state): apart, in order, none of state 0, and no two neighbours
    /// (one's end the other's first page) of the same state.
    runs: BTreeMap<usize, (usize, u8)>,
}

impl States {
    /// The runs that meet [i, j), cut to it: (first, end, state).
    fn within(&self, i: usize, j: usize) -> Vec<(usize, usize, u8)> {
        let before = self.runs.range(..i).next_back().filter(|(_, (e, _))| *e > i);
        before
            .into_iter()
            .chain(self.runs.range(i..j))
            .map(|(&s, &(e, v))| (s.max(i), e.min(j), v))
            .filter(|(s, e, _)| s < e)
            .collect()
    }

    /// Pages [i, j) take state `v`.
    pub fn set(&mut self, i: usize, j: usize, v: u8) {
        if i >= j {
            return;
        }
        // Whatever meets [i, j) is cut back to what lies outside it.
        if let Some((&s, &(e, w))) = self.runs.range(..i).next_back().filter(|(_, (e, _))| *e > i) {
            self.runs.insert(s, (i, w));
            if e > j {
                self.runs.insert(j, (e, w));
            }
        }
        let inside: Vec<usize> = self.runs.range(i..j).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, w)) = self.runs.remove(&s)
                && e > j
            {
                self.runs.insert(j, (e, w));
            }
        }
        if v == 0 {
            return;
        }
        let (mut from, mut to) = (i, j);
        if let Some((&s, &(e, w))) = self.runs.range(..i).next_back()
            && e == i
            && w == v
        {
            self.runs.remove(&s);
            from = s;
        }
        if let Some(&(e, w)) = self.runs.get(&j)
            && w == v
        {
            self.runs.remove(&j);
            to = e;
        }
        self.runs.insert(from, (to, v));
    }

    /// Each page of [i, j) in a run takes `f` of its state (pages in state 0 stay so).
    pub fn map(&mut self, i: usize, j: usize, f: impl Fn(u8) -> u8) {
        for (s, e, v) in self.within(i, j) {
            let w = f(v);
            if w != v {
                self.set(s, e, w);
            }
        }
    }

    /// [`States::map`] over every page.
    pub fn map_all(&mut self, f: impl Fn(u8) -> u8) {
        self.map(0, usize::MAX, f);
    }

    /// Whether every page of [i, j) is in a state `ok` takes.
    pub fn all(&self, i: usize, j: usize, ok: impl Fn(u8) -> bool) -> bool {
        let mut at = i;
        for (s, e, v) in self.within(i, j) {
            if (s > at && !ok(0)) || !ok(v) {
                return false;
            }
            at = e;
        }
        at >= j || ok(0)
    }

    /// The runs of pages in state `v` (not 0), as [first, end), in order.
    pub fn runs_of(&self, v: u8) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.runs.iter().filter(move |(_, (_, w))| *w == v).map(|(&s, &(e, _))| (s, e))
    }

    /// The runs of pages of [i, j) in state `v` (not 0), cut to it.
    pub fn runs_within(&self, i: usize, j: usize, v: u8) -> Vec<(usize, usize)> {
        self.within(i, j).into_iter().filter(|r| r.2 == v).map(|(s, e, _)| (s, e)).collect()
    }

    /// How many pages of [i, j) are in a state other than 0.
    pub fn count_within(&self, i: usize, j: usize) -> usize {
        self.within(i, j).iter().map(|(s, e, _)| e - s).sum()
    }

    /// How many pages are in a state other than 0.
    pub fn count(&self) -> usize {
        self.runs.iter().map(|(&s, &(e, _))| e - s).sum()
    }

    /// The state of page `i`.
    #[cfg(test)]
    pub fn get(&self, i: usize) -> u8 {
        self.within(i, i + 1).first().map_or(0, |r| r.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page per byte, the model the runs must agree with.
    fn agree(st: &States, model: &[u8]) {
        for (i, &m) in model.iter().enumerate() {
            assert_eq!(st.get(i), m, "page {i}");
        }
        assert_eq!(st.count(), model.iter().filter(|&&x| x != 0).count());
        let (i, j) = (model.len() / 3, model.len() * 2 / 3);
        assert_eq!(st.count_within(i, j), model[i..j].iter().filter(|&&x| x != 0).count());
        // Kept as the type says: apart, in order, no state 0, neighbours of one state joined.
        let runs: Vec<(usize, usize, u8)> = st.runs.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0 && !(w[0].1 == w[1].0 && w[0].2 == w[1].2), "{runs:?}");
        }
        assert!(runs.iter().all(|r| r.0 < r.1 && r.2 != 0), "{runs:?}");
    }

    /// Random sets, maps and questions, each checked against a byte per page.
    #[test]
    fn runs_agree_with_a_byte_per_page() {
        const N: usize = 96;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        let (mut st, mut model) = (States::default(), vec![0u8; N]);
        for _ in 0..20_000 {
            let (a, b) = (next(N + 1), next(N + 1));
            let (i, j) = (a.min(b), a.max(b));
            match next(4) {
                0 | 1 => {
                    let v = next(5) as u8;
                    st.set(i, j, v);
                    model[i..j].fill(v);
                }
                2 => {
                    let k = next(5) as u8;
                    let f = |x: u8| if x == k { (k + 1) % 5 } else { x };
                    st.map(i, j, f);
                    model[i..j].iter_mut().filter(|x| **x != 0).for_each(|x| *x = f(*x));
                }
                _ => {
                    let k = next(5) as u8;
                    assert_eq!(st.all(i, j, |x| x == k), model[i..j].iter().all(|&x| x == k));
                    let want: Vec<usize> = (i..j).filter(|&p| model[p] == k).collect();
                    let got: Vec<usize> = st.runs_within(i, j, k).into_iter().flat_map(|(s, e)| s..e).collect();
                    if k != 0 {
                        assert_eq!(got, want);
                    }
                }
            }
            agree(&st, &model);
        }
    }

    /// An area of 2^35 pages (128 TiB) costs what its few runs do.
    #[test]
    fn a_vast_area_costs_its_runs() {
        let mut st = States::default();
        let n = 1usize << 35;
        st.set(n - 4, n, 1);
        st.set(7, 9, 1);
        st.map_all(|x| if x == 1 { 3 } else { x });
        assert!(!st.all(0, n, |x| x == 3));
        assert!(st.all(n - 4, n, |x| x == 3));
        assert_eq!(st.count(), 6);
        assert_eq!(st.runs_of(3).collect::<Vec<_>>(), vec![(7, 9), (n - 4, n)]);
    }
}
