"""Analysis of the runs table: correlation of measures with the gap, the QGen-style bound, the
regularization check and the papers' claims. Analysis reads tables, never networks."""
