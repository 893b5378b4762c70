"""Services: the long-running processes Blocksweep starts and supervises.

    ui.py       `blocksweep ui`: the MLflow UI (a real `mlflow server`) and optuna-dashboard
    workers.py  `blocksweep run --workers N`: N sweep workers on this machine, placed on GPUs
    procs.py    child processes: own process groups, output relayed, stopped deliberately
"""
