//! Dependency sorting of the files of one repository.
//!
//! The order is a pure function of the paths and the dependency lists (`deps[i]` = the files
//! file `i` imports, as [`Resolver::dependencies`](super::Resolver::dependencies) computes
//! them). Paths compare byte-wise (`"README.md" < "a.py"`, `"__init__.py" < "a.py"`).
//!
//! 1. **Code files** ([`FileKind::Code`](super::FileKind::Code)) are ordered by Kahn's
//!    topological sort over their edges to other code files (self edges and edges to
//!    documentation ignored), dependencies first. Whenever several files are ready (all their
//!    dependencies placed), the alphabetically first path is placed next.
//! 2. **Cycles**: when files remain but none is ready, every remaining file lies on a cycle or
//!    depends on one. Among the remaining files that lie in a *sink* cycle (a strongly
//!    connected component of the remaining files whose members depend on no remaining file
//!    outside it), the alphabetically first is placed, as if its unplaced dependencies were
//!    met; then step 1 resumes. Files that merely depend on a cycle therefore still come after
//!    it.
//! 3. **Documentation** ([`FileKind::Doc`](super::FileKind::Doc): markdown, reStructuredText,
//!    text) of folder `F` is placed immediately before the first code file (in the order of
//!    steps 1-2) whose path lies inside `F` or its subfolders. A folder without code in its subtree borrows the position
//!    of its nearest ancestor that has some; when the repository has no code at all, the
//!    documentation is all there is. Documents landing at the same position are ordered by
//!    folder depth (top level first), folder, `README*` first, then path.
//!
//! So a top-level `README.md` opens the repository, and `pkg/README.md` sits right before the
//! first file of `pkg/`.

use std::collections::{BTreeSet, HashMap};

use super::language::{Language, file_name, parent_dir};
use crate::{DataError, Result};

/// Sort `paths` by the rules of the module documentation; returns the indices of `paths` in
/// order (every index exactly once).
///
/// Errors when `deps` is not as long as `paths` or names an index out of range.
///
/// ```
/// use internlm2_datasets::code::sort_files;
/// // b.py imports a.py, a.py imports b.py (a cycle), c.py imports nothing.
/// let paths = ["b.py", "a.py", "c.py", "README.md"];
/// let deps = vec![vec![1], vec![0], vec![], vec![]];
/// let order = sort_files(&paths, &deps)?;
/// let sorted: Vec<&str> = order.iter().map(|&i| paths[i]).collect();
/// assert_eq!(sorted, ["README.md", "c.py", "a.py", "b.py"]);
/// # Ok::<(), internlm2_datasets::DataError>(())
/// ```
pub fn sort_files<S: AsRef<str>>(paths: &[S], deps: &[Vec<usize>]) -> Result<Vec<usize>> {
    if deps.len() != paths.len() {
        return Err(DataError::config(format!(
            "sort_files: {} dependency lists for {} paths",
            deps.len(),
            paths.len()
        )));
    }
    if let Some((i, &j)) = deps
        .iter()
        .enumerate()
        .find_map(|(i, d)| d.iter().find(|&&j| j >= paths.len()).map(|j| (i, j)))
    {
        return Err(DataError::config(format!(
            "sort_files: file {i} depends on file {j}, but there are {} files",
            paths.len()
        )));
    }
    let paths: Vec<&str> = paths.iter().map(AsRef::as_ref).collect();
    Ok(sort_checked(&paths, deps))
}

/// [`sort_files`] on inputs known to be consistent.
pub(crate) fn sort_checked(paths: &[&str], deps: &[Vec<usize>]) -> Vec<usize> {
    let is_code: Vec<bool> = paths
        .iter()
        .map(|p| !Language::from_path(p).is_doc())
        .collect();
    let code = code_order(paths, &is_code, deps);
    place_docs(paths, &is_code, &code)
}

/// Steps 1 and 2: the topological order of the code files.
fn code_order(paths: &[&str], is_code: &[bool], deps: &[Vec<usize>]) -> Vec<usize> {
    let n = paths.len();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|&i| is_code[i]) {
        let mut d: Vec<usize> = deps[i]
            .iter()
            .copied()
            .filter(|&j| j != i && is_code[j])
            .collect();
        d.sort_unstable();
        d.dedup();
        for &j in &d {
            dependents[j].push(i);
        }
        edges[i] = d;
    }
    let mut missing: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<(&str, usize)> = (0..n)
        .filter(|&i| is_code[i] && missing[i] == 0)
        .map(|i| (paths[i], i))
        .collect();
    let mut placed = vec![false; n];
    let total = is_code.iter().filter(|&&c| c).count();
    let mut order = Vec::with_capacity(total);
    while order.len() < total {
        let next = match ready.pop_first() {
            Some((_, i)) => i,
            None => break_cycle(paths, is_code, &edges, &placed),
        };
        placed[next] = true;
        order.push(next);
        for &d in &dependents[next] {
            if !placed[d] {
                missing[d] -= 1;
                if missing[d] == 0 {
                    ready.insert((paths[d], d));
                }
            }
        }
    }
    order
}

