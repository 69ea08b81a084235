"""Words each feature's patch makes the model say more or less (RQ2), from logged trials.

Trials stream in chunks (`logs`); each response counts once per word it contains ("says the word
or not", `lexicon`), in its full text and in its text cut where the answer ends (the task's
`answer_end`; the slot machine's: its first answer line, and the amount line). Only counts are
kept (`counts`): responses per (feature, context, condition) and, per word, how many of those
responses say it. Per (feature, contrast, text, word) the statistics (`effects`) are a 2x2 test
on responses (Fisher's exact or chi-square), the log-odds ratio of saying the word with an
informative Beta/Dirichlet prior and its z-score (Monroe, Colaresi & Quinn 2008, "Fightin'
Words", applied to response counts), a Cochran-Armitage trend test over ordered levels, and
Benjamini-Hochberg q-values within each (feature, contrast, text); `report` writes the table,
the original JSON layout and volcano plots. Settings: `settings`.
"""
