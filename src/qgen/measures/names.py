"""The names of the scalar measures qgen produces: the keys of measures.json's ``measures`` (also runs.csv
columns) and the bound's columns that the analysis adds (qgen.analysis.bound). Importing this needs
neither torch nor pandas: config validation checks ``analysis.claims.measure`` against it.

tests/test_config_checks.py measures a small model and checks that this list is exactly what
qgen.measures.run produces; a new measure is added here as well.
"""

from __future__ import annotations

MEASURE_NAMES: frozenset[str] = frozenset(
    {
        "bn.folded",
        "bn.unfolded",
        "hessian.power_iterations",
        "hessian.probes",
        "hessian.top_eigenvalue",
        "hessian.trace",
        "hessian.trace_stderr",
        "measure.examples",
        "measure.m",
        "noise.act.clipped_fraction",
        "noise.act.corr",
        "noise.act.ks",
        "noise.act.var_ratio",
        "noise.act.var_ratio_all",
        "noise.propagation.mean",
        "noise.propagation.output",
        "noise.weight.clipped_fraction",
        "noise.weight.corr",
        "noise.weight.ks",
        "noise.weight.predicted_sum_sq",
        "noise.weight.sum_sq",
        "noise.weight.var_ratio",
        "noise.weight.var_ratio_all",
        "noise_model.error_increase",
        "noise_model.error_increase_stderr",
        "noise_model.kl_init",
        "noise_model.kl_orig",
        "noise_model.loss_increase",
        "noise_model.loss_increase_stderr",
        "noise_model.predicted_loss_increase",
        "noise_model.quantized_weights",
        "noise_model.train_error",
        "norm.dist_spec_init",
        "norm.fro_dist",
        "norm.fro_over_spec",
        "norm.inverse_margin",
        "norm.l2",
        "norm.l2_dist",
        "norm.log_prod_of_fro",
        "norm.log_prod_of_fro_over_margin",
        "norm.log_prod_of_spec",
        "norm.log_prod_of_spec_over_margin",
        "norm.log_spec_init_main",
        "norm.log_spec_orig_main",
        "norm.log_sum_of_fro",
        "norm.log_sum_of_fro_over_margin",
        "norm.log_sum_of_spec",
        "norm.log_sum_of_spec_over_margin",
        "norm.margin",
        "norm.param_norm",
        "norm.params",
        "norm.path_norm",
        "norm.path_norm_over_margin",
        "pacbayes.flatness",
        "pacbayes.init",
        "pacbayes.mag.flatness",
        "pacbayes.mag.init",
        "pacbayes.mag.orig",
        "pacbayes.mag.sigma",
        "pacbayes.orig",
        "pacbayes.sigma",
        "search.pacbayes.bound",
        "search.pacbayes.converged",
        "search.pacbayes_mag.bound",
        "search.pacbayes_mag.converged",
        "search.worst_case.bound",
        "search.worst_case.converged",
        "search.worst_case_mag.bound",
        "search.worst_case_mag.converged",
        "sharpness.alpha",
        "sharpness.flatness",
        "sharpness.init",
        "sharpness.mag.alpha",
        "sharpness.mag.flatness",
        "sharpness.orig",
    }
)
#: columns of the reconstructed QGen bound, added per run by the analysis (qgen.analysis.bound)
BOUND_NAMES: frozenset[str] = frozenset(
    {"bound.train_error", "bound.noise_term", "bound.kl", "bound.complexity", "bound.value", "bound.gap_term"}
)
#: what a claim may name as its measure (analysis.claims.measure)
CLAIM_MEASURES: frozenset[str] = MEASURE_NAMES | BOUND_NAMES