/// Step 2: the alphabetically first unplaced code file that lies in a sink strongly connected
/// component of the unplaced code files (Tarjan's algorithm, iterative).
fn break_cycle(paths: &[&str], is_code: &[bool], edges: &[Vec<usize>], placed: &[bool]) -> usize {
    const UNSEEN: usize = usize::MAX;
    let n = paths.len();
    let live = |v: usize| is_code[v] && !placed[v];
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut component = vec![UNSEEN; n];
    let mut stack = Vec::new();
    let mut components = 0;
    let mut counter = 0;
    for root in (0..n).filter(|&v| live(v)) {
        if index[root] != UNSEEN {
            continue;
        }
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&(v, next_edge)) = calls.last() {
            if let Some(&w) = edges[v].get(next_edge) {
                if let Some(top) = calls.last_mut() {
                    top.1 += 1;
                }
                if !live(w) {
                    continue;
                }
                if index[w] == UNSEEN {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component[w] = components;
                        if w == v {
                            break;
                        }
                    }
                    components += 1;
                }
            }
        }
    }
    let mut sink = vec![true; components];
    for v in (0..n).filter(|&v| live(v)) {
        if edges[v]
            .iter()
            .any(|&w| live(w) && component[w] != component[v])
        {
            sink[component[v]] = false;
        }
    }
    (0..n)
        .filter(|&v| live(v) && sink[component[v]])
        .min_by_key(|&v| (paths[v], v))
        // Unreachable: a finite non-empty graph always has a sink component, and this is only
        // called while unplaced code files remain.
        .unwrap_or_else(|| (0..n).find(|&v| live(v)).unwrap_or(0))
}

/// Step 3: interleave the documentation with the code order.
fn place_docs(paths: &[&str], is_code: &[bool], code: &[usize]) -> Vec<usize> {
    let mut first_code: HashMap<&str, usize> = HashMap::new();
    for (pos, &i) in code.iter().enumerate() {
        let mut dir = parent_dir(paths[i]);
        loop {
            first_code.entry(dir).or_insert(pos);
            if dir.is_empty() {
                break;
            }
            dir = parent_dir(dir);
        }
    }
    let mut by_anchor: Vec<Vec<usize>> = vec![Vec::new(); code.len() + 1];
    for doc in (0..paths.len()).filter(|&i| !is_code[i]) {
        let mut dir = parent_dir(paths[doc]);
        let anchor = loop {
            if let Some(&pos) = first_code.get(dir) {
                break pos;
            }
            if dir.is_empty() {
                break code.len();
            }
            dir = parent_dir(dir);
        };
        by_anchor[anchor].push(doc);
    }
    let mut order = Vec::with_capacity(paths.len());
    for (pos, docs) in by_anchor.iter_mut().enumerate() {
        docs.sort_by_key(|&d| {
            let dir = parent_dir(paths[d]);
            let depth = if dir.is_empty() {
                0
            } else {
                dir.matches('/').count() + 1
            };
            let stem = file_name(paths[d]).split('.').next().unwrap_or("");
            let not_readme = !stem.eq_ignore_ascii_case("readme");
            (depth, dir, not_readme, paths[d], d)
        });
        order.extend_from_slice(docs);
        if let Some(&c) = code.get(pos) {
            order.push(c);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted<'a>(paths: &[&'a str], deps: &[Vec<usize>]) -> Vec<&'a str> {
        sort_files(paths, deps)
            .unwrap()
            .into_iter()
            .map(|i| paths[i])
            .collect()
    }

    #[test]
    fn dependent_of_a_cycle_waits_for_it() {
        // a -> c, c <-> d: naive "first remaining" would place a first. The cycle breaks at
        // c, which makes both a and d ready: a is alphabetically first.
        let paths = ["a.py", "c.py", "d.py"];
        assert_eq!(
            sorted(&paths, &[vec![1], vec![2], vec![1]]),
            ["c.py", "a.py", "d.py"]
        );
    }

    #[test]
    fn two_independent_cycles_break_one_at_a_time() {
        // x <-> y and b <-> a, z depends on x.
        let paths = ["y", "x", "z", "b", "a"];
        let deps = vec![vec![1], vec![0], vec![1], vec![4], vec![3]];
        assert_eq!(sorted(&paths, &deps), ["a", "b", "x", "y", "z"]);
    }

    #[test]
    fn docs_without_code_go_last_or_to_ancestor() {
        assert_eq!(
            sorted(&["b.md", "a.txt"], &[vec![], vec![]]),
            ["a.txt", "b.md"]
        );
        let paths = ["docs/guide.md", "src/m.rs", "README.md", "CHANGES.md"];
        let deps = vec![vec![]; 4];
        assert_eq!(
            sorted(&paths, &deps),
            ["README.md", "CHANGES.md", "docs/guide.md", "src/m.rs"]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(sort_files(&["a"], &[]).is_err());
        assert!(sort_files(&["a"], &[vec![3]]).is_err());
    }
}
