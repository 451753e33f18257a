//! Splitting a padded batch into groups of similar length.
//!
//! A batch of texts is padded to its longest text, and the model computes every padded
//! position: when a dynamic batch merges a 4-word and a 30-word sentence, most of the short
//! one's work is padding (and attention grows with the square of the length). Running the
//! batch as a few groups of similar length does less work, at the price of a fixed cost per
//! run. [`length_groups`] picks the split that minimises an estimate of the total cost;
//! [`Encoded::select`] cuts a group out of the padded encoding (no second tokenization).
//! Answers do not change: the attention mask already keeps padding out of every real token.

use crate::Encoded;

/// The cost model of one run of `rows` texts padded to `len` tokens, in units of one token's
/// work: `per_run + rows * len * (1 + len / attention_width)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunCost {
    /// The fixed cost of a run (launching the graph's operators, thread-pool hand-offs), in
    /// tokens' worth of work.
    pub per_run: f64,
    /// The length at which attention (quadratic in the length) costs as much as the rest of a
    /// token's work (linear in it).
    pub attention_width: f64,
}

impl RunCost {
    /// The cost model for an encoder of hidden size `hidden` (0 or unknown: 384, MiniLM's),
    /// measured on MiniLM-L6 (int8) with ONNX Runtime on 2 cores, arena off, no spinning: a
    /// run costs about as much as 30 more tokens (1 x 8 tokens 1.7 ms, 16 x 16 21 ms, 16 x 32
    /// 38 ms), and at 256 tokens in total a run of one 256-token text takes 1.25x as long as
    /// 16 texts of 16 tokens (attention width ~1000 = 2.5 x hidden; the int8 projections are
    /// cheap next to the FP32 attention). Command and numbers: notes/issue-8.md.
    pub fn for_hidden(hidden: usize) -> RunCost {
        let hidden = if hidden == 0 { 384 } else { hidden };
        RunCost {
            per_run: 32.0,
            attention_width: 2.5 * hidden as f64,
        }
    }

    /// The estimated cost of one run of `rows` texts padded to `len` tokens.
    pub fn of(&self, rows: usize, len: usize) -> f64 {
        let len = len as f64;
        self.per_run + rows as f64 * len * (1.0 + len / self.attention_width.max(1.0))
    }
}

/// Groups of row indices (into `lengths`, the real token count of each text) whose separate
/// runs cost least under `cost`. Every index appears exactly once. When one run of the whole
/// batch is cheapest, the answer is the single group `0..n` in the original order (so the
/// caller can run the batch untouched); otherwise each group lists its rows shortest first,
/// and the groups go from the shortest texts to the longest.
pub fn length_groups(lengths: &[usize], cost: &RunCost) -> Vec<Vec<usize>> {
    let n = lengths.len();
    if n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let sorted: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
    // best[j]: least cost of the first j sorted rows; cut[j]: where its last group starts.
    // A group of sorted rows i..j is padded to sorted[j - 1], its longest.
    let mut best = vec![0.0f64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let mut b = f64::INFINITY;
        let mut c = 0;
        for (i, &before) in best[..j].iter().enumerate() {
            let v = before + cost.of(j - i, sorted[j - 1]);
            if v < b {
                b = v;
                c = i;
            }
        }
        best[j] = b;
        cut[j] = c;
    }
    // One run of the whole batch pads to the same longest text: equal cost, keep it whole.
    if best[n] >= cost.of(n, sorted[n - 1]) {
        return vec![(0..n).collect()];
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        groups.push(order[i..j].to_vec());
        j = i;
    }
    groups.reverse();
    groups
}

