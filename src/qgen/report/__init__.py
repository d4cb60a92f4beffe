"""Tables and seaborn figures from the collected runs table. Plots never retrain."""
