"""Analysis: reading sweeps back from MLflow and saying which configuration won, and why.

    compare.py     rank the trials of one or more sweeps (any engine), figures, the ranking file
    figures.py     interactive figures (plotly) from the run table, and the HTML page that holds them
    importance.py  which searched parameters moved the objective (Optuna's fANOVA, or a
                   random forest over the run table)
    repeat.py      `compare --repeat K`: retrain the leaders with K seeds; confidence intervals
"""
