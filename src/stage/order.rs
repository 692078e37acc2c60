//! Which runs of one call wait for which: a run that starts from another's weights
//! (`train.init`) or averages other runs (`eval.ensemble`) goes after them when they are in
//! the same call, and is not run when one of them failed. In: the call's recipes. Out: for
//! each run, the indices of the runs it waits for; an order that honours them.

use crate::recipe::Recipe;

use super::StageError;

/// For each recipe, the indices of the other recipes of `recipes` it waits for; a cycle is an
/// error naming the runs on it.
pub fn waits_for(recipes: &[Recipe]) -> Result<Vec<Vec<usize>>, StageError> {
    let index_of = |name: &str| recipes.iter().position(|r| r.name == name);
    let waits: Vec<Vec<usize>> = recipes
        .iter()
        .enumerate()
        .map(|(i, recipe)| {
            let mut names: Vec<&str> = recipe.eval.ensemble.iter().map(String::as_str).collect();
            names.extend(recipe.train.init.as_deref());
            let mut waits: Vec<usize> = names
                .into_iter()
                .filter_map(index_of)
                // A run may start from its own earlier weights.
                .filter(|&j| j != i)
                .collect();
            waits.sort_unstable();
            waits.dedup();
            waits
        })
        .collect();
    let order = order(&waits);
    if order.len() < recipes.len() {
        let runs = (0..recipes.len())
            .filter(|i| !order.contains(i))
            .map(|i| recipes[i].name.clone())
            .collect();
        return Err(StageError::WaitCycle { runs });
    }
    Ok(waits)
}

/// The error of a run not started because `run`, which it starts from or averages, failed.
pub fn not_run_because(run: &str) -> String {
    format!("not run: it waits for run {run}, which failed")
}

/// The indices in the given order, except that each comes after those it waits for; those on
/// a cycle are left out.
pub fn order(waits: &[Vec<usize>]) -> Vec<usize> {
    let mut placed = vec![false; waits.len()];
    let mut order = Vec::with_capacity(waits.len());
    while let Some(next) =
        (0..waits.len()).find(|&i| !placed[i] && waits[i].iter().all(|&j| placed[j]))
    {
        placed[next] = true;
        order.push(next);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_comes_after_what_it_waits_for_and_otherwise_keeps_its_place() {
        // 0 ensemble of 3; 1 free; 2 init from 1; 3 free.
        let waits = vec![vec![3], vec![], vec![1], vec![]];
        assert_eq!(order(&waits), vec![1, 2, 3, 0]);
        assert_eq!(order(&[vec![1], vec![0], vec![]]), vec![2]);
    }
}
