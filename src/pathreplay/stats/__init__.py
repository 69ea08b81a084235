"""The statistics every stage shares (stage-free): the paired sign-flip and t tests (`signflip`),
Benjamini-Hochberg and the calibration of p-value families (`multiple`), two-group effect sizes
(`groups`), and tests on counts: 2x2 tables, dose trends, binomial intervals (`tables`). Imports
nothing of the package."""
