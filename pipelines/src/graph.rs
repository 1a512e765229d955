//! The job graph: `needs` checked, cycles named, a stable topological order.
//! Iterative throughout, so a long chain of jobs cannot overflow the stack.

use crate::decode::Decoder;
use crate::keys::did_you_mean;
use crate::model::Pipeline;

/// Report needs that name no job or the job itself. Returns, per job, the indices it needs
/// (valid ones only).
pub fn check_needs(p: &Pipeline, d: &mut Decoder) -> Vec<Vec<usize>> {
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.value.as_str()).collect();
    let mut edges = Vec::with_capacity(p.jobs.len());
    for job in &p.jobs {
        let mut mine = Vec::new();
        for (i, need) in job.needs.iter().enumerate() {
            let path = format!("jobs.{}.needs[{i}]", job.name.value);
            if need.value == job.name.value {
                d.error(
                    need.pos,
                    &path,
                    format!("`{}` needs itself", need.value),
                    Some("remove it from `needs`".into()),
                );
                continue;
            }
            match names.iter().position(|n| *n == need.value) {
                Some(idx) => mine.push(idx),
                None => {
                    let others = names.iter().copied().filter(|n| *n != job.name.value);
                    let hint = match did_you_mean(&need.value, others) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("jobs are: {}", names.join(", ")),
                    };
                    d.error(
                        need.pos,
                        &path,
                        format!(
                            "`{}` needs `{}`, which is not a job",
                            job.name.value, need.value
                        ),
                        Some(hint),
                    );
                }
            }
        }
        edges.push(mine);
    }
    edges
}

/// Jobs in dependency order; among the jobs ready at any moment, the one written first comes
/// first, so the order is stable. `Err` holds one cycle, as job indices where each needs the
/// next and the last needs the first.
pub fn order(needs: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = needs.len();
    let mut waiting: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut needed_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (job, deps) in needs.iter().enumerate() {
        for &dep in deps {
            needed_by[dep].push(job);
        }
    }
    // A min-heap on the index keeps "written first" among the ready ones.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&j| waiting[j] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut out = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(j)) = ready.pop() {
        out.push(j);
        for &k in &needed_by[j] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.push(std::cmp::Reverse(k));
            }
        }
    }
    if out.len() == n {
        return Ok(out);
    }
    // Every job left waits on another job left, so following unfinished needs from any of
    // them must come back to a job already seen: that loop is a cycle.
    let start = (0..n).find(|&j| waiting[j] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut seen_at = vec![usize::MAX; n];
    seen_at[start] = 0;
    let mut cur = start;
    loop {
        let Some(&next) = needs[cur].iter().find(|&&d| waiting[d] > 0) else {
            return Err(path);
        };
        if seen_at[next] != usize::MAX {
            return Err(path.split_off(seen_at[next]));
        }
        seen_at[next] = path.len();
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_topological_order() {
        // 0 needs 2, 1 needs nothing, 2 needs 1, 3 needs nothing
        let needs = vec![vec![2], vec![], vec![1], vec![]];
        assert_eq!(order(&needs), Ok(vec![1, 2, 0, 3]));
    }

    #[test]
    fn names_one_cycle() {
        // 0 -> 1 -> 2 -> 1, 3 needs 0
        let needs = vec![vec![1], vec![2], vec![1], vec![0]];
        assert_eq!(order(&needs), Err(vec![1, 2]));
        let long: Vec<Vec<usize>> = (0..50_000).map(|i| vec![(i + 1) % 50_000]).collect();
        assert_eq!(order(&long).unwrap_err().len(), 50_000);
    }
}