impl Encoded {
    /// The rows `rows` of this batch (in that order), padded to `seq_len` (at least the
    /// longest of them, at most this batch's `seq_len`): the same ids, mask and token types as
    /// encoding those texts alone would give.
    ///
    /// # Panics
    /// When a row index is out of range or `seq_len` is longer than this batch's.
    pub fn select(&self, rows: &[usize], seq_len: usize) -> Encoded {
        assert!(seq_len <= self.seq_len, "seq_len beyond the batch's");
        let n = rows.len() * seq_len;
        let mut out = Encoded {
            batch: rows.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            token_type_ids: Vec::with_capacity(n),
        };
        for &r in rows {
            assert!(r < self.batch, "row {r} of a batch of {}", self.batch);
            let from = r * self.seq_len;
            let span = from..from + seq_len;
            out.input_ids
                .extend_from_slice(&self.input_ids[span.clone()]);
            out.attention_mask
                .extend_from_slice(&self.attention_mask[span.clone()]);
            out.token_type_ids
                .extend_from_slice(&self.token_type_ids[span]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(per_run: f64) -> RunCost {
        RunCost {
            per_run,
            attention_width: 2304.0,
        }
    }

    fn check_partition(groups: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every row exactly once");
        assert!(groups.iter().all(|g| !g.is_empty()));
    }

    #[test]
    fn similar_lengths_stay_one_batch_in_their_order() {
        let lengths = [20, 22, 19, 21, 20, 22, 21, 19];
        let g = length_groups(&lengths, &cost(64.0));
        assert_eq!(g, vec![(0..8).collect::<Vec<_>>()]);
        assert_eq!(length_groups(&[], &cost(64.0)), vec![Vec::<usize>::new()]);
        assert_eq!(length_groups(&[7], &cost(64.0)), vec![vec![0]]);
    }

    #[test]
    fn short_and_long_texts_are_run_apart_shortest_first() {
        // 12 short texts and 4 long ones: together they pay 16 x 200 tokens; apart
        // 12 x 8 + 4 x 200 and one more run.
        let mut lengths = vec![8; 12];
        lengths.extend([200, 190, 195, 200]);
        lengths.swap(1, 13);
        let g = length_groups(&lengths, &cost(64.0));
        check_partition(&g, 16);
        assert_eq!(g.len(), 2, "{g:?}");
        assert!(g[0].iter().all(|&i| lengths[i] == 8), "{g:?}");
        assert!(g[1].iter().all(|&i| lengths[i] >= 190), "{g:?}");
        // Within a group, shortest first; ties in the original order.
        assert_eq!(g[1], vec![1, 14, 12, 15]);
        let total: f64 = g
            .iter()
            .map(|grp| cost(64.0).of(grp.len(), grp.iter().map(|&i| lengths[i]).max().unwrap()))
            .sum();
        assert!(total < cost(64.0).of(16, 200));
    }

    #[test]
    fn the_run_cost_decides_how_far_to_split() {
        let lengths: Vec<usize> = (0..16).map(|i| 4 + 2 * i).collect();
        // A free run: every length its own group; a dear run: one batch.
        let free = length_groups(&lengths, &cost(0.0));
        check_partition(&free, 16);
        assert_eq!(free.len(), 16);
        assert_eq!(
            length_groups(&lengths, &cost(10_000.0)),
            vec![(0..16).collect::<Vec<_>>()]
        );
        let mid = length_groups(&lengths, &cost(64.0));
        check_partition(&mid, 16);
        assert!(mid.len() > 1 && mid.len() < 16, "{mid:?}");
        // Groups are contiguous in length: each group's longest is shorter than the next's
        // shortest.
        for w in mid.windows(2) {
            let hi = w[0].iter().map(|&i| lengths[i]).max().unwrap();
            let lo = w[1].iter().map(|&i| lengths[i]).min().unwrap();
            assert!(hi <= lo, "{mid:?}");
        }
    }

    #[test]
    fn a_selected_group_is_the_rows_cut_to_their_length() {
        // Three texts of 2, 4 and 3 tokens, right-padded to 4.
        let enc = Encoded {
            batch: 3,
            seq_len: 4,
            input_ids: vec![2, 3, 0, 0, 2, 7, 8, 3, 2, 5, 3, 0],
            attention_mask: vec![1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0],
            token_type_ids: vec![0, 0, 9, 9, 0, 0, 1, 1, 0, 0, 0, 9],
        };
        let g = enc.select(&[2, 0], 3);
        assert_eq!(g.batch, 2);
        assert_eq!(g.seq_len, 3);
        assert_eq!(g.input_ids, vec![2, 5, 3, 2, 3, 0]);
        assert_eq!(g.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(g.token_type_ids, vec![0, 0, 0, 0, 0, 9]);
        assert_eq!(g.lengths(), vec![3, 2]);
        assert_eq!(enc.select(&[0, 1, 2], 4), enc);
    }
}
