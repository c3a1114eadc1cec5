"""The paper's evidence: Figure 1 (`relu_vs_tanh`), its ablations (`ablations`), Figures 3 and 4
(`figures`), one page per run (`report`); `common` holds what they share (data subsets, runs in
parallel processes, budgets, seed summaries), re-exported here."""

from alexnet.experiments.common import (budget_table, epochs_to_error, experiment_data, format_table,
                                        prepared_data, run_many, run_or_reuse, run_seconds, seed_summary,
                                        subset_prepared, time_step)

__all__ = ["budget_table", "epochs_to_error", "experiment_data", "format_table", "prepared_data", "run_many",
           "run_or_reuse", "run_seconds", "seed_summary", "subset_prepared", "time_step"]
